"""The invoice as the services see it, and the validation every input record passes.

Pure code: no I/O. Every way a record can be bad ends in one exception type,
``InvalidMessage``, whose ``code`` is a bounded label (it becomes a metric label
and the DLQ's ``error.code`` header) and whose ``reason`` is one line of text.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from json.encoder import encode_basestring_ascii
from typing import Literal

import orjson

ErrorCode = Literal[
    "empty_record",
    "malformed",
    "schema_mismatch",
    "missing_field",
    "invalid_invoice_id",
    "invalid_amount",
    "negative_amount",
    "amount_out_of_range",
    "unknown_currency",
    "invalid_date",
    "text_too_large",
    "invalid_text",
    "model_rejected",
    "max_attempts",
]

# Larger than any real invoice (10^13 of any currency) and well inside what a
# decimal string and Avro carry; bigger numbers are typos or attacks.
MAX_AMOUNT = Decimal(10) ** 13
# Kafka keys and ids are shown in tables and logs; 128 characters covers every ERP
# numbering scheme we know of.
MAX_INVOICE_ID_CHARS = 128

# Active ISO 4217 codes (2026), plus the precious-metal and fund codes that ERPs use.
ISO_4217 = frozenset(
    [
        "AED",
        "AFN",
        "ALL",
        "AMD",
        "ANG",
        "AOA",
        "ARS",
        "AUD",
        "AWG",
        "AZN",
        "BAM",
        "BBD",
        "BDT",
        "BGN",
        "BHD",
        "BIF",
        "BMD",
        "BND",
        "BOB",
        "BOV",
        "BRL",
        "BSD",
        "BTN",
        "BWP",
        "BYN",
        "BZD",
        "CAD",
        "CDF",
        "CHE",
        "CHF",
        "CHW",
        "CLF",
        "CLP",
        "CNY",
        "COP",
        "COU",
        "CRC",
        "CUP",
        "CVE",
        "CZK",
        "DJF",
        "DKK",
        "DOP",
        "DZD",
        "EGP",
        "ERN",
        "ETB",
        "EUR",
        "FJD",
        "FKP",
        "GBP",
        "GEL",
        "GHS",
        "GIP",
        "GMD",
        "GNF",
        "GTQ",
        "GYD",
        "HKD",
        "HNL",
        "HTG",
        "HUF",
        "IDR",
        "ILS",
        "INR",
        "IQD",
        "IRR",
        "ISK",
        "JMD",
        "JOD",
        "JPY",
        "KES",
        "KGS",
        "KHR",
        "KMF",
        "KPW",
        "KRW",
        "KWD",
        "KYD",
        "KZT",
        "LAK",
        "LBP",
        "LKR",
        "LRD",
        "LSL",
        "LYD",
        "MAD",
        "MDL",
        "MGA",
        "MKD",
        "MMK",
        "MNT",
        "MOP",
        "MRU",
        "MUR",
        "MVR",
        "MWK",
        "MXN",
        "MXV",
        "MYR",
        "MZN",
        "NAD",
        "NGN",
        "NIO",
        "NOK",
        "NPR",
        "NZD",
        "OMR",
        "PAB",
        "PEN",
        "PGK",
        "PHP",
        "PKR",
        "PLN",
        "PYG",
        "QAR",
        "RON",
        "RSD",
        "RUB",
        "RWF",
        "SAR",
        "SBD",
        "SCR",
        "SDG",
        "SEK",
        "SGD",
        "SHP",
        "SLE",
        "SOS",
        "SRD",
        "SSP",
        "STN",
        "SVC",
        "SYP",
        "SZL",
        "THB",
        "TJS",
        "TMT",
        "TND",
        "TOP",
        "TRY",
        "TTD",
        "TWD",
        "TZS",
        "UAH",
        "UGX",
        "USD",
        "USN",
        "UYI",
        "UYU",
        "UYW",
        "UZS",
        "VED",
        "VES",
        "VND",
        "VUV",
        "WST",
        "XAF",
        "XAG",
        "XAU",
        "XCD",
        "XCG",
        "XDR",
        "XOF",
        "XPD",
        "XPF",
        "XPT",
        "XSU",
        "XUA",
        "YER",
        "ZAR",
        "ZMW",
        "ZWG",
    ]
)

_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# The same characters as bytes: in UTF-8 they are single bytes that never occur
# inside a multi-byte sequence, so deleting them from the encoded text and comparing
# lengths finds them (a C loop over 2 KB, ten times cheaper than the regex search).
CONTROL_BYTES = bytes([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])

_sha256 = hashlib.sha256

# json.dumps's own string escaper (the C one when available), ensure_ascii=True.
_json_str = encode_basestring_ascii
_orjson_dumps = orjson.dumps


def _json_text(text: str) -> str:
    """``_json_str(text)`` for the long texts, four times faster on ASCII ones.

    For ASCII, orjson writes what json.dumps does (the same short escapes, the same
    lowercase ``\\u00XX``) except for DEL, which json.dumps escapes and orjson not.
    ``isascii`` is a flag on the string, not a scan.
    """
    if text.isascii() and "\x7f" not in text:
        return _orjson_dumps(text).decode()
    return _json_str(text)


class InvalidMessage(Exception):
    """A record that can never be processed: it goes to the DLQ, never back to the input."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        # One line, bounded: the reason travels in a Kafka header and a log line.
        one_line = " ".join(reason.split())[:300]
        super().__init__(f"{code}: {one_line}")
        self.code: ErrorCode = code
        self.reason = one_line


@dataclass(frozen=True, slots=True)
class Invoice:
    """A validated invoice. ``amount`` is None only when ``raw_text`` may carry it."""

    invoice_id: str
    supplier: str
    description: str
    amount: Decimal | None
    currency: str | None
    invoice_date: date | None
    raw_text: str | None
    event_time: datetime | None = None

    def to_json_dict(self) -> dict[str, str | None]:
        """The JSON form of CONTRACT.md's InvoiceEvent (amount as a decimal string)."""
        return {
            "invoice_id": self.invoice_id,
            "supplier": self.supplier,
            "description": self.description,
            "amount": None if self.amount is None else str(self.amount),
            "currency": self.currency,
            "invoice_date": None if self.invoice_date is None else self.invoice_date.isoformat(),
            "raw_text": self.raw_text,
            "event_time": None if self.event_time is None else self.event_time.isoformat(),
        }

    def content_hash(self) -> str:
        """sha256 of the business content; event_time is excluded so a replay matches.

        The hashed text is ``json.dumps(to_json_dict() minus event_time, sort_keys=True,
        separators=(",", ":"))``; stored hashes are compared with new ones, so that
        text must never change (``stored_forms`` builds the same bytes faster).
        """
        return self.stored_forms()[1]

    def stored_forms(self) -> tuple[str, str]:
        """(compact JSON of ``to_json_dict()``, ``content_hash()``), each text escaped once.

        Byte for byte what ``json.dumps`` writes for those dicts (every value is a
        string or None, escaped by the same C function), at a third of the cost: the
        consumer needs both for every record, and ``raw_text`` is 1–2 KB.
        """
        payload, content_hash, _ = self.row_forms()
        return payload, content_hash

    def row_forms(self) -> tuple[str, str, int]:
        """``stored_forms()`` and ``len(json.dumps(raw_text))`` (0 without raw_text).

        The length comes with the escaping done for the JSON forms anyway, so the
        consumer's request size bound need not escape the 1–2 KB text a second time.
        """
        invoice_id = _json_str(self.invoice_id)
        supplier = _json_str(self.supplier)
        description = _json_text(self.description)
        amount = "null" if self.amount is None else _json_str(str(self.amount))
        currency = "null" if self.currency is None else _json_str(self.currency)
        invoice_date = (
            "null" if self.invoice_date is None else _json_str(self.invoice_date.isoformat())
        )
        raw_text = "null" if self.raw_text is None else _json_text(self.raw_text)
        event_time = "null" if self.event_time is None else _json_str(self.event_time.isoformat())
        # Keys in sorted order, as sort_keys=True writes them.
        canonical = (
            f'{{"amount":{amount},"currency":{currency},"description":{description},'
            f'"invoice_date":{invoice_date},"invoice_id":{invoice_id},'
            f'"raw_text":{raw_text},"supplier":{supplier}}}'
        )
        payload = (
            f'{{"invoice_id":{invoice_id},"supplier":{supplier},"description":{description},'
            f'"amount":{amount},"currency":{currency},"invoice_date":{invoice_date},'
            f'"raw_text":{raw_text},"event_time":{event_time}}}'
        )
        return (
            payload,
            _sha256(canonical.encode()).hexdigest(),
            0 if self.raw_text is None else len(raw_text),
        )

    @classmethod
    def from_json_dict(cls, data: Mapping[str, object]) -> Invoice:
        """Inverse of to_json_dict for rows already validated (no checks repeated)."""
        amount = data.get("amount")
        invoice_date = data.get("invoice_date")
        event_time = data.get("event_time")
        return cls(
            invoice_id=str(data["invoice_id"]),
            supplier=str(data.get("supplier") or ""),
            description=str(data.get("description") or ""),
            amount=None if amount is None else Decimal(str(amount)),
            currency=None if data.get("currency") is None else str(data["currency"]),
            invoice_date=None if invoice_date is None else date.fromisoformat(str(invoice_date)),
            raw_text=None if data.get("raw_text") is None else str(data["raw_text"]),
            event_time=None if event_time is None else datetime.fromisoformat(str(event_time)),
        )


def _text(record: Mapping[str, object], name: str, max_bytes: int) -> str:
    value = record.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidMessage(
            "schema_mismatch", f"{name} must be a string, got {type(value).__name__}"
        )
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates: the size cap is checked first, as for valid text.
        if len(value.encode("utf-8", "surrogatepass")) > max_bytes:
            raise InvalidMessage(
                "text_too_large", f"{name} is over the {max_bytes}-byte cap"
            ) from None
        raise InvalidMessage("invalid_text", f"{name} is not valid Unicode text") from None
    if len(encoded) > max_bytes:
        raise InvalidMessage("text_too_large", f"{name} is over the {max_bytes}-byte cap")
    if len(encoded.translate(None, CONTROL_BYTES)) != len(encoded):
        value = _CONTROL_CHARS.sub(" ", value)
    return value.strip()


def parse_amount(value: object) -> Decimal:
    """A decimal amount from a string or number; InvalidMessage when it is not one.

    A plain amount (ASCII digits, at most 13 before the point and 4 after), nearly
    every one, is a Decimal that passes every check: it skips them.
    """
    if type(value) is str:
        whole, point, fraction = value.partition(".")
        if (
            whole.isascii()
            and whole.isdigit()
            and len(whole) <= 13
            and (not point or (fraction.isascii() and fraction.isdigit() and len(fraction) <= 4))
        ):
            return Decimal(value)
    return _checked_amount(value)


def _checked_amount(value: object) -> Decimal:
    """``parse_amount`` for every value, each check made."""
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise InvalidMessage(
            "invalid_amount", f"amount must be a decimal string, got {value!r}"[:120]
        )
    text = str(value).strip().replace(",", "")
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise InvalidMessage("invalid_amount", f"amount {text[:40]!r} is not a number") from None
    if not amount.is_finite():
        raise InvalidMessage("invalid_amount", f"amount {text[:40]!r} is not a finite number")
    if amount < 0:
        raise InvalidMessage("negative_amount", f"amount {text[:40]} is negative")
    if amount >= MAX_AMOUNT:
        raise InvalidMessage("amount_out_of_range", f"amount {text[:40]} is over 10^13")
    # A plain "123.45" has as many decimals as digits after its point; only other
    # spellings (exponents) need the slower digit tuple.
    whole, _, fraction = text.partition(".")
    plain = whole.isdigit() and (not fraction or fraction.isdigit())
    if (len(fraction) > 4) if plain else amount.as_tuple().exponent < -4:  # type: ignore[operator]
        raise InvalidMessage("invalid_amount", f"amount {text[:40]} has more than 4 decimals")
    return amount


def validate_invoice(
    record: Mapping[str, object], *, max_text_bytes: int, event_time: datetime | None = None
) -> Invoice:
    """Turn a decoded record (Avro or JSON) into an Invoice, or raise InvalidMessage."""
    if not record:
        raise InvalidMessage("empty_record", "the record has no fields")
    invoice_id = record.get("invoice_id")
    if invoice_id is None or (isinstance(invoice_id, str) and not invoice_id.strip()):
        raise InvalidMessage("missing_field", "invoice_id is required")
    if not isinstance(invoice_id, str):
        raise InvalidMessage("schema_mismatch", "invoice_id must be a string")
    invoice_id = invoice_id.strip()
    if len(invoice_id) > MAX_INVOICE_ID_CHARS or _CONTROL_CHARS.search(invoice_id):
        raise InvalidMessage(
            "invalid_invoice_id",
            f"invoice_id must be at most {MAX_INVOICE_ID_CHARS} printable characters",
        )
    try:
        invoice_id.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidMessage("invalid_invoice_id", "invoice_id is not valid Unicode") from None

    supplier = _text(record, "supplier", max_text_bytes)
    description = _text(record, "description", max_text_bytes)
    raw_text = _text(record, "raw_text", max_text_bytes) or None
    if not (supplier or description or raw_text):
        raise InvalidMessage("missing_field", "supplier, description and raw_text are all empty")

    raw_amount = record.get("amount")
    amount = None if raw_amount is None or raw_amount == "" else parse_amount(raw_amount)
    if amount is None and raw_text is None:
        raise InvalidMessage("missing_field", "amount is required when raw_text is absent")

    currency = record.get("currency")
    if currency is not None and currency != "":
        if not isinstance(currency, str) or currency.strip().upper() not in ISO_4217:
            raise InvalidMessage(
                "unknown_currency", f"currency {str(currency)[:12]!r} is not ISO 4217"
            )
        currency = currency.strip().upper()
    else:
        currency = None
    if amount is not None and currency is None:
        raise InvalidMessage("missing_field", "currency is required with an amount")

    invoice_date = _date(record.get("invoice_date"))
    own_time = _timestamp(record.get("event_time"))
    return Invoice(
        invoice_id=invoice_id,
        supplier=supplier,
        description=description,
        amount=amount,
        currency=currency,
        invoice_date=invoice_date,
        raw_text=raw_text,
        event_time=own_time or event_time,
    )


def _date(value: object) -> date | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = date.fromisoformat(value.strip())
        except ValueError:
            raise InvalidMessage(
                "invalid_date", f"invoice_date {value[:30]!r} is not YYYY-MM-DD"
            ) from None
    else:
        raise InvalidMessage("invalid_date", "invoice_date must be a date")
    if not 1990 <= parsed.year <= 2100:
        raise InvalidMessage("invalid_date", f"invoice_date {parsed.isoformat()} is out of range")
    return parsed


def _timestamp(value: object) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidMessage(
                "invalid_date", f"event_time {value[:30]!r} is not ISO 8601"
            ) from None
    else:
        raise InvalidMessage("invalid_date", "event_time must be a timestamp")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)

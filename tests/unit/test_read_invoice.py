"""read_invoice, the consumer's direct reading of raw InvoiceEvent values, against the
general path (fastavro, then validate_invoice): whatever it returns, the general path
returns too, and it returns something for every clean, valid invoice. When it says a
value can be rebuilt from the invoice (read_invoice_source), the rebuilt bytes are the
value's, and every value validation leaves unchanged can be."""

from __future__ import annotations

import io
import json
import string
from datetime import UTC, date, datetime
from decimal import Decimal

import fastavro
from hypothesis import assume, example, given
from hypothesis import strategies as st
from invoice_batch.schemas.codec import (
    InvoiceCodec,
    encode_invoice_event,
    load_schema,
    read_invoice,
    read_invoice_source,
    source_value_of,
)

from invoice_batch.invoices import (
    CONTROL_BYTES,
    ISO_4217,
    InvalidMessage,
    Invoice,
    _checked_amount,
    parse_amount,
    validate_invoice,
)

MAX_TEXT = 2_000
SCHEMA = load_schema("invoice_event")
CONTROL_CHARS = CONTROL_BYTES.decode("ascii")
AT = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def _avro(record: dict[str, object]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, SCHEMA, record)
    return buffer.getvalue()


def _event(**fields: object) -> bytes:
    """An InvoiceEvent with the given fields, the others empty or null."""
    return _avro(
        {
            "invoice_id": "",
            "supplier": "",
            "description": "",
            "amount": None,
            "currency": None,
            "invoice_date": None,
            "raw_text": None,
            "event_time": None,
            **fields,
        }
    )


def _general(value: bytes, at: datetime | None = AT) -> Invoice | InvalidMessage:
    try:
        record = fastavro.schemaless_reader(io.BytesIO(value), SCHEMA, None)
        assert isinstance(record, dict)
        return validate_invoice(record, max_text_bytes=MAX_TEXT, event_time=at)
    except InvalidMessage as exc:
        return exc
    except Exception as exc:
        return InvalidMessage("malformed", type(exc).__name__)


# Texts with what validation treats specially: surrounding whitespace, control
# characters (replaced), tabs and newlines (kept), non-ASCII, DEL.
edgy_text = st.text(
    alphabet=st.sampled_from(
        ["a", "Z", "7", " ", "\t", "\n", "\r", "\x00", "\x0b", "\x7f", "é", "₹"]
    )
    | st.characters(exclude_categories=("Cs",)),  # Avro strings are UTF-8: no surrogates
    max_size=60,
)
amounts = st.none() | st.sampled_from(["", " 12.50 ", "1,234.5", "-1", "1e3", "NaN", "12.34567"])
amounts |= st.decimals(min_value=0, max_value=10**14, places=4).map(str)
currencies = st.none() | st.sampled_from(["", "INR", " usd ", "eur", "XYZ", "IN\x00R", "₹"])
dates = st.none() | st.dates(min_value=date(1900, 1, 1), max_value=date(2200, 12, 31))
times = st.none() | st.integers(min_value=-(10**12), max_value=10**13).map(
    lambda ms: datetime.fromtimestamp(ms / 1000, UTC)
)


@given(
    invoice_id=edgy_text,
    supplier=edgy_text,
    description=edgy_text,
    amount=amounts,
    currency=currencies,
    invoice_date=dates,
    raw_text=st.none() | edgy_text | st.text(min_size=1900, max_size=2100),
    event_time=times,
)
@example("INV-1", "", "", None, None, None, None, None)  # nothing to classify
@example("  ", "AWS", "", "10", "INR", None, None, None)  # a blank id
@example("INV-1", "AWS", "", "10", None, None, None, None)  # an amount without currency
@example("INV-1", "AWS", "", None, "INR", date(1989, 12, 31), "Total 10", None)  # date out of range
def test_what_it_reads_is_what_the_general_path_gives(
    invoice_id: str,
    supplier: str,
    description: str,
    amount: str | None,
    currency: str | None,
    invoice_date: date | None,
    raw_text: str | None,
    event_time: datetime | None,
) -> None:
    value = _avro(
        {
            "invoice_id": invoice_id,
            "supplier": supplier,
            "description": description,
            "amount": amount,
            "currency": currency,
            "invoice_date": invoice_date,
            "raw_text": raw_text,
            "event_time": event_time,
        }
    )
    direct = read_invoice(value, max_text_bytes=MAX_TEXT, event_time=AT)
    general = _general(value)
    if direct is not None:
        assert direct == general
        _assert_rebuilt_when_it_says_so(value)
    texts = (invoice_id, supplier, description, amount or "", currency or "", raw_text or "")
    clean = not any(c in CONTROL_CHARS for text in texts for c in text)
    if clean and isinstance(general, Invoice):
        # Every clean invoice the general path accepts is read directly.
        assert direct == general


@given(value=st.binary(max_size=200))
def test_bytes_it_reads_are_read_the_same_by_the_general_path(value: bytes) -> None:
    direct = read_invoice(value, max_text_bytes=MAX_TEXT)
    if direct is not None:
        assert direct == _general(value, at=None)


def test_cut_short_or_with_bytes_over_it_is_left_to_the_general_path() -> None:
    record = {
        "invoice_id": "INV-7",
        "supplier": "Taj Hotels",
        "description": "Offsite",
        "amount": "450000.00",
        "currency": "INR",
        "invoice_date": date(2026, 3, 2),
        "raw_text": "Conference hall, 2 days",
        "event_time": None,
    }
    value = _avro(record)
    assert read_invoice(value, max_text_bytes=MAX_TEXT) == Invoice(
        "INV-7",
        "Taj Hotels",
        "Offsite",
        Decimal("450000.00"),
        "INR",
        date(2026, 3, 2),
        "Conference hall, 2 days",
    )
    for cut in range(len(value)):
        assert read_invoice(value[:cut], max_text_bytes=MAX_TEXT) is None
    assert read_invoice(value + b"\x00", max_text_bytes=MAX_TEXT) is None
    # A text over the cap is left to the general path, which names the cap.
    assert read_invoice(value, max_text_bytes=10) is None


def test_the_codec_gives_the_general_paths_errors_for_what_it_leaves() -> None:
    codec = InvoiceCodec("avro", max_text_bytes=MAX_TEXT)
    value = _event(invoice_id="INV-8", supplier="Sodexo", amount="12.50", currency="ABC")
    assert read_invoice(value, max_text_bytes=MAX_TEXT) is None
    try:
        codec.decode(value)
    except InvalidMessage as exc:
        assert exc.code == "unknown_currency"
    else:
        raise AssertionError("an unknown currency was accepted")


def _assert_rebuilt_when_it_says_so(value: bytes) -> None:
    """A value read_invoice_source calls rebuildable comes back byte for byte, from the
    invoice and from its stored payload (what the store rebuilds it from)."""
    found = read_invoice_source(value, max_text_bytes=MAX_TEXT, event_time=AT)
    assert found is not None
    invoice, encoding = found
    if encoding is None:
        return
    assert source_value_of(invoice, encoding) == value
    payload, _ = invoice.stored_forms()
    stored = Invoice.from_json_dict(json.loads(payload))
    assert source_value_of(stored, encoding) == value


# Fields as validation leaves them: no surrounding whitespace, no control characters,
# amounts as Decimal writes them, known upper-case currencies, non-empty optional texts.
_inner = st.characters(exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp")) | st.sampled_from(
    ["a", "Z", "7", "é", "₹", "-"]
)
_middle = _inner | st.sampled_from([" ", "\t", "\n"])
kept_text = st.builds(
    lambda first, middle, last: first + middle + last, _inner, st.text(_middle, max_size=40), _inner
).filter(lambda text: text == text.strip())
kept_amounts = st.none() | st.decimals(min_value=0, max_value=10**12, places=2).map(str)
kept_currencies = st.sampled_from(sorted(ISO_4217))
long_text = st.text(string.printable.strip(), min_size=1900, max_size=MAX_TEXT)


@given(
    invoice_id=kept_text,
    supplier=st.just("") | kept_text,
    description=st.just("") | kept_text,
    amount=kept_amounts,
    currency=kept_currencies,
    invoice_date=st.none() | st.dates(min_value=date(1990, 1, 1), max_value=date(2100, 12, 31)),
    raw_text=st.none() | kept_text | long_text,
    event_time=times,
)
def test_a_value_validation_leaves_unchanged_is_rebuilt_from_the_invoice(
    invoice_id: str,
    supplier: str,
    description: str,
    amount: str | None,
    currency: str,
    invoice_date: date | None,
    raw_text: str | None,
    event_time: datetime | None,
) -> None:
    record = {
        "invoice_id": invoice_id[:128],
        "supplier": supplier,
        "description": description,
        "amount": amount,
        "currency": currency,
        "invoice_date": invoice_date,
        "raw_text": raw_text,
        "event_time": event_time,
    }
    # Not this case: an id cut to 128 characters at a space, nothing to classify.
    assume(record["invoice_id"] == str(record["invoice_id"]).strip())
    assume(supplier or description or raw_text)
    assume(amount is not None or raw_text is not None)
    value = _avro(record)
    found = read_invoice_source(value, max_text_bytes=MAX_TEXT, event_time=AT)
    assert found is not None
    invoice, encoding = found
    assert encoding == ("avro-untimed" if event_time is None else "avro")
    assert encode_invoice_event(invoice, with_event_time=event_time is not None) == value
    _assert_rebuilt_when_it_says_so(value)
    if event_time is None:
        # The invoice's time is then the record's timestamp, which the rebuilt value
        # leaves out as the original did.
        assert invoice.event_time == AT


def test_what_validation_changes_keeps_the_value_as_it_came() -> None:
    codec = InvoiceCodec("avro", max_text_bytes=MAX_TEXT)
    base = {
        "invoice_id": "INV-9",
        "supplier": "Dell",
        "description": "Laptops",
        "amount": "1200.00",
        "currency": "USD",
        "invoice_date": date(2026, 4, 1),
        "raw_text": "Ten laptops",
        "event_time": None,
    }
    assert codec.decode_source(_avro(base)) == (codec.decode(_avro(base)), "avro-untimed")
    for change in (
        {"invoice_id": " INV-9"},
        {"supplier": "Dell "},
        {"description": "\tLaptops"},
        {"amount": "1,200.00"},
        {"amount": " 1200.00"},
        {"currency": "usd"},
        {"raw_text": ""},
        {"raw_text": "Ten laptops\n"},
    ):
        value = _avro({**base, **change})
        invoice, encoding = codec.decode_source(value)
        assert encoding is None, change
        assert invoice == codec.decode(value)
        assert encode_invoice_event(invoice, with_event_time=False) != value, change


def test_a_varint_longer_than_it_needs_is_read_the_general_way_and_kept() -> None:
    """Avro allows it, no writer makes it, and rebuilding would shorten it."""
    codec = InvoiceCodec("avro", max_text_bytes=MAX_TEXT)
    value = _event(
        invoice_id="INV-10",
        supplier="Blue Dart",
        description="Courier",
        amount="90.00",
        currency="INR",
    )
    assert value[0] == 12  # "INV-10": six bytes, zig-zag 12 in one byte
    padded = b"\x8c\x00" + value[1:]  # the same length in two bytes
    assert read_invoice(padded, max_text_bytes=MAX_TEXT) is None
    assert codec.decode_source(padded) == (codec.decode(value), None)


@given(
    text=st.from_regex(r"\A[0-9]{0,15}(\.[0-9]{0,6})?\Z")
    | st.sampled_from(
        ["1,234.5", "١٢٣", "²", "1e3", "-1", " 7", "NaN", "1.", ".5", "0" * 14, "1" + "0" * 13]
    )
    | st.text(max_size=20)
)
def test_the_plain_amount_shortcut_agrees_with_parse_amount(text: str) -> None:
    try:
        expected: Decimal | str = _checked_amount(text)
    except InvalidMessage as exc:
        expected = exc.code
    try:
        got: Decimal | str = parse_amount(text)
    except InvalidMessage as exc:
        got = exc.code
    assert got == expected
    if isinstance(got, Decimal):
        assert str(got) == str(expected)

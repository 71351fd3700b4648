"""read_invoice, the consumer's direct reading of raw InvoiceEvent values, against the
general path (fastavro, then validate_invoice): whatever it returns, the general path
returns too, and it returns something for every clean, valid invoice."""

from __future__ import annotations

import io
from datetime import UTC, date, datetime
from decimal import Decimal

import fastavro
from hypothesis import example, given
from hypothesis import strategies as st
from invoice_batch.schemas.codec import InvoiceCodec, load_schema, read_invoice

from invoice_batch.invoices import CONTROL_BYTES, InvalidMessage, Invoice, validate_invoice

MAX_TEXT = 2_000
SCHEMA = load_schema("invoice_event")
CONTROL_CHARS = CONTROL_BYTES.decode("ascii")
AT = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def _avro(record: dict[str, object]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, SCHEMA, record)
    return buffer.getvalue()


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
    value = _avro(
        {
            "invoice_id": "INV-8",
            "supplier": "Sodexo",
            "description": "",
            "amount": "12.50",
            "currency": "ABC",
            "invoice_date": None,
            "raw_text": None,
            "event_time": None,
        }
    )
    assert read_invoice(value, max_text_bytes=MAX_TEXT) is None
    try:
        codec.decode(value)
    except InvalidMessage as exc:
        assert exc.code == "unknown_currency"
    else:
        raise AssertionError("an unknown currency was accepted")

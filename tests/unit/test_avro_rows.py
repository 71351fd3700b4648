"""The compiled step 1 (invoice_batch/_avro_rows.c) against the Python one: for every
record it gives a row, that row is the Python path's, byte for byte, on both stores'
forms; it gives one for every clean invoice; and a consumer without it stores and
rejects the same records."""

from __future__ import annotations

import io
import string
from collections.abc import Callable
from datetime import UTC, date, datetime

import fastavro
import pytest
from confluent_kafka import Message
from hypothesis import example, given, settings
from hypothesis import strategies as st
from invoice_batch.consumer import rows as rows_module
from invoice_batch.consumer.rows import COMPILED, PollRows
from invoice_batch.schemas.codec import InvoiceCodec, load_schema
from sqlalchemy import create_engine

from invoice_batch.invoices import ISO_4217, InvalidMessage
from invoice_batch.store.repository import PendingRow, Store, _copy_columns
from tests.conftest import IN_CI

pytestmark = pytest.mark.skipif(
    not COMPILED and not IN_CI,
    reason="invoice_batch._avro_rows was not built (no C compiler or OpenSSL headers)",
)

MAX_TEXT = 2_000
SCHEMA = load_schema("invoice_event")
RECEIVED = datetime(2026, 11, 27, 23, 0, tzinfo=UTC)
STORES = {
    "sqlite": Store(create_engine("sqlite://")),
    # Only its dialect is used: no connection is made.
    "postgresql": Store(create_engine("postgresql+psycopg://nobody@127.0.0.1:9/none")),
}


def test_the_extension_is_built() -> None:
    """CI builds it (gcc is on its machine): a missing build must not pass unnoticed."""
    assert COMPILED


def _avro(record: dict[str, object]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, SCHEMA, record)
    return buffer.getvalue()


CLEAN: dict[str, object] = {
    "invoice_id": "INV-3",
    "supplier": "Dell",
    "description": "Laptops",
    "amount": "1200.00",
    "currency": "USD",
    "invoice_date": date(2026, 4, 1),
    "raw_text": "Ten laptops",
    "event_time": None,
}


def _event(**fields: object) -> bytes:
    """A clean InvoiceEvent, with ``fields`` instead of its own."""
    return _avro({**CLEAN, **fields})


def _message(
    value: bytes | None, timestamp_ms: int = 1_764_284_400_123, offset: int = 7
) -> Message:
    kind = 1 if timestamp_ms > 0 else 0
    return Message(
        topic="invoices",
        partition=2,
        offset=offset,
        key=b"INV-key",
        value=value,
        timestamp=(kind, timestamp_ms),
    )


def _poll_rows(store: str = "sqlite", max_text_bytes: int = MAX_TEXT) -> PollRows:
    poll_rows = PollRows(
        InvoiceCodec("avro", max_text_bytes=max_text_bytes),
        STORES[store].datetime_to_db,
        model="claude-sonnet-4-5",
        max_tokens=1024,
        pg_copy=store == "postgresql",
    )
    poll_rows.start(RECEIVED)
    return poll_rows


def _python(poll_rows: PollRows, message: Message) -> PendingRow | InvalidMessage:
    try:
        return poll_rows.python_row(message)
    except InvalidMessage as exc:
        return exc


def _assert_same_rows(
    message: Message, store: str = "sqlite", max_text_bytes: int = MAX_TEXT
) -> PendingRow | None:
    """The compiled row, which is None or the Python path's row."""
    poll_rows = _poll_rows(store, max_text_bytes)
    compiled = poll_rows.compiled([message])
    assert compiled is not None and len(compiled) == 1
    row = compiled[0]
    if row is not None:
        assert row == _python(_poll_rows(store, max_text_bytes), message)
        assert [type(item) for item in row] == [
            type(item) for item in poll_rows.python_row(message)
        ]
    return row


# What validation treats specially: surrounding whitespace (ASCII and not), control
# characters, tabs and newlines, what JSON escapes (quotes, backslashes, non-ASCII,
# beyond the BMP), DEL.
SPECIAL = [" ", "\t", "\n", "\r", "\x00", "\x0b", "\x1f", "\x7f", '"', "\\", "/"]
SPECIAL += ["é", "₹", "\u00a0", "\u2028", "\u3000", "\u200b", "\U0001f600", "\ufeff"]
texts = st.text(
    alphabet=st.sampled_from(["a", "Z", "7", "-", *SPECIAL])
    | st.characters(exclude_categories=("Cs",)),  # Avro strings are UTF-8: no surrogates
    max_size=40,
)
long_texts = st.text(
    alphabet=st.sampled_from([*string.ascii_letters, *string.digits, " ", ".", *SPECIAL]),
    min_size=1_000,
    max_size=2_100,
)
ODD_AMOUNTS = ["", "0", "00", "0.0000", "007.50", "12.", ".5", "1e3", "-1", "1,234.5", " 12.50"]
ODD_AMOUNTS += ["12.50 ", "9999999999999.9999", "10000000000000", "1.23456", "١٢٣", "12.3\u0660"]
amounts = st.none() | st.sampled_from(ODD_AMOUNTS)
amounts |= st.decimals(min_value=0, max_value=10**14, places=4).map(str)
amounts |= st.from_regex(r"\A[0-9]{1,15}(\.[0-9]{0,6})?\Z")
currencies = st.none() | st.sampled_from(["", "INR", "USD", "usd", " EUR", "XYZ", "IN", "INRR"])
currencies |= st.sampled_from(sorted(ISO_4217))
dates = st.none() | st.dates(min_value=date(1, 1, 1), max_value=date(9999, 12, 31))
dates |= st.sampled_from(
    [date(1989, 12, 31), date(1990, 1, 1), date(2100, 12, 31), date(2101, 1, 1)]
)
event_times = st.none() | st.integers(min_value=-(10**13), max_value=10**13).map(
    lambda ms: datetime.fromtimestamp(ms / 1000, UTC)
)
kafka_times = st.integers(min_value=-1, max_value=10**13)
ids = texts | st.text(alphabet=st.sampled_from(["x", "é", " "]), min_size=127, max_size=130)


# The odd values of each field: all at once, or put into an otherwise clean invoice
# (most of what the compiled path must refuse shows only when everything else is clean).
ODD_FIELDS = {
    "invoice_id": ids,
    "supplier": texts | long_texts,
    "description": texts,
    "amount": amounts,
    "currency": currencies,
    "invoice_date": dates,
    "raw_text": st.none() | texts | long_texts,
    "event_time": event_times,
}
odd_records = st.fixed_dictionaries(ODD_FIELDS)


@settings(max_examples=400)
@given(record=odd_records, kafka_ms=kafka_times, store=st.sampled_from(sorted(STORES)))
@example({**CLEAN, "invoice_id": " INV-1"}, 1, "sqlite")
@example({**CLEAN, "currency": "usd"}, 1, "sqlite")
@example({**CLEAN, "amount": "010"}, 1, "sqlite")
@example({**CLEAN, "supplier": "", "description": "", "amount": None, "raw_text": ""}, 1, "sqlite")
@example({**CLEAN, "supplier": "AWS\u3000"}, 1, "postgresql")
def test_a_compiled_row_is_the_python_paths_row(
    record: dict[str, object], kafka_ms: int, store: str
) -> None:
    _assert_same_rows(_message(_avro(record), kafka_ms), store)


@given(value=st.binary(max_size=300))
def test_any_bytes_give_the_python_paths_row_or_none(value: bytes) -> None:
    _assert_same_rows(_message(value))


def test_cut_short_or_with_bytes_over_it_goes_the_python_way() -> None:
    clean = _event()
    assert _assert_same_rows(_message(clean)) is not None
    for cut in range(len(clean)):
        assert _assert_same_rows(_message(clean[:cut])) is None
    assert _assert_same_rows(_message(clean + b"\x00")) is None


def test_a_varint_longer_than_it_needs_goes_the_python_way() -> None:
    """Avro allows it and the general path reads it; only the Python path keeps the
    value as it came (rebuilding it would shorten the varint)."""
    value = _event(invoice_id="INV-6")
    assert _assert_same_rows(_message(value)) is not None
    # "INV-6" is 5 bytes: its length 10 (0x0A) written in two bytes instead of one.
    padded = b"\x8a\x00" + value[1:]
    assert _assert_same_rows(_message(padded)) is None
    row = _poll_rows().python_row(_message(padded))
    assert row[10] == padded and row[11] is None


# Fields as validation leaves them (see test_read_invoice.py): the compiled path must
# take every such invoice, or the consumer runs the slow path without anyone noticing.
_inner = st.characters(exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp")) | st.sampled_from(
    ["a", "Z", "7", "é", "₹", '"', "\\", "\U0001f600"]
)
_middle = _inner | st.sampled_from([" ", "\t", "\n", "\r"])
kept_texts = st.builds(
    lambda first, middle, last: first + middle + last, _inner, st.text(_middle, max_size=40), _inner
).filter(lambda text: text == text.strip())
kept_long_texts = st.text(
    alphabet=st.sampled_from(
        [*string.ascii_letters, " ", "\n", "\t", '"', "\\", "é", "₹", "\U0001f600"]
    ),
    min_size=1_000,
    max_size=2_000,
).map(lambda text: "[" + text.encode()[: MAX_TEXT - 2].decode(errors="ignore") + "]")
kept_dates = st.none() | st.dates(min_value=date(1990, 1, 1), max_value=date(2100, 12, 31))
kept_amounts = st.none() | st.decimals(min_value=0, max_value=10**12, places=2).map(str)


def _classifiable(record: dict[str, object]) -> dict[str, object]:
    """``record`` with what makes it valid: an id, something to classify, an amount
    or a text that may carry one."""
    record["invoice_id"] = str(record["invoice_id"])[:128].strip() or "INV"
    if not (record["supplier"] or record["description"] or record["raw_text"]):
        record["supplier"] = "Dell"
    if record["amount"] is None and record["raw_text"] is None:
        record["raw_text"] = "Total 10 USD"
    return record


kept_records = st.fixed_dictionaries(
    {
        "invoice_id": kept_texts,
        "supplier": st.just("") | kept_texts,
        "description": st.just("") | kept_texts,
        "amount": kept_amounts,
        "currency": st.sampled_from(sorted(ISO_4217)),
        "invoice_date": kept_dates,
        "raw_text": st.none() | kept_texts | kept_long_texts,
        "event_time": event_times.filter(lambda at: at is None or 1 <= at.year <= 9998),
    }
).map(_classifiable)


@given(record=kept_records, store=st.sampled_from(sorted(STORES)))
def test_every_clean_invoice_takes_the_compiled_path(record: dict[str, object], store: str) -> None:
    row = _assert_same_rows(_message(_avro(record)), store)
    assert row is not None
    assert row[10] is None  # rebuilt from the payload, not stored twice
    assert row[11] == ("avro-untimed" if record["event_time"] is None else "avro")


@given(
    # Mostly clean records: a poll is taken whole only when every record is clean.
    records=st.lists(
        st.one_of(kept_records, kept_records, kept_records, odd_records), min_size=1, max_size=6
    ),
    kafka_ms=kafka_times,
    repeat=st.booleans(),
    store=st.sampled_from(sorted(STORES)),
)
def test_a_poll_taken_whole_holds_the_compiled_rows(
    records: list[dict[str, object]], kafka_ms: int, repeat: bool, store: str
) -> None:
    """A poll taken whole (PostgreSQL's COPY data, SQLite's flat values) holds the rows
    of the same records, or there is none, when a record is left to the Python path
    or a pair repeats."""
    values = [_avro(record) for record in records]
    if repeat:
        values.append(values[0])
    messages = [_message(value, kafka_ms, offset=i) for i, value in enumerate(values)]
    poll_rows = _poll_rows(store)
    rows = poll_rows.compiled(messages)
    whole = poll_rows.copy(messages) if store == "postgresql" else poll_rows.flat(messages)
    assert rows is not None
    if None in rows or len({(row[0], row[1]) for row in rows if row}) < len(rows):
        assert whole is None
        return
    if isinstance(whole, bytes):
        assert _copy_columns(whole) == [list(column) for column in zip(*rows, strict=True)]
    else:
        assert whole == [value for row in rows if row is not None for value in row]


def test_a_poll_is_started_before_its_rows_or_copy_data() -> None:
    poll_rows = PollRows(
        InvoiceCodec("avro", max_text_bytes=MAX_TEXT),
        STORES["postgresql"].datetime_to_db,
        model="claude-sonnet-4-5",
        max_tokens=1024,
        pg_copy=True,
    )
    with pytest.raises(RuntimeError, match=r"rows\(\) before start\(\)"):
        poll_rows.compiled([_message(_event())])
    with pytest.raises(RuntimeError, match=r"copy\(\) before start\(\)"):
        poll_rows.copy([_message(_event())])
    sqlite_rows = PollRows(
        InvoiceCodec("avro", max_text_bytes=MAX_TEXT),
        STORES["sqlite"].datetime_to_db,
        model="claude-sonnet-4-5",
        max_tokens=1024,
    )
    with pytest.raises(RuntimeError, match=r"flat\(\) before start\(\)"):
        sqlite_rows.flat([_message(_event())])


def test_the_bench_and_demo_invoices_take_the_compiled_path() -> None:
    from bench.data import invoice_dict
    from invoice_batch.demo import seed_invoices

    codec = InvoiceCodec("avro", max_text_bytes=MAX_TEXT * 4)
    records = [invoice_dict(index) for index in range(200)] + list(seed_invoices())
    messages = [_message(codec.encode(record), offset=i) for i, record in enumerate(records)]
    poll_rows = _poll_rows(max_text_bytes=MAX_TEXT * 4)
    compiled = poll_rows.compiled(messages)
    assert compiled is not None
    assert compiled == [poll_rows.python_row(message) for message in messages]


def test_text_over_the_cap_and_framed_values_go_the_python_way() -> None:
    value = _event(raw_text="x" * 50)
    assert _assert_same_rows(_message(value), max_text_bytes=50) is not None
    assert _assert_same_rows(_message(value), max_text_bytes=49) is None
    assert _assert_same_rows(_message(b"\x00\x00\x00\x00\x01" + value)) is None
    assert _assert_same_rows(_message(b"\xc3\x01" + bytes(8) + value)) is None
    assert _assert_same_rows(_message(None)) is None
    assert _assert_same_rows(_message(b"")) is None


def test_without_the_extension_every_record_goes_the_python_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rows_module, "_CompiledRows", None)
    assert _poll_rows().compiled([_message(b"\x02a")]) is None


def test_a_codec_it_cannot_read_gets_no_compiled_path() -> None:
    codec = InvoiceCodec("json", max_text_bytes=MAX_TEXT)
    poll_rows = PollRows(
        codec, STORES["sqlite"].datetime_to_db, model="claude-sonnet-4-5", max_tokens=1024
    )
    poll_rows.start(RECEIVED)
    assert poll_rows.compiled([_message(b"{}")]) is None


def test_event_times_are_converted_once_a_poll_and_again_the_next() -> None:
    calls: list[object] = []
    to_db: Callable[[datetime | None], object] = STORES["sqlite"].datetime_to_db

    def counting(value: datetime | None) -> object:
        calls.append(value)
        return to_db(value)

    poll_rows = PollRows(
        InvoiceCodec("avro", max_text_bytes=MAX_TEXT),
        counting,
        model="claude-sonnet-4-5",
        max_tokens=1024,
    )
    messages = [_message(_event(raw_text=None), 1_000 + i // 10, offset=i) for i in range(50)]
    for poll in range(2):
        calls.clear()
        poll_rows.start(RECEIVED)
        compiled = poll_rows.compiled(messages)
        assert compiled is not None and None not in compiled
        assert len(calls) == 1 + 5, poll  # received_at, then each distinct millisecond


def test_a_consumers_polls_share_buffers_not_rows() -> None:
    """One PollRows serves every poll: each poll's rows and COPY data are its own."""
    first = [_message(_event(invoice_id=f"A-{i}"), offset=i) for i in range(3)]
    second = [_message(_event(invoice_id=f"B-{i}"), offset=10 + i) for i in range(2)]
    second.append(_message(b"\x02x", offset=12))  # left to the Python path
    shared = _poll_rows("postgresql")
    assert shared.compiled(first) is not None and shared.copy(first) is not None
    later = datetime(2026, 11, 28, 23, 0, tzinfo=UTC)
    shared.start(later)
    rows = shared.compiled(second[:2])
    fresh = _poll_rows("postgresql")
    fresh.start(later)
    assert rows == fresh.compiled(second[:2])
    assert shared.copy(second[:2]) == fresh.copy(second[:2]) is not None
    assert rows is not None and rows[0] is not None and rows[0][4] == later
    shared.start(later)
    assert shared.compiled(second)[2] is None  # type: ignore[index]
    assert shared.copy(second) is None
    assert shared.copy(second[:2]) == fresh.copy(second[:2])  # nothing left of the last
    # The pair of the first record, twice: the poll is left to the rows.
    assert shared.copy([*second[:2], _message(_event(invoice_id="B-0"), offset=13)]) is None
    assert shared.copy([]) is None
    assert _poll_rows("sqlite").copy(first) is None  # SQLite takes rows
    assert shared.flat(first) is None  # and PostgreSQL COPY data
    sqlite, fresh_sqlite = _poll_rows("sqlite"), _poll_rows("sqlite")
    assert sqlite.flat(first) is not None
    sqlite.start(later)
    fresh_sqlite.start(later)
    assert sqlite.flat(second) is None
    assert sqlite.flat(second[:2]) == fresh_sqlite.flat(second[:2]) is not None
    assert sqlite.flat([*second[:2], _message(_event(invoice_id="B-0"), offset=13)]) is None
    assert sqlite.flat([]) is None


clean_records = st.fixed_dictionaries(
    {
        "invoice_id": kept_texts.map(lambda text: text[:128].strip() or "INV"),
        "supplier": kept_texts,
        "description": st.just("") | kept_texts,
        "amount": st.decimals(min_value=0, max_value=10**12, places=2).map(str),
        "currency": st.sampled_from(sorted(ISO_4217)),
        "invoice_date": st.none()
        | st.dates(min_value=date(1990, 1, 1), max_value=date(2100, 12, 31)),
        "raw_text": st.none() | kept_texts | kept_long_texts,
        "event_time": st.none(),
    }
)


@settings(max_examples=600)
@given(
    record=clean_records,
    odd=st.lists(st.sampled_from(sorted(ODD_FIELDS)), min_size=1, max_size=2, unique=True).flatmap(
        lambda names: st.fixed_dictionaries({name: ODD_FIELDS[name] for name in names})
    ),
    kafka_ms=kafka_times,
    store=st.sampled_from(sorted(STORES)),
)
def test_a_clean_invoice_with_an_odd_field_gives_the_python_paths_row_or_none(
    record: dict[str, object], odd: dict[str, object], kafka_ms: int, store: str
) -> None:
    _assert_same_rows(_message(_avro({**record, **odd}), kafka_ms), store)


@pytest.mark.parametrize(
    "bad",
    [
        b"\xed\xa0\x80",  # a surrogate
        b"\xc0\xaf",  # overlong
        b"\xe0\x80\xaf",  # overlong
        b"\xf0\x80\x80\xaf",  # overlong
        b"\xf4\x90\x80\x80",  # over U+10FFFF
        b"\xf5\x80\x80\x80",
        b"\x80",  # a lone continuation byte
        b"\xc3",  # cut short
        b"\xe2\x82",
        b"\x7f",
        b"\x1b",
    ],
)
@pytest.mark.parametrize("where", ["supplier", "raw_text"])
def test_bytes_that_are_not_clean_text_go_the_python_way(bad: bytes, where: str) -> None:
    """Values fastavro never writes from a str: the bytes are put in by hand, in the
    middle of a long text (where the compiled path reads eight bytes at a time) and at
    its end."""
    for at in (16, 37):
        text = "a" * at + "_" * len(bad) + "b" * 20
        value = _event(**{where: text})
        assert _assert_same_rows(_message(value)) is not None
        spoilt = value.replace(b"_" * len(bad), bad)
        assert _assert_same_rows(_message(spoilt)) is None
        python = _python(_poll_rows(), _message(spoilt))
        assert isinstance(python, InvalidMessage) or python[11] is None


@pytest.mark.parametrize(
    ("amount", "compiled"),
    [
        ("0", True),
        ("12.5", True),
        ("0.0000", True),
        ("9999999999999.9999", True),
        ("00", False),
        ("007.50", False),
        ("12.", False),
        (".5", False),
        ("1.23456", False),
        ("10000000000000", False),
        ("1e3", False),
        ("1,234.5", False),
        (" 12.50", False),
        ("-1", False),
        ("١٢٣", False),
    ],
)
def test_only_amounts_written_as_decimal_writes_them_are_compiled(
    amount: str, compiled: bool
) -> None:
    value = _event(amount=amount)
    assert (_assert_same_rows(_message(value)) is not None) == compiled

"""10,000 generated records, most of them poison, through the real consumer and collector.

Hypothesis generates the records (random bytes, truncated Avro, records of another
schema, huge strings, NaN / negative / overflowing amounts, bad dates, non-UTF-8
text) mixed with valid invoices. Then: no process crashed, every bad record is in
the DLQ with a code and a one-line reason, every valid invoice is classified once.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from invoice_batch.schemas.codec import ClassifiedCodec, InvoiceCodec

from invoice_batch.demo import running_pipeline
from invoice_batch.invoices import InvalidMessage
from tests.support.topics import produce_raw, read_all, read_topic

CODEC = InvoiceCodec("avro", max_text_bytes=32_768)
TOTAL = 10_000
PER_EXAMPLE = 25

text = st.text(st.characters(blacklist_categories=["Cs", "Cc"]), min_size=1, max_size=40)
valid_fields = st.fixed_dictionaries(
    {
        "supplier": text,
        "description": text,
        "amount": st.decimals(min_value=0, max_value=10**9, places=2).map(str),
        "currency": st.sampled_from(["INR", "USD", "EUR", "GBP", "JPY"]),
        "invoice_date": st.dates(
            min_value=__import__("datetime").date(2000, 1, 1),
            max_value=__import__("datetime").date(2030, 12, 31),
        ).map(str),
    }
)
bad_amounts = st.sampled_from(["NaN", "-1", "-0.01", "1e30", "abc", "Infinity", "12.345678", "--5"])
OTHER_SCHEMA = fastavro.parse_schema(
    {
        "type": "record",
        "name": "Other",
        "fields": [{"name": "n", "type": "long"}, {"name": "s", "type": "string"}],
    }
)


def _avro(schema: Any, record: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, record)
    return buffer.getvalue()


@st.composite
def fuzz_record(draw: st.DrawFn) -> tuple[str, dict[str, Any] | bytes]:
    """(kind, fields or raw bytes). Ids are given afterwards so each is unique."""
    kind = draw(
        st.sampled_from(
            [
                "valid",
                "valid",
                "valid",
                "random_bytes",
                "truncated",
                "other_schema",
                "huge_text",
                "bad_amount",
                "bad_date",
                "non_utf8",
                "empty",
                "bad_currency",
                "json_in_avro_topic",
            ]
        )
    )
    fields = draw(valid_fields)
    if kind == "valid":
        return kind, fields
    if kind == "random_bytes":
        return kind, draw(st.binary(min_size=1, max_size=200))
    if kind == "truncated":
        return kind, {**fields, "cut": draw(st.integers(min_value=1, max_value=20))}
    if kind == "other_schema":
        return kind, _avro(OTHER_SCHEMA, {"n": draw(st.integers(-(2**40), 2**40)), "s": draw(text)})
    if kind == "huge_text":
        return kind, {**fields, "description": "x" * draw(st.integers(32_769, 60_000))}
    if kind == "bad_amount":
        return kind, {**fields, "amount": draw(bad_amounts)}
    if kind == "bad_date":
        return kind, {**fields, "invoice_date": draw(st.sampled_from(["1970-01-01", "2200-01-01"]))}
    if kind == "bad_currency":
        return kind, {**fields, "currency": draw(st.sampled_from(["XYZ", "inr1", "€", "DOLLARS"]))}
    if kind == "json_in_avro_topic":
        return kind, json.dumps(fields).encode()
    if kind == "empty":
        return kind, b""
    return kind, fields  # non_utf8: patched when encoded


def encode(index: int, kind: str, item: dict[str, Any] | bytes) -> tuple[bytes, bytes]:
    key = f"FZ-{index:05d}"
    if isinstance(item, bytes):
        return key.encode(), item
    record = {k: v for k, v in item.items() if k != "cut"}
    record["invoice_id"] = key
    if kind == "non_utf8":
        record["description"] = "\x01\x02\x03\x04"
        value = CODEC.encode(record).replace(b"\x01\x02\x03\x04", b"\xff\xfe\xc3\x28")
        return key.encode(), value
    value = CODEC.encode(record)
    if kind == "truncated":
        value = value[: max(1, len(value) - int(item["cut"]))]
    return key.encode(), value


def generate() -> list[tuple[str, bytes, bytes]]:
    drawn: list[tuple[str, dict[str, Any] | bytes]] = []

    # Hypothesis's cost is per example, so each example draws a list of records.
    @settings(
        max_examples=TOTAL // PER_EXAMPLE + 50,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(fuzz_record(), min_size=PER_EXAMPLE, max_size=PER_EXAMPLE))
    def draw_some(items: list[tuple[str, dict[str, Any] | bytes]]) -> None:
        drawn.extend(items)

    draw_some()
    records = []
    for index, (kind, item) in enumerate(drawn[:TOTAL]):
        key, value = encode(index, kind, item)
        records.append((kind, key, value))
    return records


@pytest.fixture(scope="module")
def fuzzed() -> list[tuple[str, bytes, bytes]]:
    return generate()


def test_the_codec_never_raises_anything_but_invalid_message(
    fuzzed: list[tuple[str, bytes, bytes]],
) -> None:
    assert len(fuzzed) >= 9_000
    kinds = {kind for kind, _, _ in fuzzed}
    assert len(kinds) == 11  # every kind of record the strategy makes
    for kind, _key, value in fuzzed:
        try:
            CODEC.decode(value)
        except InvalidMessage as exc:
            assert kind != "valid", exc
            assert exc.reason and "\n" not in exc.reason
        else:
            assert kind in ("valid", "random_bytes", "truncated"), kind


def test_fuzzed_records_through_the_pipeline_end_in_the_dlq_or_classified_once(
    fuzzed: list[tuple[str, bytes, bytes]], tmp_path: Path, topics: dict[str, str]
) -> None:
    expected_valid = set()
    expected_bad = set()
    for _kind, key, value in fuzzed:
        try:
            CODEC.decode(value)
        except InvalidMessage:
            expected_bad.add(key.decode())
        else:
            expected_valid.add(key.decode())
    settings_env = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}",
        **topics,
        "BATCH_MAX_REQUESTS": "2000",
        "BATCH_MAX_WAIT_SECONDS": "2",
        "CREATE_TIMEOUT_SECONDS": "5",
    }
    with running_pipeline(tmp_path, processing_seconds=0.5, settings=settings_env) as pipeline:
        produce_raw(pipeline.bootstrap, topics["INPUT_TOPIC"], [(k, v) for _, k, v in fuzzed])
        out = read_topic(
            pipeline.bootstrap,
            topics["OUTPUT_TOPIC"],
            len(expected_valid),
            180,
            check=pipeline.check_alive,
        )
        dlq = read_all(pipeline.bootstrap, topics["DLQ_TOPIC"])
        pipeline.check_alive()  # 0 crashes: both services still running
    classified = [ClassifiedCodec("avro").decode(r.value)["invoice_id"] for r in out if r.value]
    assert len(classified) == len(set(classified))
    assert set(classified) == expected_valid
    dlq_keys = {r.key.decode() for r in dlq if r.key}
    assert dlq_keys == expected_bad
    original = {k.decode(): v for _, k, v in fuzzed}
    for record in dlq:
        assert record.headers["error.code"] and record.headers["error.message"]
        assert b"\n" not in record.headers["error.message"]
        assert (record.value or b"") == original[record.key.decode()]
    print(
        f"\nfuzz: {len(fuzzed)} records, {len(expected_valid)} valid classified, "
        f"{len(dlq)} in the DLQ"
    )

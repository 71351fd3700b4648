"""The whole path on real parts: Tansu, the emulator through the SDK, SQLite and PostgreSQL,
the consumer and collector as real processes."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from invoice_batch.schemas.codec import ClassifiedCodec, InvoiceCodec
from sqlalchemy import text

from bench.scale_out import invoices  # the same generated invoices as the scale-out runs
from invoice_batch.demo import running_pipeline
from invoice_batch.store.repository import Store
from invoice_batch.store.schema import make_engine
from tests.support.topics import produce_raw, read_topic


def encoded(records: list[dict[str, object]]) -> list[tuple[bytes | None, bytes | None]]:
    codec = InvoiceCodec("avro", max_text_bytes=32768)
    return [(str(r["invoice_id"]).encode(), codec.encode(r)) for r in records]


def pipeline_settings(database_url: str, topics: dict[str, str], **extra: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        **topics,
        "BATCH_MAX_REQUESTS": "400",
        "BATCH_MAX_WAIT_SECONDS": "2",
        # The emulator answers a create at once: reconcile an unknown outcome after 5 s.
        "CREATE_TIMEOUT_SECONDS": "5",
        **extra,
    }


def decode_all(records: list) -> list[dict[str, object]]:
    codec = ClassifiedCodec("avro")
    return [codec.decode(r.value) for r in records]


def test_a_thousand_invoices_in_make_exactly_a_thousand_classified_out(
    database_url: str, topics: dict[str, str], tmp_path: Path
) -> None:
    sent = invoices(1000)
    with running_pipeline(
        tmp_path, processing_seconds=1.0, settings=pipeline_settings(database_url, topics)
    ) as pipeline:
        started = time.monotonic()
        produce_raw(pipeline.bootstrap, topics["INPUT_TOPIC"], encoded(sent))
        out = read_topic(
            pipeline.bootstrap,
            topics["OUTPUT_TOPIC"],
            1000,
            120,
            check=pipeline.check_alive,
            settle=3,
        )
        elapsed = time.monotonic() - started
    records = decode_all(out)
    ids = [r["invoice_id"] for r in records]
    assert len(ids) == 1000, f"{len(ids)} classified"
    assert set(ids) == {r["invoice_id"] for r in sent}
    assert all(
        r.key is not None and r.key.decode() == d["invoice_id"]
        for r, d in zip(out, records, strict=True)
    )
    assert len({r["event_id"] for r in records}) == 1000
    by_id = {r["invoice_id"]: r for r in records}
    assert by_id["INV-000000"]["department"] == "IT"
    assert by_id["INV-000002"]["department"] == "Admin"
    for r in records:
        assert r["approval_required"] == (float(str(r["amount"])) >= 200000)
    print(f"\n1000 invoices end to end on {database_url.split(':')[0]}: {elapsed:.1f} s")


def test_poison_records_go_to_the_dlq_with_codes_and_good_ones_are_still_classified(
    database_url: str, topics: dict[str, str], tmp_path: Path
) -> None:
    codec = InvoiceCodec("avro", max_text_bytes=32768)
    good = invoices(20)
    poison: list[tuple[bytes | None, bytes | None, str]] = [
        (b"bad-1", b"\xff\x01garbage", "malformed"),
        (b"bad-2", b"", "empty_record"),
        (
            b"bad-3",
            codec.encode({"invoice_id": "", "description": "x", "amount": "1", "currency": "INR"}),
            "missing_field",
        ),
        (
            b"bad-4",
            codec.encode(
                {"invoice_id": "N-1", "description": "x", "amount": "-10", "currency": "INR"}
            ),
            "negative_amount",
        ),
        (
            b"bad-5",
            codec.encode(
                {"invoice_id": "N-2", "description": "x", "amount": "abc", "currency": "INR"}
            ),
            "invalid_amount",
        ),
        (
            b"bad-6",
            codec.encode(
                {"invoice_id": "N-3", "description": "x", "amount": "10", "currency": "QQQ"}
            ),
            "unknown_currency",
        ),
        (
            b"bad-7",
            codec.encode(
                {"invoice_id": "N-4", "description": "x" * 40000, "amount": "10", "currency": "INR"}
            ),
            "text_too_large",
        ),
    ]
    items = encoded(good[:10]) + [(k, v) for k, v, _ in poison] + encoded(good[10:])
    with running_pipeline(
        tmp_path, processing_seconds=0.5, settings=pipeline_settings(database_url, topics)
    ) as pipeline:
        produce_raw(pipeline.bootstrap, topics["INPUT_TOPIC"], items)
        dlq = read_topic(
            pipeline.bootstrap, topics["DLQ_TOPIC"], len(poison), 60, check=pipeline.check_alive
        )
        out = read_topic(
            pipeline.bootstrap, topics["OUTPUT_TOPIC"], len(good), 90, check=pipeline.check_alive
        )
    assert {r["invoice_id"] for r in decode_all(out)} == {g["invoice_id"] for g in good}
    by_key = {r.key: r for r in dlq}
    assert len(dlq) == len(poison)
    for key, value, code in poison:
        record = by_key[key]
        assert record.headers["error.code"].decode() == code
        assert record.value == (value or None) or (record.value in (b"", None) and not value)
        assert record.headers["source.topic"].decode() == topics["INPUT_TOPIC"]
        assert int(record.headers["source.offset"]) >= 0
        assert record.headers["error.message"] and b"\n" not in record.headers["error.message"]


def test_a_consumer_killed_mid_stream_loses_nothing_and_classifies_nothing_twice(
    database_url: str, topics: dict[str, str], tmp_path: Path
) -> None:
    sent = invoices(3000)
    with running_pipeline(
        tmp_path, processing_seconds=0.5, settings=pipeline_settings(database_url, topics)
    ) as pipeline:
        store = Store(make_engine(database_url))
        produce_raw(pipeline.bootstrap, topics["INPUT_TOPIC"], encoded(sent[:1500]))
        deadline = time.monotonic() + 60
        from sqlalchemy import func, select

        from invoice_batch.store.models import InvoiceRow

        def stored() -> int:
            with store.engine.connect() as connection:
                return int(connection.execute(select(func.count(InvoiceRow.id))).scalar() or 0)

        while stored() < 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        consumer = pipeline.processes["consumer"]
        os.kill(consumer.pid, signal.SIGKILL)
        consumer.wait(10)
        killed_at = stored()
        pipeline.processes.pop("consumer")
        produce_raw(pipeline.bootstrap, topics["INPUT_TOPIC"], encoded(sent[1500:]))
        pipeline.start_service("consumer", "consume", {"METRICS_PORT": "0"})
        out = read_topic(
            pipeline.bootstrap,
            topics["OUTPUT_TOPIC"],
            len(sent),
            150,
            check=pipeline.check_alive,
            settle=3,
        )
        assert stored() == len(sent)
        store.engine.dispose()
    ids = [r["invoice_id"] for r in decode_all(out)]
    assert 0 < killed_at < len(sent), "the kill must land mid-stream"
    assert len(ids) == len(set(ids)) == len(sent)


def test_an_invoice_that_fails_reaches_the_dlq_as_its_original_bytes(
    database_url: str, topics: dict[str, str], tmp_path: Path
) -> None:
    """The model rejects every request: each invoice goes to the DLQ from the store,
    where most rows keep the invoice once and the record is rebuilt from it."""
    codec = InvoiceCodec("avro", max_text_bytes=32768)
    records = invoices(6)
    records[1]["event_time"] = "2026-03-02T10:00:00.123+00:00"
    records[2]["currency"] = str(records[2]["currency"]).lower()  # validation changes it
    records[3]["raw_text"] = "  Twelve office chairs, delivered  "  # stripped
    items = [(str(r["invoice_id"]).encode(), codec.encode(r)) for r in records]
    with running_pipeline(
        tmp_path,
        processing_seconds=0.2,
        settings=pipeline_settings(database_url, topics),
        emulator_args=["--errored-invalid-rate", "1.0"],
    ) as pipeline:
        produce_raw(pipeline.bootstrap, topics["INPUT_TOPIC"], items)
        dlq = read_topic(
            pipeline.bootstrap, topics["DLQ_TOPIC"], len(items), 90, check=pipeline.check_alive
        )
        engine = make_engine(database_url)
        with engine.connect() as connection:
            encodings = dict(
                connection.execute(text("SELECT invoice_id, source_encoding FROM invoices")).all()
            )
        engine.dispose()
    assert sorted((r.key, r.value) for r in dlq) == sorted(items)
    assert {r.headers["error.code"].decode() for r in dlq} == {"model_rejected"}
    assert encodings[str(records[1]["invoice_id"])] == "avro"
    assert encodings[str(records[0]["invoice_id"])] == "avro-untimed"
    assert encodings[str(records[2]["invoice_id"])] is None
    assert encodings[str(records[3]["invoice_id"])] is None

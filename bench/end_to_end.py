"""Produce N invoices into the running pipeline and time the last ClassifiedInvoice.

Every part is a real process (``running_pipeline``): broker, emulator with zero
processing time, consumer, collector, SQLite store. Where the time went comes
from the store's own timestamps and the emulator's batch times.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from bench.child import API_KEY
from bench.setup import produce_invoices


def _read_until(
    bootstrap: str, topic: str, n: int, ready: threading.Event, out: dict[str, Any]
) -> None:
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic], on_assign=lambda _c, _p: ready.set())
    seen = 0
    deadline = time.monotonic() + 600
    while seen < n and time.monotonic() < deadline:
        for message in consumer.consume(1_000, 0.2):
            if message.error() is None:
                seen += 1
                out["last_at"] = time.time()
                out.setdefault("first_at", out["last_at"])
    out["seen"] = seen
    consumer.close()


def run_end_to_end(n: int) -> dict[str, Any]:
    import anthropic
    from sqlalchemy import create_engine, func, select

    from invoice_batch.demo import running_pipeline
    from invoice_batch.store.models import BatchRow, InvoiceRow

    settings = {
        "BATCH_MAX_REQUESTS": str(n),
        "BATCH_MAX_WAIT_SECONDS": "120",
        "FLUSH_CHECK_SECONDS": "0.2",
        "POLL_MIN_SECONDS": "0.5",
        "POLL_MAX_SECONDS": "1",
        "LOG_LEVEL": "WARNING",
    }
    with running_pipeline(processing_seconds=0, settings=settings) as pipeline:
        env = pipeline.env
        output: dict[str, Any] = {}
        ready = threading.Event()
        reader = threading.Thread(
            target=_read_until,
            args=(
                pipeline.bootstrap,
                env.get("OUTPUT_TOPIC", "invoices.classified"),
                n,
                ready,
                output,
            ),
        )
        reader.start()
        ready.wait(30)
        started = time.time()
        produce_invoices(pipeline.bootstrap, env.get("INPUT_TOPIC", "invoices"), n)
        produced = time.time()
        while reader.is_alive():
            reader.join(0.5)
            pipeline.check_alive()
        if output.get("seen") != n:
            raise RuntimeError(f"only {output.get('seen')} of {n} classified invoices arrived")
        engine = create_engine(pipeline.database_url)
        # The reader may see the last record before the collector's mark_done commits.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with engine.connect() as connection:
                done = connection.execute(
                    select(func.count(InvoiceRow.id)).where(InvoiceRow.status == "done")
                ).scalar_one()
            if done >= n:
                break
            time.sleep(0.2)
        with engine.connect() as connection:
            first_received, last_received, last_published, first_published = connection.execute(
                select(
                    func.min(InvoiceRow.received_at),
                    func.max(InvoiceRow.received_at),
                    func.max(InvoiceRow.published_at),
                    func.min(InvoiceRow.published_at),
                )
            ).one()
            batches = connection.execute(
                select(BatchRow.api_batch_id, BatchRow.created_at, BatchRow.submitted_at)
            ).all()
        engine.dispose()
        client = anthropic.Anthropic(base_url=pipeline.emulator_url, api_key=API_KEY)
        api = [client.messages.batches.retrieve(b.api_batch_id) for b in batches]

    def ts(value: datetime | None) -> float:
        assert value is not None
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()

    claimed = max(ts(b.created_at) for b in batches)
    submitted = max(ts(b.submitted_at) for b in batches)
    ended = max(ts(b.ended_at) for b in api if b.ended_at is not None)
    marks = [
        ("produce (until the broker acknowledged all)", started, produced),
        ("consume: decode, validate, insert (last row stored)", started, ts(last_received)),
        ("flush policy: last row stored -> batch claimed", ts(last_received), claimed),
        ("create: build and send the batch", claimed, submitted),
        ("API: batch created -> ended (processing time 0)", submitted, ended),
        ("collector: ended -> first result published (poll wait)", ended, ts(first_published)),
        ("collector: first -> last result published", ts(first_published), ts(last_published)),
        ("output: last published -> last record read", ts(last_published), output["last_at"]),
    ]
    return {
        "items": n,
        "seconds": output["last_at"] - started,
        "batches": len(batches),
        "stages": [
            {"stage": name, "seconds": round(max(end - begin, 0.0), 3)}
            for name, begin, end in marks
        ],
        "first_received_after": round(ts(first_received) - started, 3),
    }

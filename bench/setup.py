"""What the measured sides need before their clock starts: topics, stores, batches."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.child import API_KEY, RESULT_PREFIX
from bench.data import invoice_dict

POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def run_side(name: str, params: dict[str, Any], timeout: float = 1_800) -> dict[str, Any]:
    """Run one side in a fresh interpreter; its result dict (peak RSS included)."""
    began = time.monotonic()
    # Cached bytecode only shortens the children's start-up, which is not measured.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    completed = subprocess.run(
        [sys.executable, "-m", "bench.child", name, json.dumps(params)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    for line in reversed(completed.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            print(
                f"[bench]   {name}: {result['seconds']:.2f} s measured, "
                f"{time.monotonic() - began:.1f} s with start-up",
                flush=True,
            )
            return result
    raise RuntimeError(
        f"{name} exited with {completed.returncode} and no result: "
        f"{(completed.stderr or completed.stdout)[-2000:]}"
    )


def produce_invoices(bootstrap: str, topic: str, n: int) -> None:
    """Invoices 0..n-1 as raw Avro, keyed by invoice id."""
    from confluent_kafka import Producer
    from invoice_batch.schemas.codec import InvoiceCodec

    codec = InvoiceCodec("avro", max_text_bytes=1 << 20)
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": True}
    )
    for index in range(n):
        invoice = invoice_dict(index)
        while True:
            try:
                producer.produce(
                    topic, key=invoice["invoice_id"].encode(), value=codec.encode(invoice)
                )
                break
            except BufferError:
                producer.poll(0.1)
    if producer.flush(120):
        raise RuntimeError("the broker did not acknowledge the bench invoices")


def create_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    from invoice_batch.kafka import ensure_topics
    from invoice_batch.settings import load_settings

    ensure_topics(load_settings({"KAFKA_BOOTSTRAP_SERVERS": bootstrap}), [topic], partitions)


@contextlib.contextmanager
def postgres_database(admin_url: str = POSTGRES_ADMIN_URL) -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards."""
    from sqlalchemy import create_engine, text

    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"invoice_batch_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{admin_url.rsplit('/', 1)[0]}/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def copy_sqlite(source: Path, target: Path) -> str:
    """A copy of a SQLite store (checkpointed first, so the WAL is in the main file)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(source)) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copyfile(source, target)
    return f"sqlite:///{target}"


def prepare_ended_batch(database_url: str, emulator_url: str, n: int) -> str:
    """Claim every pending row into one batch, create it on the emulator with compact
    requests (no system prompt, no raw text: 100k full requests would not fit in one
    256 MB batch), wait until it ended and record it as open and due. Returns its id."""
    from datetime import UTC, datetime

    import anthropic

    from invoice_batch.batch_requests import build_request, custom_id_for
    from invoice_batch.store.repository import Store
    from invoice_batch.store.schema import make_engine

    store = Store(make_engine(database_url))
    key = "b" + uuid.uuid4().hex
    claimed = store.claim_batch(
        batch_key=key,
        trigger="manual",
        model="claude-haiku-4-5",
        max_requests=n,
        max_bytes=1 << 40,
        now=datetime.now(UTC),
    )
    assert claimed == n, (claimed, n)
    requests = []
    for row in store.iter_batch_invoices(key):
        request = build_request(
            dataclasses.replace(row.invoice, raw_text=None),
            custom_id=custom_id_for(row.row_id, row.attempts),
            model="claude-haiku-4-5",
            max_tokens=1024,
        )
        del request["params"]["system"]
        requests.append(request)
    client = anthropic.Anthropic(base_url=emulator_url, api_key=API_KEY, timeout=600)
    batch = client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    del requests
    deadline = time.monotonic() + 600
    while batch.processing_status != "ended":
        if time.monotonic() > deadline:
            raise RuntimeError("the bench batch did not end in 10 minutes")
        time.sleep(0.5)
        batch = client.messages.batches.retrieve(batch.id)
    now = datetime.now(UTC)
    store.record_created(key, batch.id, now, now)
    store.engine.dispose()
    return batch.id

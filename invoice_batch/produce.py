"""``invoice-batch produce FILE``: invoices from JSON lines or CSV to the input topic."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from confluent_kafka import KafkaError, Message, Producer
from rich.progress import Progress

from invoice_batch.invoices import InvalidMessage, validate_invoice
from invoice_batch.kafka import ensure_service_topics, producer_config
from invoice_batch.schemas.codec import invoice_codec_for
from invoice_batch.settings import Settings

# Files larger than this many lines get a progress bar on a terminal.
PROGRESS_FROM_LINES = 1_000


def read_records(path: Path) -> Iterator[tuple[int, dict[str, object] | str]]:
    """(line number, record) or (line number, error text) for each data line."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            for row in reader:
                if None in row:
                    yield reader.line_num, "more fields than the header has"
                    continue
                yield reader.line_num, {k.strip(): (v if v != "" else None) for k, v in row.items()}
        return
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                yield number, f"not JSON: {exc}"
                continue
            if not isinstance(record, dict):
                yield number, "not a JSON object"
                continue
            yield number, record


def produce_file(settings: Settings, path: Path, topic: str | None = None) -> int:
    """Returns the exit code: 0 all sent, 1 some lines were bad or undelivered."""
    if not path.is_file():
        from invoice_batch.cli import UsageError

        raise UsageError(f"{path}: no such file")
    topic = topic or settings.input_topic
    ensure_service_topics(settings, [topic])
    codec = invoice_codec_for(settings, topic)
    producer = Producer(producer_config(settings))
    failures: list[str] = []

    def on_delivery(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            failures.append(str(error))

    sent = bad = 0
    total = sum(1 for _ in path.open(encoding="utf-8", errors="replace"))
    with Progress(
        disable=total < PROGRESS_FROM_LINES or not sys.stderr.isatty(), transient=True
    ) as progress:
        task = progress.add_task(f"sending {path.name}", total=total)
        for number, record in read_records(path):
            progress.update(task, completed=number)
            if isinstance(record, str):
                bad += 1
                print(f"{path}:{number}: {record}", file=sys.stderr)
                continue
            try:
                invoice = validate_invoice(record, max_text_bytes=settings.max_text_bytes)
            except InvalidMessage as exc:
                bad += 1
                print(f"{path}:{number}: {exc.code}: {exc.reason}", file=sys.stderr)
                continue
            value = codec.encode_invoice(invoice)
            while True:
                try:
                    producer.produce(
                        topic, key=invoice.invoice_id.encode(), value=value, on_delivery=on_delivery
                    )
                    break
                except BufferError:
                    producer.poll(0.1)
            sent += 1
        remaining = producer.flush(30)
    undelivered = remaining + len(failures)
    print(
        f"sent {sent - undelivered} invoices to {topic}; {bad} bad lines"
        + (
            f"; {undelivered} undelivered ({failures[0] if failures else 'timeout'})"
            if undelivered
            else ""
        ),
        file=sys.stderr,
    )
    return 1 if bad or undelivered else 0

"""``invoice-batch dlq list|show|replay``: read the DLQ topic and send records back.

A DLQ record keeps the original key and value bytes and says why in its headers
(``error.code``, ``error.message``, ``source.topic``/``partition``/``offset``).

The replay protocol (``replay``):

1. Read the DLQ topic up to its end and select records (offset range, reason).
2. Skip records whose source (topic, partition, offset) is in the store's
   ``dlq_replays`` ledger, and repeats of one source within the DLQ (the consumer
   may dead-letter a record twice after a restart).
3. Delete the store's DLQ'd rows for those sources (the collector's ``max_attempts``
   and ``model_rejected``): their invoices were never classified, and the replayed
   copy must be taken as new rather than as a duplicate of them. Classified rows
   stay, so a replayed copy of a classified invoice is counted as a duplicate by
   the consumer (invoice id + content hash) and not sent to the API again.
4. Produce the records to the input topic and wait for every acknowledgement.
5. Write the ledger rows.

After a crash between 4 and 5 a second replay sends the records again; the
consumer's dedupe absorbs them (step 3 found nothing left to delete).
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import fastavro
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from invoice_batch.kafka import producer_config
from invoice_batch.preflight import _quiet
from invoice_batch.schemas.codec import InvoiceCodec, load_schema
from invoice_batch.settings import Settings
from invoice_batch.store.reporting import OperationsStore

READ_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class DlqRecord:
    partition: int
    offset: int
    timestamp: datetime | None
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]

    @property
    def code(self) -> str:
        return self.headers.get("error.code", "unknown")

    @property
    def message(self) -> str:
        return self.headers.get("error.message", "")

    @property
    def source(self) -> tuple[str, int, int] | None:
        """Where the record was first read; None when the headers do not say."""
        try:
            topic = self.headers["source.topic"]
            partition = int(self.headers["source.partition"])
            offset = int(self.headers["source.offset"])
        except (KeyError, ValueError):
            return None
        if not topic or offset < 0:
            return None
        return topic, partition, offset

    def label(self) -> str:
        """The invoice id when the value decodes, else the key."""
        return self.key.decode("utf-8", "replace") if self.key else "-"


def _headers(message: Message) -> dict[str, str]:
    found: dict[str, str] = {}
    raw_headers: Any = message.headers() or []
    for name, raw in raw_headers:
        found[name] = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw or "")
    return found


def read_dlq(settings: Settings, timeout: float = READ_TIMEOUT_SECONDS) -> list[DlqRecord]:
    """Every record of DLQ_TOPIC from the beginning to its current end, in offset order.

    Reads with an assignment, not a group subscription: nothing is committed and no
    consumer group is joined, so it can run next to the services.
    """
    config = {
        **settings.librdkafka(),
        "group.id": f"invoice-batch-dlq-reader-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "logger": _quiet,
    }
    consumer = Consumer(config)
    try:
        metadata = consumer.list_topics(settings.dlq_topic, timeout=timeout)
        topic = metadata.topics.get(settings.dlq_topic)
        if topic is None or topic.error is not None:
            return []
        ends: dict[int, int] = {}
        assignment = []
        for partition in topic.partitions:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(settings.dlq_topic, partition), timeout=timeout
            )
            if high > low:
                ends[partition] = high
                assignment.append(TopicPartition(settings.dlq_topic, partition, low))
        if not assignment:
            return []
        consumer.assign(assignment)
        records: list[DlqRecord] = []
        deadline = time.monotonic() + timeout
        while ends and time.monotonic() < deadline:
            for message in consumer.consume(500, 0.5):
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        ends.pop(message.partition() or 0, None)
                    continue
                partition, offset = message.partition() or 0, message.offset() or 0
                if partition in ends and offset >= ends[partition] - 1:
                    ends.pop(partition)
                kind, stamp = message.timestamp()
                records.append(
                    DlqRecord(
                        partition=partition,
                        offset=offset,
                        timestamp=datetime.fromtimestamp(stamp / 1000, UTC) if kind else None,
                        key=message.key(),
                        value=message.value(),
                        headers=_headers(message),
                    )
                )
        if ends:
            raise TimeoutError(
                f"{settings.dlq_topic}: could not read to the end within {timeout:g} s"
            )
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        consumer.close()


def select_records(
    records: Iterable[DlqRecord],
    *,
    first: int | None = None,
    last: int | None = None,
    reason: str | None = None,
    partition: int | None = None,
) -> list[DlqRecord]:
    """Records within [first, last] (DLQ offsets, inclusive) with the given reason."""
    return [
        r
        for r in records
        if (first is None or r.offset >= first)
        and (last is None or r.offset <= last)
        and (reason is None or r.code == reason)
        and (partition is None or r.partition == partition)
    ]


def ledger_source(record: DlqRecord, dlq_topic: str) -> tuple[str, int, int]:
    """The ledger key: the source coordinates, or the DLQ's own when they are unknown."""
    return record.source or (dlq_topic, record.partition, record.offset)


def describe_value(record: DlqRecord, settings: Settings) -> dict[str, Any] | str | None:
    """The value as the invoice it encodes when it decodes (even an invalid one); else
    a readable preview of the bytes."""
    if record.value is None:
        return None
    codec = InvoiceCodec(settings.input_format, max_text_bytes=1 << 30)
    try:
        return dict(codec.decode(record.value).to_json_dict())
    except Exception:
        pass
    if settings.input_format == "avro":
        try:
            raw = fastavro.schemaless_reader(io.BytesIO(record.value), load_schema("invoice_event"))
            if isinstance(raw, dict):
                return {k: v if v is None or isinstance(v, str) else str(v) for k, v in raw.items()}
        except Exception:
            pass
    try:
        decoded = json.loads(record.value)
    except ValueError:
        return record.value[:400].decode("utf-8", "backslashreplace")
    return decoded if isinstance(decoded, dict) else str(decoded)


@dataclass(frozen=True, slots=True)
class ReplayResult:
    replayed: list[DlqRecord]
    already_replayed: list[DlqRecord]
    empty: list[DlqRecord]
    forgotten_rows: int


def replay(
    settings: Settings,
    ops: OperationsStore,
    selected: list[DlqRecord],
    *,
    topic: str | None = None,
    dry_run: bool = False,
) -> ReplayResult:
    """Steps 2–5 of the replay protocol. Raises RuntimeError when the broker does not
    acknowledge every record (nothing is written to the ledger then)."""
    target = topic or settings.input_topic
    done: set[tuple[str, int, int]] = set()
    for source_topic in {ledger_source(r, settings.dlq_topic)[0] for r in selected}:
        done |= {(source_topic, p, o) for p, o in ops.replayed_sources(source_topic)}
    chosen: list[DlqRecord] = []
    skipped: list[DlqRecord] = []
    empty: list[DlqRecord] = []
    for record in selected:
        source = ledger_source(record, settings.dlq_topic)
        if source in done:
            skipped.append(record)
        elif not record.value:
            empty.append(record)
        else:
            chosen.append(record)
            done.add(source)
    if dry_run or not chosen:
        return ReplayResult(chosen, skipped, empty, 0)
    forgotten = ops.forget_dead_lettered(r.source for r in chosen if r.source is not None)
    producer = Producer({**producer_config(settings), "logger": _quiet})
    failures: list[str] = []

    def on_delivery(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            failures.append(str(error))

    for record in chosen:
        headers: list[tuple[str, str | bytes | None]] = [
            ("replay.dlq.partition", str(record.partition).encode()),
            ("replay.dlq.offset", str(record.offset).encode()),
            ("replay.error.code", record.code.encode()),
        ]
        while True:
            try:
                producer.produce(
                    target,
                    key=record.key,
                    value=record.value,
                    headers=headers,
                    on_delivery=on_delivery,
                )
                break
            except BufferError:
                producer.poll(0.1)
    remaining = producer.flush(30)
    if remaining or failures:
        raise RuntimeError(
            f"{target}: {remaining + len(failures)} replayed records were not acknowledged "
            f"({failures[0] if failures else 'timeout'}); nothing was recorded, run again"
        )
    now = datetime.now(UTC)
    ops.record_replays(
        {
            "source_topic": source[0],
            "source_partition": source[1],
            "source_offset": source[2],
            "dlq_topic": settings.dlq_topic,
            "dlq_partition": record.partition,
            "dlq_offset": record.offset,
            "error_code": record.code[:32],
            "replayed_to": target,
            "replayed_at": now,
        }
        for record in chosen
        for source in [ledger_source(record, settings.dlq_topic)]
    )
    return ReplayResult(chosen, skipped, empty, forgotten)

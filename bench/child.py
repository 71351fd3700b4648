"""One measured side, run as ``python -m bench.child NAME PARAMS_JSON`` in its own process.

The parent starts a fresh interpreter per side so that each side's peak RSS
(VmHWM, read at the end) is its own, imports included, and nothing one side
allocated is still around when the other runs. The last stdout line is
``BENCH_RESULT {json}``.
"""

from __future__ import annotations

import gc
import io
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

RESULT_PREFIX = "BENCH_RESULT "
API_KEY = "sk-ant-bench-emulator-key"


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM) in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def machine_busy_seconds() -> float | None:
    """CPU seconds every core of the machine has spent not idle since boot (all
    processes: the broker and the database server too), from /proc/stat."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle, iowait = fields[3], fields[4] if len(fields) > 4 else 0
    return (sum(fields) - idle - iowait) / os.sysconf("SC_CLK_TCK")


class CpuClock:
    """This process's CPU seconds (every thread) and the machine's busy seconds over
    a measured window, so a result shows whether its side was short of CPU."""

    def __init__(self) -> None:
        self.start()

    def start(self) -> None:
        self._process = time.process_time()
        self._machine = machine_busy_seconds()

    def figures(self) -> dict[str, float]:
        found = {"cpu_seconds": time.process_time() - self._process}
        machine = machine_busy_seconds()
        if machine is not None and self._machine is not None:
            found["machine_busy_seconds"] = machine - self._machine
        return found


class GcClock:
    """The cycle collector's collections (full ones apart) and seconds from
    ``start`` on, through ``gc.callbacks``: what ``gc_policy.settle`` is for."""

    def __init__(self) -> None:
        self.collections = self.full = 0
        self.seconds = 0.0
        self._began = 0.0

    def start(self) -> None:
        gc.callbacks.append(self._observe)

    def _observe(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        self.seconds += time.perf_counter() - self._began
        self.collections += 1
        self.full += info["generation"] == 2

    def figures(self) -> dict[str, float]:
        gc.callbacks.remove(self._observe)
        return {
            "gc_collections": self.collections,
            "gc_full_collections": self.full,
            "gc_seconds": round(self.seconds, 3),
        }


def _settings(params: dict[str, Any], **extra: str) -> Any:
    from invoice_batch.settings import load_settings

    env = {
        "KAFKA_BOOTSTRAP_SERVERS": params.get("bootstrap", "127.0.0.1:9"),
        "KAFKA_SESSION_TIMEOUT_MS": "6000",
        "DATABASE_URL": params.get("database_url", "sqlite://"),
        "ANTHROPIC_BASE_URL": params.get("emulator_url", "http://127.0.0.1:9"),
        "ANTHROPIC_API_KEY": API_KEY,
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "json",
        **extra,
    }
    return load_settings(env)


# ------------------------------------------------------------------- ingest


def ingest_baseline(params: dict[str, Any]) -> dict[str, Any]:
    """A bare confluent-kafka consumer and a fastavro decode loop, nothing else.

    It fetches as the service's consumer does (``CONSUMER_FETCH``), so the two differ
    by what the service does with a record; ``librdkafka_defaults`` leaves that out."""
    import fastavro
    from confluent_kafka import Consumer
    from invoice_batch.schemas.codec import load_schema

    from invoice_batch.kafka import CONSUMER_FETCH

    schema = load_schema("invoice_event")
    consumer = Consumer(
        {
            "bootstrap.servers": params["bootstrap"],
            "group.id": f"bench-bare-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            **({} if params.get("librdkafka_defaults") else CONSUMER_FETCH),
        }
    )
    consumer.subscribe([params["topic"]])
    count, started = 0, None
    clock = CpuClock()
    n = params["n"]
    while count < n:
        messages = consumer.consume(min(1_000, n - count), 0.5)
        if messages and started is None:
            started = time.perf_counter()
            clock.start()
        for message in messages:
            if message.error() is None:
                fastavro.schemaless_reader(io.BytesIO(message.value() or b""), schema, None)
                count += 1
    seconds = time.perf_counter() - (started or time.perf_counter())
    cpu = clock.figures()
    consumer.close()
    return {"items": count, "seconds": seconds, **cpu}


def ingest_service(params: dict[str, Any]) -> dict[str, Any]:
    """ConsumerService.consume_poll, as run() calls it: decode, validate, dedupe, insert,
    offsets (the store write of a poll overlapping the decoding of the next)."""
    from confluent_kafka import Consumer, Producer
    from invoice_batch.consumer.flusher import Flusher
    from invoice_batch.consumer.service import POLL_BATCH, ConsumerService
    from prometheus_client import CollectorRegistry
    from sqlalchemy import func, select

    from invoice_batch import gc_policy
    from invoice_batch.bootstrap import anthropic_client, open_store
    from invoice_batch.kafka import DeadLetters, consumer_config, producer_config
    from invoice_batch.metrics import Metrics
    from invoice_batch.store.models import InvoiceRow

    settings = _settings(
        params,
        INPUT_TOPIC=params["topic"],
        DLQ_TOPIC=params["topic"] + "-dlq",
        CONSUMER_GROUP=f"bench-ours-{uuid.uuid4().hex[:8]}",
    )
    store = open_store(settings)
    metrics = Metrics(CollectorRegistry())
    producer = Producer(producer_config(settings))
    consumer = Consumer(consumer_config(settings))
    flusher = Flusher(store, anthropic_client(settings), settings, metrics)
    service = ConsumerService(
        settings, store, consumer, DeadLetters(producer, settings.dlq_topic), flusher, metrics
    )
    consumer.subscribe([settings.input_topic])
    gc_policy.settle()  # what run_service does before ConsumerService.run
    count, started = 0, None
    clock = CpuClock()
    n = params["n"]
    while count < n:
        messages = consumer.consume(min(POLL_BATCH, n - count), 0.5)
        records = [m for m in messages if m.error() is None]
        if not records:
            continue
        if started is None:
            started = time.perf_counter()
            clock.start()
        service.consume_poll(records)  # what ConsumerService.run does with each poll
        count += len(records)
    service.finish_pending()  # what a clean shutdown does
    service.close()
    service._commit(asynchronous=False)
    seconds = time.perf_counter() - (started or time.perf_counter())
    cpu = clock.figures()
    with store.engine.connect() as connection:
        stored = connection.execute(select(func.count(InvoiceRow.id))).scalar_one()
    consumer.close()
    store.engine.dispose()
    return {"items": count, "seconds": seconds, "rows_stored": int(stored), **cpu}


# -------------------------------------------------------------------- flush


def flush_baseline(params: dict[str, Any]) -> dict[str, Any]:
    """The naive flusher: every pending row in a list of request dicts, one create."""
    import anthropic
    from sqlalchemy import create_engine, select

    from invoice_batch.batch_requests import build_request, custom_id_for
    from invoice_batch.invoices import Invoice
    from invoice_batch.store.models import InvoiceRow

    settings = _settings(params)
    engine = create_engine(params["database_url"])
    client = anthropic.Anthropic(
        base_url=params["emulator_url"], api_key=API_KEY, max_retries=0, timeout=600
    )
    started = time.perf_counter()
    with engine.connect() as connection:
        rows = connection.execute(
            select(InvoiceRow.id, InvoiceRow.payload)
            .where(InvoiceRow.status == "pending")
            .order_by(InvoiceRow.id)
        ).all()
    requests = [
        build_request(
            Invoice.from_json_dict(json.loads(payload)),
            custom_id=custom_id_for(row_id, 1),
            model=settings.claude_model,
            max_tokens=settings.claude_max_tokens,
        )
        for row_id, payload in rows
    ]
    outcome: dict[str, Any]
    try:
        batch = client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
        outcome = {"outcome": "created", "batches": [batch.id], "requests": [len(requests)]}
    except anthropic.APIStatusError as exc:
        outcome = {"outcome": f"refused: HTTP {exc.status_code} {_error_type(exc)}"}
    except anthropic.APIError as exc:
        outcome = {"outcome": f"failed: {type(exc).__name__}"}
    seconds = time.perf_counter() - started
    body_bytes = sum(len(json.dumps(r)) for r in requests) + 2 * len(requests) + 14
    engine.dispose()
    return {"items": len(requests), "seconds": seconds, "body_bytes": body_bytes, **outcome}


def _error_type(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("type", ""))
    return ""


def flush_service(params: dict[str, Any]) -> dict[str, Any]:
    """Flusher.flush_all: claim within the count and byte limits, build, submit."""
    from invoice_batch.consumer.flusher import Flusher
    from prometheus_client import CollectorRegistry
    from sqlalchemy import select

    from invoice_batch import gc_policy
    from invoice_batch.bootstrap import anthropic_client, open_store
    from invoice_batch.metrics import Metrics
    from invoice_batch.store.models import BatchRow

    settings = _settings(params, BATCH_MAX_REQUESTS=str(params["max_requests"]))
    store = open_store(settings)
    flusher = Flusher(store, anthropic_client(settings), settings, Metrics(CollectorRegistry()))
    gc_policy.settle()  # the flusher runs in the consumer: what run_service does before its loop
    started = time.perf_counter()
    created = flusher.flush_all()
    seconds = time.perf_counter() - started
    with store.engine.connect() as connection:
        batches = connection.execute(
            select(BatchRow.request_count, BatchRow.request_bytes, BatchRow.status)
        ).all()
    store.engine.dispose()
    return {
        "items": sum(b.request_count for b in batches if b.status == "open"),
        "seconds": seconds,
        "outcome": f"created {len(created)} batches",
        "batches": created,
        "requests": [b.request_count for b in batches],
        "bound_bytes": [b.request_bytes for b in batches],
    }


# ------------------------------------------------------------------ collect


def collect_baseline(params: dict[str, Any]) -> dict[str, Any]:
    """SDK results() iterated (the SDK parses each line) and produced, nothing else."""
    import anthropic
    from confluent_kafka import Producer

    from invoice_batch.kafka import producer_config

    settings = _settings(params)
    client = anthropic.Anthropic(base_url=params["emulator_url"], api_key=API_KEY)
    producer = Producer(producer_config(settings))
    topic = params["output_topic"]
    started, cpu_started = time.perf_counter(), time.process_time()
    count = 0
    for item in client.messages.batches.results(params["batch_id"]):
        value = b"{}"
        if item.result.type == "succeeded":
            block = next(b for b in item.result.message.content if b.type == "tool_use")
            value = json.dumps(block.input).encode()
        while True:
            try:
                producer.produce(topic, key=item.custom_id.encode(), value=value)
                break
            except BufferError:
                producer.poll(0.1)
        count += 1
    remaining = producer.flush(60)
    seconds = time.perf_counter() - started
    return {
        "items": count,
        "seconds": seconds,
        "cpu_seconds": time.process_time() - cpu_started,
        "unacknowledged": remaining,
    }


def collect_service(params: dict[str, Any]) -> dict[str, Any]:
    """CollectorService.collect_once on an ended batch: the whole collect protocol."""
    from confluent_kafka import Producer
    from invoice_batch.collector.service import CollectorService
    from prometheus_client import CollectorRegistry
    from sqlalchemy import func, select

    from invoice_batch import gc_policy
    from invoice_batch.bootstrap import anthropic_client, open_store
    from invoice_batch.kafka import DeadLetters, producer_config
    from invoice_batch.metrics import Metrics
    from invoice_batch.store.models import InvoiceRow

    settings = _settings(
        params, OUTPUT_TOPIC=params["output_topic"], DLQ_TOPIC=params["output_topic"] + "-dlq"
    )
    store = open_store(settings)
    producer = Producer(producer_config(settings))
    collector = CollectorService(
        settings,
        store,
        anthropic_client(settings),
        producer,
        DeadLetters(producer, settings.dlq_topic),
        Metrics(CollectorRegistry()),
    )
    gc_policy.settle()  # what run_service does before CollectorService.run
    collections = GcClock()
    collections.start()
    started, cpu_started = time.perf_counter(), time.process_time()
    worked = collector.collect_once()
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    gc_figures = collections.figures()
    with store.engine.connect() as connection:
        done = connection.execute(
            select(func.count(InvoiceRow.id)).where(InvoiceRow.status == "done")
        ).scalar_one()
    store.engine.dispose()
    return {
        "items": int(done),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "collected": worked,
        **gc_figures,
    }


SIDES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "ingest_baseline": ingest_baseline,
    "ingest_service": ingest_service,
    "flush_baseline": flush_baseline,
    "flush_service": flush_service,
    "collect_baseline": collect_baseline,
    "collect_service": collect_service,
}


def main(argv: list[str]) -> int:
    name, raw = argv
    params = json.loads(raw)
    profile = params.get("profile")
    if profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.002)
        profiler.start()
    result = SIDES[name](params)
    if profile:
        profiler.stop()
        with open(profile, "w") as out:
            out.write(profiler.output_text(unicode=True, color=False, show_all=False))
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    result["finished_at"] = datetime.now(UTC).isoformat()
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

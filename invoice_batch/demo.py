"""``invoice-batch demo`` and the embedded pipeline it runs (also used by tests).

Every part is a real process: the Tansu broker, the API emulator, the consumer and
the collector, talking over loopback, with a SQLite store in a temporary folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

from invoice_batch.broker import free_port, start_broker, stop_process, wait_for_port

SEED_FILE = "seed_invoices.jsonl"
CURRENCY_SYMBOLS = {"INR": "Rs", "USD": "$", "EUR": "€", "GBP": "£"}
# The demo's own key: the emulator accepts any non-empty key by default.
DEMO_API_KEY = "sk-ant-demo-emulator-key"


def seed_invoices() -> list[dict[str, Any]]:
    """The article's five invoices (shipped with the package and in examples/)."""
    text = resources.files("invoice_batch").joinpath("data", SEED_FILE).read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@dataclass
class Pipeline:
    """The running parts, their addresses, and the environment the services got."""

    workdir: Path
    bootstrap: str
    emulator_url: str
    database_url: str
    consumer_metrics_port: int
    collector_metrics_port: int
    env: dict[str, str]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    broker: subprocess.Popen[bytes] | None = None

    def start_service(
        self, name: str, command: str, extra_env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "invoice_batch", command],
            env={**self.env, **(extra_env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.processes[name] = process
        return process

    def stop_service(self, name: str, timeout: float = 15) -> int | None:
        process = self.processes.pop(name, None)
        if process is None:
            return None
        stop_process(process, timeout)
        return process.returncode

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                log = (self.workdir / f"{name}.log").read_text(errors="replace").strip()
                last = log.splitlines()[-1] if log else ""
                raise RuntimeError(
                    f"the {name} exited with code {process.returncode}: {last[:300]}"
                )


@contextlib.contextmanager
def running_pipeline(
    workdir: Path | None = None,
    *,
    processing_seconds: float = 2.0,
    settings: Mapping[str, str] | None = None,
    emulator_args: list[str] | None = None,
    services: bool = True,
) -> Iterator[Pipeline]:
    """Broker, emulator, consumer and collector on free loopback ports, stopped after."""
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="invoice-batch-"))
            )
        workdir.mkdir(parents=True, exist_ok=True)
        broker_port, emulator_port = free_port(), free_port()
        broker = start_broker(broker_port, workdir / "broker.log")
        stack.callback(stop_process, broker)
        emulator_log = (workdir / "emulator.log").open("ab")
        emulator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "invoice_batch_emulator",
                "--port",
                str(emulator_port),
                "--processing-seconds",
                str(processing_seconds),
                *(emulator_args or []),
            ],
            stdout=emulator_log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        stack.callback(stop_process, emulator)
        wait_for_port(emulator_port, 20, emulator)
        database_url = f"sqlite:///{workdir / 'store.db'}"
        consumer_port, collector_port = free_port(), free_port()
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{broker_port}",
            # Tansu's first group join waits about half of the session timeout.
            "KAFKA_SESSION_TIMEOUT_MS": "6000",
            "DATABASE_URL": database_url,
            "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{emulator_port}",
            "ANTHROPIC_API_KEY": DEMO_API_KEY,
            "BATCH_MAX_REQUESTS": "5",
            "BATCH_MAX_WAIT_SECONDS": "3",
            "FLUSH_CHECK_SECONDS": "0.5",
            "POLL_MIN_SECONDS": "1",
            "POLL_MAX_SECONDS": "2",
            "LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
            **(settings or {}),
        }
        for name in ("BATCH_CUTOFF", "INVOICE_BATCH_CONFIG"):
            if name not in (settings or {}):
                env.pop(name, None)
        pipeline = Pipeline(
            workdir=workdir,
            bootstrap=f"127.0.0.1:{broker_port}",
            emulator_url=f"http://127.0.0.1:{emulator_port}",
            database_url=database_url,
            consumer_metrics_port=consumer_port,
            collector_metrics_port=collector_port,
            env=env,
            broker=broker,
        )
        stack.callback(lambda: [pipeline.stop_service(n) for n in list(pipeline.processes)])
        from invoice_batch.kafka import ensure_topics
        from invoice_batch.settings import load_settings

        topic_settings = load_settings(env)
        ensure_topics(
            topic_settings,
            [topic_settings.input_topic, topic_settings.output_topic, topic_settings.dlq_topic],
        )
        if services:
            # Create the schema once, before two processes race to do it.
            subprocess.run(
                [sys.executable, "-m", "invoice_batch", "db", "upgrade"],
                env=env,
                check=True,
                capture_output=True,
            )
            pipeline.start_service("consumer", "consume", {"METRICS_PORT": str(consumer_port)})
            pipeline.start_service("collector", "collect", {"METRICS_PORT": str(collector_port)})
            wait_for_port(consumer_port, 30, pipeline.processes["consumer"])
            wait_for_port(collector_port, 30, pipeline.processes["collector"])
        yield pipeline


def produce_invoices(
    bootstrap: str, topic: str, invoices: list[dict[str, Any]], fmt: str = "avro"
) -> None:
    from confluent_kafka import Producer

    from invoice_batch.schemas.codec import InvoiceCodec

    codec = InvoiceCodec(fmt, max_text_bytes=1 << 20)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for invoice in invoices:
        producer.produce(
            topic, key=str(invoice["invoice_id"]).encode(), value=codec.encode(invoice)
        )
    if producer.flush(30):
        raise RuntimeError("the broker did not acknowledge the demo invoices")


def read_classified(
    bootstrap: str, topic: str, expected: int, timeout: float, fmt: str = "avro", check: Any = None
) -> list[dict[str, Any]]:
    """Read the output topic from the start until ``expected`` records or the timeout."""
    import uuid

    from confluent_kafka import Consumer

    from invoice_batch.schemas.codec import ClassifiedCodec

    codec = ClassifiedCodec(fmt)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    records: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < expected and time.monotonic() < deadline:
            if check is not None:
                check()
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            records.append(codec.decode(message.value()))
    finally:
        consumer.close()
    return records


def _money(amount: str | None, currency: str | None) -> str:
    if amount is None:
        return "?"
    value = Decimal(amount)
    shown = f"{value:f}".rstrip("0").rstrip(".") if "." in f"{value:f}" else f"{value:f}"
    symbol = CURRENCY_SYMBOLS.get(currency or "", currency or "")
    return f"{symbol} {shown}"


def results_table(records: list[dict[str, Any]]) -> list[str]:
    lines = []
    for record in sorted(records, key=lambda r: str(r["invoice_id"])):
        line = (
            f"{record['invoice_id']} -> {record['department']:<10} | "
            f"{_money(record['amount'], record['currency']):<10} | {record['summary']}"
        )
        if record["approval_required"]:
            line += "  *** APPROVAL REQUIRED ***"
        lines.append(line)
    return lines


def _keep_logs(exc: BaseException) -> None:
    """Copy the parts' logs to ./var/demo-logs so a failed demo can be looked into."""
    workdir = getattr(exc, "workdir", None)
    if workdir is None:
        return
    import shutil

    target = Path("var/demo-logs")
    target.mkdir(parents=True, exist_ok=True)
    for log in Path(workdir).glob("*.log"):
        shutil.copy(log, target / log.name)
    print(f"logs of the demo's parts are in {target}/", file=sys.stderr)


def _demo_steps(pipeline: Pipeline, invoices: list[dict[str, Any]], say: Any) -> None:
    """What the article's script does, against the running services."""
    import anthropic

    from invoice_batch.store.repository import Store
    from invoice_batch.store.schema import make_engine

    produce_invoices(pipeline.bootstrap, "invoices", invoices)
    store = Store(make_engine(pipeline.database_url))
    batch_id = None
    count = 0
    deadline = time.monotonic() + 60
    while batch_id is None:
        pipeline.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError("no batch was submitted within 60 s")
        open_batches = [b for b in store.recent_batches(5) if b.api_batch_id]
        if open_batches:
            batch_id = open_batches[0].api_batch_id
            count = open_batches[0].request_count
        else:
            time.sleep(0.2)
    client = anthropic.Anthropic(base_url=pipeline.emulator_url, api_key=DEMO_API_KEY)
    say(f"Submitted {count} invoices")
    say(f"Batch ID: {batch_id}")
    batch = client.messages.batches.retrieve(batch_id)
    say(f"Status:  {batch.processing_status}")
    say()
    last = None
    while True:
        pipeline.check_alive()
        batch = client.messages.batches.retrieve(batch_id)
        c = batch.request_counts
        done = c.succeeded + c.errored + c.canceled + c.expired
        line = f"Status: {batch.processing_status:<11} | Done: {done} | Remaining: {c.processing}"
        if line != last:
            say(line)
            last = line
        if batch.processing_status == "ended":
            break
        if time.monotonic() > deadline + 60:
            raise RuntimeError("the batch did not end within 2 minutes")
        time.sleep(0.5)
    records = read_classified(
        pipeline.bootstrap, "invoices.classified", len(invoices), 60, check=pipeline.check_alive
    )
    if len(records) < len(invoices):
        raise RuntimeError(f"only {len(records)} of {len(invoices)} results were published")
    say()
    say("=== INVOICE CLASSIFICATION RESULTS ===")
    for line in results_table(records):
        say(line)
    finished = None
    cost_deadline = time.monotonic() + 10
    while finished is None and time.monotonic() < cost_deadline:
        finished = next(
            (
                b
                for b in store.recent_batches(5)
                if b.api_batch_id == batch_id and b.status == "done"
            ),
            None,
        )
        time.sleep(0.1)
    say()
    if finished is not None:
        cost = Decimal(str(finished.cost_usd))
        tokens = finished.input_tokens + finished.cache_read_tokens + finished.cache_creation_tokens
        say(
            f"Estimated cost: ${cost:.6f} at batch prices ({tokens} input + "
            f"{finished.output_tokens} output tokens, {finished.model}; "
            f"real-time calls: ${2 * cost:.6f})"
        )
    flagged = sorted(str(r["invoice_id"]) for r in records if r["approval_required"])
    say(f"{' and '.join(flagged) or 'No invoices'} flagged for manager approval")
    store.engine.dispose()


def run_demo(processing_seconds: float = 4.0, out: Any = None) -> int:
    """Run the article's scenario end to end; 0 on success, 1 with a one-line reason."""
    out = out or sys.stdout

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    started = time.monotonic()
    invoices = seed_invoices()
    try:
        with running_pipeline(processing_seconds=processing_seconds) as pipeline:
            try:
                _demo_steps(pipeline, invoices, say)
            except Exception as exc:
                exc.workdir = pipeline.workdir  # type: ignore[attr-defined]
                raise
    except Exception as exc:
        _keep_logs(exc)
        reason = str(exc).splitlines()[0] if str(exc) else ""
        print(f"demo failed: {type(exc).__name__}: {reason}", file=sys.stderr)
        return 1
    say(f"(demo finished in {time.monotonic() - started:.1f} s)")
    return 0

"""Scale-out on real processes: N consumers in one group and M collectors on one
PostgreSQL store, against Tansu and the emulator, optionally killing one of each.

``python -m bench.scale_out [--invoices 20000] [--partitions 6]`` prints the
throughput with one and with two of each (no kills). ``run_scale_out`` is also what
``tests/integration/test_scale_out.py`` drives, with kills and rolling restarts.

Work splits two ways: consumers by partition (the group assigns the 6 partitions
across them) and the flushers inside them by ``FOR UPDATE SKIP LOCKED`` claims;
collectors by leases on batches. On a 2-core machine the figures show whether the
split works and what it costs, not how far it scales: 2+2 service processes, the
broker, the emulator and PostgreSQL share the same two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from invoice_batch.broker import free_port, wait_for_port
from invoice_batch.demo import Pipeline, running_pipeline

DEPARTMENT_WORDS = [
    "cloud hosting",
    "recruitment drive",
    "hotel stay",
    "design agency",
    "audit fees",
    "legal counsel",
]


def invoices(n: int, start: int = 0) -> list[dict[str, object]]:
    return [
        {
            "invoice_id": f"INV-{i:06d}",
            "supplier": f"Supplier {i % 37}",
            "description": f"{DEPARTMENT_WORDS[i % len(DEPARTMENT_WORDS)]} for month {i % 12 + 1}",
            "amount": f"{(i * 7919) % 400000 + 100}.50",
            "currency": "INR",
            "invoice_date": "2026-11-01",
        }
        for i in range(start, start + n)
    ]


def scale_settings(database_url: str, **extra: str) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:10]
    return {
        "DATABASE_URL": database_url,
        "INPUT_TOPIC": f"invoices-{suffix}",
        "OUTPUT_TOPIC": f"classified-{suffix}",
        "DLQ_TOPIC": f"dlq-{suffix}",
        "CONSUMER_GROUP": f"group-{suffix}",
        "TOPIC_PARTITIONS": "6",
        "BATCH_MAX_REQUESTS": "1000",
        "BATCH_MAX_WAIT_SECONDS": "2",
        # Short so that a killed collector's lease and a killed flusher's create are
        # taken over within seconds (defaults: 120 s and 600 s).
        "LEASE_SECONDS": "5",
        "CREATE_TIMEOUT_SECONDS": "5",
        "RETRY_DELAY_SECONDS": "1",
        "MAX_ATTEMPTS": "6",
        "POLL_MIN_SECONDS": "0.5",
        "POLL_MAX_SECONDS": "1",
        "LOG_LEVEL": "INFO",
        **extra,
    }


@dataclass
class ScaleRun:
    pipeline: Pipeline
    settings: dict[str, str]
    consumers: list[str] = field(default_factory=list)
    collectors: list[str] = field(default_factory=list)
    produced_at: float = 0.0
    # The store, for tests that watch progress and leases (set by the caller).
    engine: Any = None

    def start(self, name: str) -> None:
        command = "consume" if name.startswith("consumer") else "collect"
        port = free_port()
        process = self.pipeline.start_service(name, command, {"METRICS_PORT": str(port)})
        wait_for_port(port, 30, process)

    def kill(self, name: str) -> None:
        process = self.pipeline.processes.pop(name)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)

    def terminate(self, name: str, budget: float = 10.0) -> float:
        """SIGTERM; returns how long the process took to exit (raises past ``budget``+5)."""
        process = self.pipeline.processes.pop(name)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(budget + 5)
        return time.monotonic() - started

    def pid(self, name: str) -> int:
        return self.pipeline.processes[name].pid

    def produce(self, records: list[dict[str, object]]) -> None:
        from invoice_batch.schemas.codec import InvoiceCodec

        from tests.support.topics import produce_raw

        codec = InvoiceCodec("avro", max_text_bytes=32768)
        if not self.produced_at:
            self.produced_at = time.monotonic()
        produce_raw(
            self.pipeline.bootstrap,
            self.settings["INPUT_TOPIC"],
            [(str(r["invoice_id"]).encode(), codec.encode(r)) for r in records],
        )

    def read_output(self, expected: int, timeout: float, settle: float = 3.0) -> list[Any]:
        from tests.support.topics import read_topic

        return read_topic(
            self.pipeline.bootstrap,
            self.settings["OUTPUT_TOPIC"],
            expected,
            timeout,
            check=self.pipeline.check_alive,
            settle=settle,
        )

    def emulator_requests(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.pipeline.emulator_url}/_emulator/requests") as reply:
            return [json.loads(line) for line in reply.read().splitlines() if line.strip()]


@contextmanager
def scale_out(
    workdir: Path,
    database_url: str,
    *,
    consumers: int,
    collectors: int,
    processing_seconds: float = 1.0,
    emulator_args: list[str] | None = None,
    **extra: str,
) -> Iterator[ScaleRun]:
    """The broker and emulator, a migrated store, and the services started."""
    settings = scale_settings(database_url, **extra)
    with running_pipeline(
        workdir,
        processing_seconds=processing_seconds,
        settings=settings,
        emulator_args=emulator_args,
        services=False,
    ) as pipeline:
        subprocess.run(
            [sys.executable, "-m", "invoice_batch", "db", "upgrade"],
            env=pipeline.env,
            check=True,
            capture_output=True,
        )
        run = ScaleRun(pipeline, settings)
        run.consumers = [f"consumer-{i + 1}" for i in range(consumers)]
        run.collectors = [f"collector-{i + 1}" for i in range(collectors)]
        for name in run.consumers + run.collectors:
            run.start(name)
        yield run


def wait_until(
    condition: Callable[[], bool], timeout: float, check: Callable[[], None], every: float = 0.02
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check()
        if condition():
            return True
        time.sleep(every)
    return False


def double_sends(requests: list[dict[str, Any]]) -> list[str]:
    """custom_ids submitted in more than one create, and rows whose attempts have gaps.

    custom_id is ``i<row>-a<attempt>``: the same attempt in two creates is a double
    spend; a row's attempts must be 1..k with no repeats.
    """
    problems = []
    creates: defaultdict[str, set[int]] = defaultdict(set)
    attempts: defaultdict[str, list[int]] = defaultdict(list)
    for request in requests:
        creates[request["custom_id"]].add(request["create_seq"])
        row, _, attempt = request["custom_id"].partition("-a")
        attempts[row].append(int(attempt))
    problems += [f"{cid} sent in creates {sorted(s)}" for cid, s in creates.items() if len(s) > 1]
    for row, seen in attempts.items():
        if sorted(seen) != list(range(1, len(seen) + 1)):
            problems.append(f"{row} attempts {sorted(seen)}")
    return problems


def failed_attempts(emulator_url: str, requests: list[dict[str, Any]]) -> dict[str, str]:
    """custom_id → result type, for every request of every batch (via the SDK)."""
    import anthropic

    client = anthropic.Anthropic(base_url=emulator_url, api_key="sk-ant-scale-out")
    outcome: dict[str, str] = {}
    for batch_id in sorted({r["batch_id"] for r in requests}):
        try:
            for item in client.messages.batches.results(batch_id):
                outcome[item.custom_id] = item.result.type
        except anthropic.APIError:
            continue  # a batch whose create was lost, or not ended: nothing was returned
    return outcome


def measure(invoice_count: int, partitions: int, of_each: int, workdir: Path, url: str) -> float:
    """Seconds from the first produced invoice to the last classified one, no kills."""
    with scale_out(
        workdir, url, consumers=of_each, collectors=of_each, TOPIC_PARTITIONS=str(partitions)
    ) as run:
        run.produce(invoices(invoice_count))
        out = run.read_output(invoice_count, 600, settle=0)
        elapsed = time.monotonic() - run.produced_at
    if len(out) < invoice_count:
        raise RuntimeError(f"only {len(out)} of {invoice_count} classified")
    return elapsed


def _postgres_database() -> Generator[str, None, None]:
    from tests.conftest import _postgres_database as fresh_database

    yield from fresh_database()


def main(argv: list[str] | None = None) -> int:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--invoices", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=6)
    args = parser.parse_args(argv)
    print(f"{os.cpu_count()} cores; {args.invoices} invoices over {args.partitions} partitions")
    figures = {}
    for of_each in (1, 2):
        databases = _postgres_database()
        url = next(databases)
        try:
            with tempfile.TemporaryDirectory(prefix="scale-out-") as workdir:
                seconds = measure(args.invoices, args.partitions, of_each, Path(workdir), url)
        finally:
            databases.close()
        figures[of_each] = seconds
        print(
            f"{of_each} consumer(s) + {of_each} collector(s): {seconds:6.1f} s, "
            f"{args.invoices / seconds:7.0f} invoices/s",
            flush=True,
        )
    print(f"speed-up with 2 of each: {figures[1] / figures[2]:.2f}x")
    return 0


def summary(counts: Counter[str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))


if __name__ == "__main__":
    raise SystemExit(main())

"""The chaos harness: real processes killed at named crash points and at random.

    python -m tests.chaos.harness            # short run (what `make test` runs)
    python -m tests.chaos.harness --full     # `make chaos`: 200+ kills on each store

It starts the Tansu broker, the API emulator (with errored, expired, missing and
duplicated results, bad tool input, and HTTP fault storms), the consumer and the
collector as processes, sends invoices (with some poison records) while it kills
and restarts the services: at every crash point of the protocols
(``invoice_batch.crash_points``), with SIGKILL at random moments, with SIGTERM
while partitions are revoked, while the broker is frozen with SIGSTOP, and (full
run, PostgreSQL) across a restart of the database server. Then it lets the
services finish and checks the invariants over the whole output topic, the DLQ
topic and the emulator's log of every request it accepted:

    chaos: sent=N classified=C dlq=D lost=0 duplicates=0 double_submits=0 altered=0 kills=K

- lost: inputs with neither an output record nor a DLQ record once nothing more has
  come out for FINISH_QUIET_SECONDS;
- duplicates: invoices published more than once;
- double_submits: invoices sent to the API again although their previous
  submission did not fail (it succeeded, or its batch was never looked at);
- altered: DLQ records whose value is not, byte for byte, the record that was sent
  (the consumer's dead letters carry the record as read, the collector's the one it
  rebuilt from the stored invoice or kept).

The exit code is 1 if any of the four is above zero.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import httpx
from invoice_batch.collector.service import result_body
from invoice_batch.schemas.codec import InvoiceCodec

from invoice_batch.batch_requests import row_id_from
from invoice_batch.broker import free_port, start_broker, stop_process, wait_for_port
from invoice_batch.crash_points import CRASH_POINTS
from invoice_batch.results import Retry, decide_outcome
from tests.support.topics import patient_producer, produce_raw, read_all

API_KEY = "sk-ant-chaos-test-key"
# After the last kill: how long nothing may come out before what is missing counts
# as lost, and the most the harness waits in all.
FINISH_QUIET_SECONDS = 180
FINISH_MAX_SECONDS = 900
POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
# Outcome faults of every run: each makes the collector retry or DLQ something.
EMULATOR_OUTCOME_FAULTS = [
    "--errored-api-rate",
    "0.03",
    "--errored-invalid-rate",
    "0.005",
    "--missing-result-rate",
    "0.01",
    "--duplicate-result-rate",
    "0.01",
    "--bad-tool-input-rate",
    "0.01",
    "--expire-batch-rate",
    "0.05",
    "--expire-done-fraction",
    "0.5",
]
# Baseline HTTP faults, always on: the SDK's retries and our create handling
# have to cope with them all the time, not just during storms.
BASELINE_HTTP_FAULTS = [
    "create:rate_limit:p=0.05,retry_after=1",
    "create:lost_create:p=0.05",
    "retrieve:overloaded:p=0.05",
    "results:api_error:p=0.03",
]
STORM_HTTP_FAULTS = [
    "*:rate_limit:p=0.5,retry_after=1",
    "*:api_error:p=0.2",
    "*:overloaded:p=0.2",
    "create:lost_create:p=0.3",
]


@dataclass
class Plan:
    store: str
    invoices: int
    kills: int
    broker_pause_seconds: float
    restart_postgres: bool
    seed: int
    poison_share: float = 0.02
    # --keep: a PostgreSQL run's database is kept as well (its name in the notes).
    keep_database: bool = False
    # Emulated seconds per real second: 24 h expiry after 86400/time_scale s, results
    # archived after 29 times that. The run must end before the archive (4320: 20 s and
    # 9.7 min; 600: 2.4 min and 70 min).
    time_scale: float = 4320


@dataclass
class Outcome:
    sent: int
    classified: int
    dlq: int
    lost: int
    duplicates: int
    double_submits: int
    kills: int
    seconds: float
    altered: int = 0
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"chaos: sent={self.sent} classified={self.classified} dlq={self.dlq} "
            f"lost={self.lost} duplicates={self.duplicates} "
            f"double_submits={self.double_submits} altered={self.altered} kills={self.kills}"
        )

    @property
    def ok(self) -> bool:
        return (self.lost, self.duplicates, self.double_submits, self.altered) == (0, 0, 0, 0)


@contextlib.contextmanager
def fresh_database(store: str, workdir: Path, keep: bool = False) -> Iterator[str]:
    if store == "sqlite":
        yield f"sqlite:///{workdir / 'store.db'}"
        return
    from sqlalchemy import create_engine, text

    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"invoice_batch_chaos_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{POSTGRES_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        for _ in range(0 if keep else 30):  # kept: the notes name it
            try:
                with admin.connect() as connection:
                    connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                break
            except Exception:
                time.sleep(1)
        admin.dispose()


def where_in_the_store(database_url: str, keys: list[str]) -> list[str]:
    """For each lost key, its rows in the store: none means the consumer let its
    record go; a row shows where the flusher or the collector left it."""
    if not keys:
        return []
    from sqlalchemy import bindparam, create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT invoice_id, id, status, attempts, batch_key, error_code "
                    "FROM invoices WHERE invoice_id IN :keys ORDER BY id"
                ).bindparams(bindparam("keys", expanding=True)),
                {"keys": keys},
            ).all()
    except Exception as exc:  # a report of a failed run must not fail itself
        return [f"lost keys {keys}: store not readable ({type(exc).__name__})"]
    finally:
        engine.dispose()
    found: dict[str, list[str]] = {key: [] for key in keys}
    for invoice_id, row_id, status, attempts, batch_key, error_code in rows:
        found[invoice_id].append(
            f"row {row_id} {status} attempts={attempts} batch={batch_key} error={error_code}"
        )
    return [f"lost key {key}: {'; '.join(found[key]) or 'no row in the store'}" for key in keys]


class Services:
    """The processes under test, started and killed by the harness."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.kills = 0
        self.kinds: Counter[str] = Counter()
        self.starts: Counter[str] = Counter()
        self._log_offsets: dict[str, int] = {}

    def start(self, name: str, crash_at: str | None = None) -> subprocess.Popen[bytes]:
        command = "consume" if name == "consumer" else "collect"
        env = {**self.env, "METRICS_PORT": "0"}
        if crash_at:
            env["INVOICE_BATCH_CRASH_AT"] = crash_at
        self.starts[name] += 1
        log_path = self.workdir / f"{name}.log"
        self._log_offsets[name] = log_path.stat().st_size if log_path.exists() else 0
        log = log_path.open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "invoice_batch", command],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.processes[name] = process
        return process

    def wait_started(self, name: str, timeout: float = 30) -> bool:
        """Until the process logged that it started (so a kill hits a working service)."""
        log_path = self.workdir / f"{name}.log"
        marker = f'"event": "{name} starting"'.encode()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with log_path.open("rb") as log:
                log.seek(self._log_offsets.get(name, 0))
                if marker in log.read():
                    return True
            if self.processes[name].poll() is not None:
                return False
            time.sleep(0.1)
        return False

    def ensure_running(self, name: str) -> None:
        process = self.processes.get(name)
        if process is None or process.poll() is not None:
            self.start(name)

    def sigkill(self, name: str, kind: str = "random") -> None:
        process = self.processes.get(name)
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(10)
            self.kills += 1
            self.kinds[kind] += 1

    def wait_dead(self, name: str, timeout: float, kind: str) -> bool:
        """True if the process died by itself (at its crash point) within ``timeout``."""
        process = self.processes[name]
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        if process.returncode == -signal.SIGKILL:
            self.kills += 1
            self.kinds[kind] += 1
        return True

    def stop_all(self) -> None:
        for process in self.processes.values():
            stop_process(process, 15)


def make_invoices(
    n: int, seed: int, poison_share: float
) -> tuple[list[tuple[bytes, bytes]], set[str], set[str]]:
    """(records, valid invoice ids, poison keys). Poison records carry a POISON- key."""
    rng = random.Random(seed)
    codec = InvoiceCodec("avro", max_text_bytes=32_768)
    words = ["cloud hosting", "recruitment", "hotel", "design agency", "audit", "legal", "freight"]
    records: list[tuple[bytes, bytes]] = []
    valid: set[str] = set()
    poison: set[str] = set()
    for i in range(n):
        if rng.random() < poison_share:
            key = f"POISON-{i:06d}"
            value = rng.choice(
                [
                    b"\x00garbage",
                    b"",
                    codec.encode(
                        {"invoice_id": key, "description": "x", "amount": "-1", "currency": "INR"}
                    ),
                ]
            )
            poison.add(key)
            records.append((key.encode(), value))
            continue
        invoice_id = f"CHAOS-{seed}-{i:06d}"
        valid.add(invoice_id)
        records.append(
            (
                invoice_id.encode(),
                codec.encode(
                    {
                        "invoice_id": invoice_id,
                        "supplier": f"Supplier {i % 41}",
                        "description": f"{words[i % len(words)]} services, order {i}",
                        "amount": f"{rng.randint(100, 400_000)}.00",
                        "currency": "INR",
                    }
                ),
            )
        )
    return records, valid, poison


def altered_dead_letters(sent: list[tuple[bytes, bytes]], dead_letters: list[Any]) -> list[str]:
    """Keys of the DLQ records whose value is not the value sent with that key (each key
    is sent once; Kafka may hand an empty value back as null)."""
    values = dict(sent)
    return sorted(
        {
            record.key.decode()
            for record in dead_letters
            if record.key in values and (record.value or b"") != values[record.key]
        }
    )


def set_faults(emulator_url: str, http_faults: list[str]) -> None:
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(f"{emulator_url}/_emulator/faults", json={"http": http_faults}, timeout=5)


def double_submits(emulator_url: str) -> tuple[int, list[str]]:
    """Invoices submitted again while their previous submission had not failed."""
    log = httpx.get(f"{emulator_url}/_emulator/requests", timeout=120).text
    submissions: dict[int, list[tuple[int, str, str]]] = defaultdict(list)
    batches: set[str] = set()
    for line in log.splitlines():
        entry = json.loads(line)
        row = row_id_from(entry["custom_id"])
        if row is None:
            continue
        submissions[row].append((entry["create_seq"], entry["batch_id"], entry["custom_id"]))
        batches.add(entry["batch_id"])
    client = anthropic.Anthropic(base_url=emulator_url, api_key=API_KEY, max_retries=10)
    client = client.with_options(timeout=120)
    outcome: dict[tuple[str, str], str] = {}
    for batch_id in batches:
        batch = client.messages.batches.retrieve(batch_id)
        if batch.processing_status != "ended":
            continue
        for item in client.messages.batches.results(batch_id):
            result = item.result.type
            # A succeeded result whose tool input we cannot use failed for us: the
            # collector retries it, rightly.
            if result == "succeeded" and isinstance(
                decide_outcome(result_body(item.result.to_dict())), Retry
            ):
                result = "unusable"
            outcome.setdefault((batch_id, item.custom_id), result)
    failed = {"errored", "expired", "canceled", "unusable"}
    offenders = []
    for row, sends in submissions.items():
        sends.sort()
        for (_, batch_id, custom_id), later in itertools.pairwise(sends):
            # A result missing from the results file counts as failed: we retry those.
            result = outcome.get((batch_id, custom_id), "missing")
            if result not in failed and result != "missing":
                offenders.append(
                    f"row {row}: {custom_id} in {batch_id} was {result}, sent again as {later[2]}"
                )
                break
    return len(offenders), offenders


def run(plan: Plan, workdir: Path) -> Outcome:
    rng = random.Random(plan.seed)
    started = time.monotonic()
    topics = {
        "INPUT_TOPIC": "invoices",
        "OUTPUT_TOPIC": "invoices.classified",
        "DLQ_TOPIC": "invoices.dlq",
    }
    with contextlib.ExitStack() as stack:
        broker_port, emulator_port = free_port(), free_port()
        broker = start_broker(broker_port, workdir / "broker.log")
        stack.callback(stop_process, broker)
        bootstrap = f"127.0.0.1:{broker_port}"
        emulator_url = f"http://127.0.0.1:{emulator_port}"
        emulator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "invoice_batch_emulator",
                "--port",
                str(emulator_port),
                "--state-dir",
                str(workdir / "emulator"),
                "--seed",
                str(plan.seed),
                "--processing-seconds",
                "1.5",
                "--time-scale",
                str(plan.time_scale),
                *EMULATOR_OUTCOME_FAULTS,
                *[arg for spec in BASELINE_HTTP_FAULTS for arg in ("--http-fault", spec)],
            ],
            stdout=(workdir / "emulator.log").open("ab"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        stack.callback(stop_process, emulator)
        wait_for_port(emulator_port, 30, emulator)
        database_url = stack.enter_context(
            fresh_database(plan.store, workdir, keep=plan.keep_database)
        )
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("INVOICE_BATCH_")},
            **topics,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_SESSION_TIMEOUT_MS": "6000",
            "DATABASE_URL": database_url,
            "ANTHROPIC_BASE_URL": emulator_url,
            "ANTHROPIC_API_KEY": API_KEY,
            "BATCH_MAX_REQUESTS": "600",
            "BATCH_MAX_WAIT_SECONDS": "2",
            "FLUSH_CHECK_SECONDS": "0.5",
            "POLL_MIN_SECONDS": "0.5",
            "POLL_MAX_SECONDS": "2",
            "LEASE_SECONDS": "4",
            # Batches here are tens of invoices: small chunks put the crash points
            # between chunks (mid-results, after a publish) inside most batches.
            "COLLECT_CHUNK_SIZE": "8",
            "CREATE_TIMEOUT_SECONDS": "3",
            "RETRY_DELAY_SECONDS": "1",
            "MAX_ATTEMPTS": "6",
            "LOG_FORMAT": "json",
            "SHUTDOWN_TIMEOUT_SECONDS": "10",
        }
        subprocess.run(
            [sys.executable, "-m", "invoice_batch", "db", "upgrade"],
            env=env,
            check=True,
            capture_output=True,
        )
        from invoice_batch.kafka import ensure_topics
        from invoice_batch.settings import load_settings

        ensure_topics(load_settings(env), topics.values(), partitions=3)
        services = Services(workdir, env)
        stack.callback(services.stop_all)
        services.start("consumer")
        services.start("collector")

        records, valid, poison = make_invoices(plan.invoices, plan.seed, plan.poison_share)
        chunks = [records[i : i + 50] for i in range(0, len(records), 50)]
        # Invoices keep arriving for as long as the kills go on (about 6 s a kill), so
        # the consumer's crash points are reached all through the run.
        interval = max(0.05, plan.kills * 6.0 / len(chunks))

        def feed() -> None:
            # A frozen broker delays the feed but never drops or repeats an input record.
            producer = patient_producer(bootstrap)
            for chunk in chunks:
                produce_raw(bootstrap, "invoices", chunk, producer)
                time.sleep(interval)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        notes: list[str] = []
        if plan.keep_database and plan.store == "postgresql":
            notes.append(f"database kept: {database_url.rsplit('/', 1)[1]}")
        actions = ["crash_point"] * 5 + ["random_kill"] * 3 + ["revoke", "storm"]
        broker_paused = postgres_restarted = False
        while services.kills < plan.kills:
            action = rng.choice(actions)
            if not broker_paused and services.kills >= plan.kills // 3:
                action, broker_paused = "broker_pause", True
            elif (
                plan.restart_postgres
                and not postgres_restarted
                and services.kills >= plan.kills // 2
            ):
                action, postgres_restarted = "postgres_restart", True
            target = rng.choice(["consumer", "collector"])
            if action == "crash_point":
                points = [
                    p for p in CRASH_POINTS if p.startswith("collect") == (target == "collector")
                ]
                point = rng.choice([p for p in points if p != "consume.on_revoke"])
                services.sigkill(target)
                services.start(target, crash_at=f"{point}@{rng.randint(1, 2)}")
                if not services.wait_dead(target, timeout=25, kind=point):
                    # Not reached in time (no batch ended, say): kill it anyway.
                    services.kinds[f"missed {point}"] += 1
                    services.sigkill(target, "random")
                services.start(target)
                services.wait_started(target)
            elif action == "random_kill":
                time.sleep(rng.uniform(0.5, 4.0))
                services.sigkill(target, "random")
                services.start(target)
                services.wait_started(target)
            elif action == "revoke":
                services.sigkill("consumer")
                services.start("consumer", crash_at="consume.on_revoke")
                services.wait_started("consumer")
                time.sleep(rng.uniform(3, 6))  # joined the group, assigned
                services.processes["consumer"].terminate()
                if not services.wait_dead("consumer", 12, kind="consume.on_revoke"):
                    services.sigkill("consumer", "random")
                services.start("consumer")
                services.wait_started("consumer")
            elif action == "storm":
                set_faults(emulator_url, STORM_HTTP_FAULTS)
                time.sleep(rng.uniform(2, 5))
                set_faults(emulator_url, BASELINE_HTTP_FAULTS)
                services.sigkill(target, "storm")
                services.start(target)
                services.wait_started(target)
            elif action == "broker_pause":
                broker.send_signal(signal.SIGSTOP)
                time.sleep(plan.broker_pause_seconds)
                broker.send_signal(signal.SIGCONT)
                notes.append(f"broker frozen {plan.broker_pause_seconds:.0f} s")
            elif action == "postgres_restart":
                restart_postgres()
                notes.append("postgres restarted")
            for name in ("consumer", "collector"):
                process = services.processes[name]
                if process.poll() is not None and process.returncode not in (0, -signal.SIGKILL):
                    notes.append(f"{name} exited with {process.returncode}")
                services.ensure_running(name)
        feeder.join()
        set_faults(emulator_url, [])
        for name in ("consumer", "collector"):
            services.ensure_running(name)
        # Let the services finish: every valid invoice out, every poison record in the DLQ.
        # Invoices retried after the last faults (up to MAX_ATTEMPTS batches each) can take
        # minutes on a loaded machine: wait while the count still grows, and count as lost
        # only what is missing once nothing has come out for FINISH_QUIET_SECONDS.
        expected = len(valid) + len(poison)
        started_waiting = progressed = time.monotonic()
        done = -1
        seen: set[str] = set()
        out_records: list[Any] = []
        dlq_records: list[Any] = []
        while (
            time.monotonic() - progressed < FINISH_QUIET_SECONDS
            and time.monotonic() - started_waiting < FINISH_MAX_SECONDS
        ):
            for name in ("consumer", "collector"):
                services.ensure_running(name)
            out_records = read_all(bootstrap, "invoices.classified")
            dlq_records = read_all(bootstrap, "invoices.dlq")
            seen = {r.key.decode() for r in out_records + dlq_records if r.key}
            if len(seen & (valid | poison)) >= expected:
                break
            if len(seen) > done:
                done, progressed = len(seen), time.monotonic()
            time.sleep(2)
        notes.append(f"finished {time.monotonic() - started_waiting:.0f} s after the last kill")
        time.sleep(3)  # anything still in flight would show as a duplicate
        out_records = read_all(bootstrap, "invoices.classified")
        dlq_records = read_all(bootstrap, "invoices.dlq")
        out_keys = Counter(r.key.decode() for r in out_records if r.key)
        dlq_keys = {r.key.decode() for r in dlq_records if r.key}
        missing = sorted((valid | poison) - set(out_keys) - dlq_keys)
        lost = len(missing)
        notes.extend(where_in_the_store(database_url, missing[:20]))
        duplicates = sum(1 for count in out_keys.values() if count > 1)
        submits, offenders = double_submits(emulator_url)
        notes.extend(offenders[:5])
        altered_keys = altered_dead_letters(records, dlq_records)
        notes.append(
            f"dead letters: {len(dlq_keys & poison)} poison records, "
            f"{len(dlq_keys & valid)} invoices the collector gave up on"
        )
        notes.extend(f"DLQ value differs from the record sent: {key}" for key in altered_keys[:5])
        notes.append(
            "kills by kind: " + ", ".join(f"{k}={v}" for k, v in sorted(services.kinds.items()))
        )
        return Outcome(
            sent=len(records),
            classified=len(set(out_keys) & valid),
            dlq=len(dlq_keys & (valid | poison)),
            lost=lost,
            duplicates=duplicates,
            double_submits=submits,
            kills=services.kills,
            seconds=time.monotonic() - started,
            altered=len(altered_keys),
            notes=notes,
        )


def restart_postgres() -> None:
    """Restart the machine's PostgreSQL cluster (full runs only)."""
    versions = sorted(os.listdir("/etc/postgresql"))
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "restart"],
        check=True,
        capture_output=True,
        timeout=120,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--full", action="store_true", help="200+ kills on each store")
    parser.add_argument("--store", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--invoices", type=int)
    parser.add_argument("--kills", type=int)
    parser.add_argument("--seed", type=int, default=int(os.environ.get("CHAOS_SEED", "7")))
    parser.add_argument(
        "--keep", type=Path, help="keep logs and state in this folder (and PostgreSQL's database)"
    )
    args = parser.parse_args(argv)
    stores = ["sqlite", "postgresql"] if args.store == "both" else [args.store]
    failed = False
    for store in stores:
        plan = Plan(
            store=store,
            invoices=args.invoices or (12_000 if args.full else 1_500),
            kills=args.kills or (210 if args.full else 10),
            broker_pause_seconds=30 if args.full else 4,
            restart_postgres=args.full and store == "postgresql",
            seed=args.seed,
            time_scale=600 if args.full else 4320,
            keep_database=args.keep is not None,
        )
        with contextlib.ExitStack() as stack:
            workdir = (
                args.keep / store
                if args.keep
                else Path(
                    stack.enter_context(tempfile.TemporaryDirectory(prefix=f"chaos-{store}-"))
                )
            )
            workdir.mkdir(parents=True, exist_ok=True)
            outcome = run(plan, workdir)
        print(f"{outcome.line()} store={store} seconds={outcome.seconds:.0f}", flush=True)
        for note in outcome.notes:
            print(f"  note: {note}", flush=True)
        failed |= not outcome.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

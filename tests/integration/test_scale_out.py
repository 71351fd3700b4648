"""Two consumers and two collectors on one PostgreSQL store, as real processes.

Proves the scale-out invariants: work splits by partition (consumers) and by
SKIP LOCKED claims and leases (flushers, collectors); a SIGKILLed consumer's
partitions and a SIGKILLed collector's lease are taken over; a rolling restart
with SIGTERM loses and duplicates nothing; and through all of it no invoice is sent
to the API twice unless its previous attempt failed, and none is published twice.

The default run uses 4,000 invoices (about a minute); the 20,000-invoice version is
marked ``slow`` and runs only when asked for
(``pytest -m slow tests/integration/test_scale_out.py``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from invoice_batch.schemas.codec import ClassifiedCodec
from sqlalchemy import func, select

from bench.scale_out import (
    ScaleRun,
    double_sends,
    failed_attempts,
    invoices,
    scale_out,
    wait_until,
)
from invoice_batch.store.models import BatchRow, InvoiceRow
from invoice_batch.store.schema import make_engine
from tests.conftest import _postgres_database

pytestmark = [pytest.mark.postgres, pytest.mark.broker]

# 1% of requests come back errored, so retries (legitimate second sends) happen too.
EMULATOR_FAULTS = ["--errored-api-rate", "0.01"]


@pytest.fixture()
def postgres_url() -> Iterator[str]:
    yield from _postgres_database()


def stored_count(run: ScaleRun) -> int:
    with run.engine.connect() as connection:
        return int(connection.execute(select(func.count(InvoiceRow.id))).scalar() or 0)


def lease_holders(run: ScaleRun) -> list[str]:
    with run.engine.connect() as connection:
        return [
            owner
            for owner in connection.execute(
                select(BatchRow.lease_owner).where(BatchRow.lease_owner.is_not(None))
            ).scalars()
            if owner
        ]


def done_count(run: ScaleRun) -> int:
    with run.engine.connect() as connection:
        return int(
            connection.execute(
                select(func.count(InvoiceRow.id)).where(InvoiceRow.status == "done")
            ).scalar()
            or 0
        )


def assert_exactly_once(run: ScaleRun, sent: list[dict[str, object]], out: list[Any]) -> None:
    codec = ClassifiedCodec("avro")
    records = [codec.decode(r.value) for r in out]
    ids = Counter(str(r["invoice_id"]) for r in records)
    repeated = {i: n for i, n in ids.items() if n > 1}
    assert not repeated, f"{len(repeated)} invoices published more than once: {list(repeated)[:5]}"
    assert set(ids) == {str(s["invoice_id"]) for s in sent}, f"{len(ids)} of {len(sent)} classified"
    assert len({r["event_id"] for r in records}) == len(sent)
    assert all(r.key.decode() == d["invoice_id"] for r, d in zip(out, records, strict=True))

    requests = run.emulator_requests()
    problems = double_sends(requests)
    assert not problems, f"sent twice without a failed attempt: {problems[:5]}"
    # Every attempt after the first follows an attempt whose result failed.
    outcome = failed_attempts(run.pipeline.emulator_url, requests)
    by_row: dict[str, list[int]] = {}
    for request in requests:
        row, _, attempt = request["custom_id"].partition("-a")
        by_row.setdefault(row, []).append(int(attempt))
    for row, attempts in by_row.items():
        for attempt in sorted(attempts)[:-1]:
            result = outcome.get(f"{row}-a{attempt}")
            assert result in ("errored", "expired", "canceled", None), (
                f"{row}-a{attempt} was {result} yet sent again"
            )
    # None above: the batch of that attempt was never created (a lost create whose
    # rows were released), which double_sends already proves was not sent twice.
    with run.engine.connect() as connection:
        statuses = dict(
            connection.execute(
                select(InvoiceRow.status, func.count(InvoiceRow.id)).group_by(InvoiceRow.status)
            ).all()
        )
    assert statuses == {"done": len(sent)}, statuses


def kill_one_of_each(run: ScaleRun, total: int, rest: list[dict[str, object]]) -> dict[str, object]:
    """SIGKILL consumer-1 mid-stream, produce ``rest``, then SIGKILL collector-1 while it
    holds a lease. ``rest`` comes after the consumer's kill, so the survivor must take
    over its partitions; and before the collector's, so that the batches it makes give
    collector-1 a lease to hold even when the other took every batch so far."""
    check = run.pipeline.check_alive
    assert wait_until(lambda: stored_count(run) >= total // 3, 120, check), "nothing consumed"
    run.kill("consumer-1")
    killed_consumer_at = stored_count(run)
    run.produce(rest)
    collector_pid = f"-{run.pid('collector-1')}-"
    holding = wait_until(
        lambda: any(collector_pid in owner for owner in lease_holders(run)),
        60,
        check,
        every=0.005,
    )
    done_before = done_count(run)
    run.kill("collector-1")
    return {
        "consumer_killed_at_stored": killed_consumer_at,
        "collector_killed_holding_lease": holding,
        "done_when_collector_killed": done_before,
    }


def run_with_kills(tmp_path: Path, url: str, total: int, timeout: float) -> None:
    sent = invoices(total)
    with scale_out(tmp_path, url, consumers=2, collectors=2, emulator_args=EMULATOR_FAULTS) as run:
        run.engine = make_engine(url)
        started = time.monotonic()
        # Half now, half once consumer-1 is dead: the survivor must take over its
        # partitions and keep consuming.
        run.produce(sent[: total // 2])
        kills = kill_one_of_each(run, total, sent[total // 2 :])
        out = run.read_output(total, timeout, settle=5)
        elapsed = time.monotonic() - started
        assert_exactly_once(run, sent, out)
        run.engine.dispose()
    assert 0 < int(str(kills["consumer_killed_at_stored"])) < total
    assert kills["collector_killed_holding_lease"], "collector-1 never held a lease to kill"
    assert int(str(kills["done_when_collector_killed"])) < total
    print(f"\n{total} invoices, 2+2 services, one of each SIGKILLed: {elapsed:.1f} s; {kills}")


def test_two_consumers_and_two_collectors_survive_a_kill_of_one_of_each_exactly_once(
    postgres_url: str, tmp_path: Path
) -> None:
    run_with_kills(tmp_path, postgres_url, 4_000, 150)


@pytest.mark.slow
def test_twenty_thousand_invoices_over_six_partitions_survive_kills_exactly_once(
    postgres_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # About 3 minutes on 2 cores: only when asked for (-m slow), not in every test run.
    if "slow" not in str(request.config.getoption("markexpr", "")):
        pytest.skip("20,000 invoices: run with -m slow")
    run_with_kills(tmp_path, postgres_url, 20_000, 600)


def test_a_rolling_restart_drains_each_service_within_the_budget_and_loses_nothing(
    postgres_url: str, tmp_path: Path
) -> None:
    total = 4_000
    sent = invoices(total)
    with scale_out(
        tmp_path,
        postgres_url,
        consumers=2,
        collectors=2,
        emulator_args=EMULATOR_FAULTS,
        SHUTDOWN_TIMEOUT_SECONDS="10",
    ) as run:
        run.engine = make_engine(postgres_url)
        check = run.pipeline.check_alive
        exits: dict[str, float] = {}
        codes: dict[str, int | None] = {}
        run.produce(sent[: total // 2])
        assert wait_until(lambda: stored_count(run) >= total // 4, 120, check)
        # One at a time, as an orchestrator's rolling update does: stop, start the new one.
        for index, name in enumerate(["consumer-1", "collector-1", "consumer-2", "collector-2"]):
            process = run.pipeline.processes[name]
            exits[name] = run.terminate(name)
            codes[name] = process.returncode
            run.start(name)
            if index == 1:
                run.produce(sent[total // 2 :])
            time.sleep(1.0)
        out = run.read_output(total, 150, settle=5)
        assert_exactly_once(run, sent, out)
        run.engine.dispose()
    slow = {name: seconds for name, seconds in exits.items() if seconds > 10}
    assert not slow, f"SIGTERM took longer than SHUTDOWN_TIMEOUT_SECONDS: {slow}"
    assert all(code == 0 for code in codes.values()), codes
    print(f"\nrolling restart exit times: { {k: round(v, 2) for k, v in exits.items()} }")

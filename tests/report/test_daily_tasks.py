"""The collector's daily hook: retention once a day, never an exception into the loop."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from invoice_batch.daily import DailyTasks
from invoice_batch.settings import load_settings
from invoice_batch.store.models import InvoiceRow
from invoice_batch.store.reporting import OperationsStore
from invoice_batch.store.schema import make_engine, upgrade_schema
from tests.report.seed import seed_known_day

NOW = datetime(2026, 11, 28, 0, 30, tzinfo=UTC)


def invoice_ids(ops: OperationsStore) -> set[str]:
    with ops.engine.connect() as connection:
        return set(connection.execute(select(InvoiceRow.invoice_id)).scalars())


def test_retention_runs_at_start_and_then_once_a_day_with_the_configured_days(
    tmp_path: Path,
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    upgrade_schema(engine)
    seed_known_day(engine, NOW)
    ops = OperationsStore(engine)
    clock = [0.0]
    tasks = DailyTasks(
        load_settings({"RESULTS_RETENTION_DAYS": "1"}), ops, "c", monotonic=lambda: clock[0]
    )
    tasks(NOW)
    assert "INV-OLD" not in invoice_ids(ops) and "INV-001" in invoice_ids(ops)
    # Asked again within the minute between checks: nothing runs, whatever the date.
    tasks(NOW + timedelta(days=2))
    assert "INV-001" in invoice_ids(ops)
    clock[0] += 120
    tasks(NOW + timedelta(days=2))
    assert invoice_ids(ops) == {"INV-009"}  # only the pending row is left


def test_a_failing_daily_task_is_logged_and_does_not_reach_the_collector_loop(
    tmp_path: Path,
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'never-migrated.db'}")
    tasks = DailyTasks(load_settings({}), OperationsStore(engine), "c", monotonic=lambda: 0.0)
    tasks(NOW)  # no tables: the delete fails inside, and is tried again later

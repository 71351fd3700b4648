"""The report's figures, retention and the summary-send ledger on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from invoice_batch.report import (
    BadWindow,
    build_report,
    parse_since,
    render_csv,
    render_json,
    render_text,
)
from invoice_batch.store.models import BatchRow, InvoiceRow
from invoice_batch.store.reporting import OperationsStore
from invoice_batch.store.schema import make_engine, upgrade_schema
from tests.report.seed import seed_known_day

NOW = datetime(2026, 11, 28, 0, 30, tzinfo=UTC)  # 06:00 in Asia/Kolkata
KOLKATA = ZoneInfo("Asia/Kolkata")


@pytest.fixture()
def ops(database_url: str) -> OperationsStore:
    engine = make_engine(database_url)
    upgrade_schema(engine)
    seed_known_day(engine, NOW)
    yield OperationsStore(engine)  # type: ignore[misc]
    engine.dispose()


def test_the_report_counts_departments_sums_amounts_per_currency_and_lists_the_queue(
    ops: OperationsStore,
) -> None:
    since = NOW - timedelta(hours=24)
    report = build_report(
        ops.report_rows(since, NOW),
        since=since,
        until=NOW,
        zone=KOLKATA,
        usd_rates={"INR": Decimal("84.2")},
    )
    data = json.loads(render_json(report))
    assert data["invoices"] == {
        "classified": 7,
        "approval_required": 3,
        "dlq": 1,
        "retried": 2,
        "retries": 3,
        "awaiting_retry": 1,
    }
    departments = {d["department"]: d for d in data["departments"]}
    assert departments["IT"]["count"] == 3
    assert departments["IT"]["amounts"] == {"INR": "144500", "USD": "3000.50"}
    assert departments["Finance"]["amounts"] == {"INR": "850000"}
    assert "Legal" not in departments  # classified two days ago: outside the window
    assert [q["invoice_id"] for q in data["approval_queue"]] == ["INV-003", "INV-005", "INV-006"]
    assert data["approval_queue"][0]["reasons"] == [
        "amount INR 285000 reaches the INR 200000 threshold"
    ]
    assert data["dlq"]["by_reason"] == {"max_attempts": 1}
    assert [b["batch_id"] for b in data["batches"]] == ["msgbatch_one", "msgbatch_two"]
    one = data["batches"][0]
    assert one["latency_seconds"] == 42 * 60
    assert one["input_tokens"] == 550 and one["output_tokens"] == 100
    assert one["currency"] == "INR" and one["cost_local"] == pytest.approx(0.0025 * 84.2)
    assert data["cost"]["batch_usd"] == pytest.approx(0.004)
    assert data["cost"]["realtime_usd"] == pytest.approx(0.008)
    assert data["cost"]["saved_usd"] == pytest.approx(0.004)
    assert data["cost"]["local"]["INR"]["saved"] == pytest.approx(0.004 * 84.2)
    assert "USD" not in data["cost"]["local"]  # no rate configured for USD itself

    text = render_text(report)
    assert "Invoices classified: 7 (3 need approval)" in text
    assert "INR 850,000.00" in text and "saved $0.004000" in text
    rows = list(csv.DictReader(io.StringIO(render_csv(report))))
    assert len(rows) == 8 and rows[-1]["status"] == "dlq"
    assert {r["invoice_id"] for r in rows if r["approval_required"] == "true"} == {
        "INV-003",
        "INV-005",
        "INV-006",
    }


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_department_report_keeps_only_that_departments_invoices_and_queue(
    ops: OperationsStore,
) -> None:
    since = NOW - timedelta(hours=24)
    report = build_report(
        ops.report_rows(since, NOW),
        since=since,
        until=NOW,
        zone=KOLKATA,
        usd_rates={},
        department="IT",
    )
    assert [line.invoice_id for line in report.approval_queue] == ["INV-006"]
    assert len(report.classified) == 3 and report.dlq == []


def test_since_takes_durations_dates_and_times_and_rejects_the_rest() -> None:
    assert parse_since("24h", NOW, KOLKATA) == NOW - timedelta(hours=24)
    assert parse_since("7d", NOW, KOLKATA) == NOW - timedelta(days=7)
    assert parse_since("90m", NOW, KOLKATA) == NOW - timedelta(minutes=90)
    assert parse_since("2026-11-27", NOW, KOLKATA) == datetime(2026, 11, 27, tzinfo=KOLKATA)
    assert parse_since("2026-11-27T23:00", NOW, KOLKATA) == datetime(
        2026, 11, 27, 23, tzinfo=KOLKATA
    )
    with pytest.raises(BadWindow, match="--since"):
        parse_since("yesterday", NOW, KOLKATA)


def test_retention_deletes_only_finished_rows_older_than_the_limit(ops: OperationsStore) -> None:
    result = ops.delete_expired(NOW - timedelta(days=1))
    assert (result.invoices, result.batches) == (1, 1)  # INV-OLD and its batch
    with ops.engine.connect() as connection:
        left = set(connection.execute(select(InvoiceRow.invoice_id)).scalars())
        batches = connection.execute(select(func.count(BatchRow.key))).scalar_one()
    assert "INV-OLD" not in left and {"INV-001", "INV-008", "INV-009"} <= left
    assert batches == 2
    # Everything finished is old a year later, but the pending row stays.
    ops.delete_expired(NOW + timedelta(days=365))
    with ops.engine.connect() as connection:
        assert list(connection.execute(select(InvoiceRow.invoice_id)).scalars()) == ["INV-009"]
    assert ops.delete_expired(NOW + timedelta(days=365)).invoices == 0


def test_one_claim_per_day_wins_a_failed_send_is_retried_and_a_stale_one_is_not(
    ops: OperationsStore,
) -> None:
    day, audience = "2026-11-28", "all"
    claim = ops.claim_summary(day, audience, "a", ["x@example.com"], NOW, max_attempts=3)
    assert claim == "claimed"
    assert ops.claim_summary(day, audience, "b", ["x@example.com"], NOW, max_attempts=3) == "taken"
    ops.finish_summary(
        day, audience, "a", NOW, error="SMTPConnectError", retry_after=timedelta(minutes=5)
    )
    assert ops.claim_summary(day, audience, "b", ["x@example.com"], NOW, max_attempts=3) == "wait"
    later = NOW + timedelta(minutes=6)
    assert ops.claim_summary(day, audience, "b", ["x@example.com"], later, max_attempts=3) == (
        "claimed"
    )
    ops.finish_summary(day, audience, "b", later)
    assert ops.claim_summary(day, audience, "c", ["x@example.com"], later, max_attempts=3) == "sent"
    [row] = ops.summary_sends(day)
    assert (row.status, row.attempts, row.owner) == ("sent", 2, "b")

    # A sender that died mid-send: its row turns unknown and nobody resends it.
    other = "department:IT"
    ops.claim_summary(day, other, "d", ["it@example.com"], NOW, max_attempts=3)
    assert ops.mark_stale_sends_unknown(NOW + timedelta(minutes=16)) == 1
    assert ops.claim_summary(day, other, "e", ["it@example.com"], later, max_attempts=3) == "taken"

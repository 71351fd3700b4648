"""Known rows written straight into the store, for report and retention tests."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import Engine, insert

from invoice_batch.store.models import BatchRow, InvoiceRow

# (invoice id, department, amount, currency, approval reasons, attempts)
CLASSIFIED = [
    ("INV-001", "IT", "124500", "INR", [], 1),
    ("INV-002", "HR", "45000", "INR", [], 1),
    (
        "INV-003",
        "Admin",
        "285000",
        "INR",
        ["amount INR 285000 reaches the INR 200000 threshold"],
        1,
    ),
    ("INV-004", "Marketing", "78000", "INR", [], 2),
    (
        "INV-005",
        "Finance",
        "850000",
        "INR",
        ["amount INR 850000 reaches the INR 200000 threshold"],
        1,
    ),
    ("INV-006", "IT", "3000.50", "USD", ["amount USD 3000.50 reaches the USD 2500 threshold"], 3),
    ("INV-007", "IT", "20000", "INR", [], 1),
]


def batch_row(
    key: str, api_id: str, created: datetime, requests: int, cost: str
) -> dict[str, object]:
    return {
        "key": key,
        "api_batch_id": api_id,
        "status": "done",
        "trigger": "cutoff",
        "model": "claude-haiku-4-5",
        "request_count": requests,
        "request_bytes": 1000 * requests,
        "created_at": created,
        "submitted_at": created + timedelta(seconds=2),
        "done_at": created + timedelta(minutes=42, seconds=2),
        "processing_status": "ended",
        "succeeded": requests,
        "errored": 0,
        "canceled": 0,
        "expired": 0,
        "processing": 0,
        "polls": 3,
        "input_tokens": 100 * requests,
        "output_tokens": 20 * requests,
        "cache_read_tokens": 10 * requests,
        "cache_creation_tokens": 0,
        "cost_usd": Decimal(cost),
    }


def invoice_row(
    number: int,
    invoice_id: str,
    *,
    status: str,
    received: datetime,
    batch_key: str | None = None,
    api_batch_id: str | None = None,
    department: str | None = None,
    amount: str = "100",
    currency: str = "INR",
    reasons: list[str] | None = None,
    attempts: int = 1,
    classified: datetime | None = None,
    error_code: str | None = None,
) -> dict[str, object]:
    payload = {"invoice_id": invoice_id, "description": "x", "amount": amount, "currency": currency}
    return {
        "invoice_id": invoice_id,
        "content_hash": f"{number:064d}",
        "status": status,
        "attempts": attempts,
        "payload": json.dumps(payload),
        "request_bytes": 1000,
        "received_at": received,
        "source_topic": "invoices",
        "source_partition": 0,
        "source_offset": number,
        "source_value": b"value",
        "batch_key": batch_key,
        "api_batch_id": api_batch_id,
        "department": department,
        "amount": amount if status == "done" else None,
        "currency": currency if status == "done" else None,
        "summary": f"summary of {invoice_id}" if status == "done" else None,
        "approval_required": bool(reasons) if status == "done" else None,
        "approval_reasons": json.dumps(reasons or []) if status == "done" else None,
        "model": "claude-haiku-4-5" if status == "done" else None,
        "input_tokens": 110 if status == "done" else None,
        "output_tokens": 20 if status == "done" else None,
        "cost_usd": Decimal("0.0004") if status == "done" else None,
        "classified_at": classified,
        "published_at": classified,
        "error_code": error_code,
        "error_message": f"{error_code} detail" if error_code else None,
    }


def seed_known_day(engine: Engine, now: datetime) -> None:
    """Seven classified invoices and one DLQ'd in two batches an hour ago, one pending
    retry, and one batch plus invoice far outside the window (two days ago)."""
    hour_ago = now - timedelta(hours=1)
    old = now - timedelta(days=2)
    with engine.begin() as connection:
        connection.execute(
            insert(BatchRow),
            [
                batch_row("k1", "msgbatch_one", hour_ago, 5, "0.002500"),
                batch_row("k2", "msgbatch_two", hour_ago + timedelta(minutes=1), 3, "0.001500"),
                batch_row("k0", "msgbatch_old", old, 1, "0.000400"),
            ],
        )
        rows = []
        for number, (invoice_id, department, amount, currency, reasons, attempts) in enumerate(
            CLASSIFIED, start=1
        ):
            key, api = ("k1", "msgbatch_one") if number <= 5 else ("k2", "msgbatch_two")
            rows.append(
                invoice_row(
                    number,
                    invoice_id,
                    status="done",
                    received=hour_ago - timedelta(minutes=5),
                    batch_key=key,
                    api_batch_id=api,
                    department=department,
                    amount=amount,
                    currency=currency,
                    reasons=reasons,
                    attempts=attempts,
                    classified=hour_ago + timedelta(minutes=43),
                )
            )
        rows.append(
            invoice_row(
                8,
                "INV-008",
                status="dlq",
                received=hour_ago,
                batch_key="k2",
                attempts=3,
                error_code="max_attempts",
            )
        )
        rows.append(invoice_row(9, "INV-009", status="pending", received=hour_ago, attempts=1))
        rows.append(
            invoice_row(
                10,
                "INV-OLD",
                status="done",
                received=old,
                batch_key="k0",
                api_batch_id="msgbatch_old",
                department="Legal",
                amount="5",
                reasons=[],
                classified=old + timedelta(minutes=40),
            )
        )
        connection.execute(insert(InvoiceRow), rows)
        from sqlalchemy import update

        connection.execute(
            update(InvoiceRow).where(InvoiceRow.invoice_id == "INV-009").values(retry_at=hour_ago)
        )

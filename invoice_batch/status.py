"""``invoice-batch status``: open and recent batches, and the pending buffer."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from invoice_batch.consumer.flush_policy import decide_flush
from invoice_batch.consumer.flusher import flush_policy_from
from invoice_batch.settings import Settings
from invoice_batch.store.repository import Store
from invoice_batch.store.schema import make_engine, upgrade_schema


def show_status(settings: Settings, *, as_json: bool, limit: int) -> None:
    engine = make_engine(settings.sqlalchemy_url())
    upgrade_schema(engine)
    store = Store(engine)
    now = datetime.now(UTC)
    state = store.buffer_state()
    decision = decide_flush(state, now, flush_policy_from(settings))
    batches = store.recent_batches(limit)
    data: dict[str, Any] = {
        "buffer": {
            "pending": state.pending_count,
            "pending_bytes": state.pending_bytes,
            "oldest_age_seconds": (now - state.oldest_received_at).total_seconds()
            if state.oldest_received_at
            else None,
            "next_flush": {
                "due_now": decision.flush,
                "trigger": decision.trigger,
                "reason": decision.reason,
                "at": decision.next_due.isoformat() if decision.next_due else None,
            },
        },
        "batches": [
            {
                "batch_id": b.api_batch_id,
                "key": b.key,
                "status": b.status,
                "processing_status": b.processing_status,
                "trigger": b.trigger,
                "requests": b.request_count,
                "done": b.succeeded + b.errored + b.canceled + b.expired,
                "remaining": b.processing,
                "created_at": b.created_at.isoformat(),
                "age_seconds": (now - b.created_at).total_seconds(),
                "cost_usd": float(b.cost_usd or 0),
            }
            for b in batches
        ],
    }
    if as_json:
        print(json.dumps(data, indent=2))
        return
    console = Console()
    buffer = data["buffer"]
    console.print(
        f"[bold]Buffer[/]: {state.pending_count} pending "
        f"({state.pending_bytes / 1e6:.1f} MB); next flush: {decision.reason}"
    )
    table = Table(title="Batches (newest first)")
    for column in ("batch id", "status", "trigger", "done / total", "age", "cost $"):
        table.add_column(column)
    for b in data["batches"]:
        table.add_row(
            str(b["batch_id"] or b["key"]),
            f"{b['status']} ({b['processing_status']})",
            str(b["trigger"]),
            f"{b['done']} / {b['requests']}",
            f"{b['age_seconds'] / 60:.0f} min",
            f"{b['cost_usd']:.4f}",
        )
    console.print(table)
    del buffer

"""``invoice-batch status``: open and recent batches with progress, the pending buffer,
the next flush and why, and today's summary e-mail. ``--watch`` redraws it live.

Everything comes from the store (what the services wrote at their last poll), so
status needs no broker and no API key, and costs nothing to run.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from invoice_batch.consumer.flush_policy import decide_flush
from invoice_batch.consumer.flusher import flush_policy_from
from invoice_batch.report import duration
from invoice_batch.settings import Settings
from invoice_batch.store.reporting import OperationsStore
from invoice_batch.store.repository import Store

# The Message Batches API expires a batch that has not ended 24 hours after creation;
# its unprocessed requests come back as expired and the collector retries them.
BATCH_EXPIRY = timedelta(hours=24)


def collect_status(store: Store, settings: Settings, now: datetime, limit: int) -> dict[str, Any]:
    """The status as plain data: what ``--json`` prints and the table is drawn from."""
    state = store.buffer_state()
    decision = decide_flush(state, now, flush_policy_from(settings))
    batches = []
    for b in store.recent_batches(limit):
        done = b.succeeded + b.errored + b.canceled + b.expired
        open_ = b.status in ("open", "submitting")
        expires_at = (b.submitted_at or b.created_at) + BATCH_EXPIRY if open_ else None
        batches.append(
            {
                "batch_id": b.api_batch_id,
                "key": b.key,
                "status": b.status,
                "processing_status": b.processing_status,
                "trigger": b.trigger,
                "requests": b.request_count,
                "done": b.request_count if b.status == "done" else done,
                "remaining": 0 if b.status == "done" else b.request_count - done,
                "succeeded": b.succeeded,
                "failed": b.errored + b.canceled + b.expired,
                "created_at": b.created_at.isoformat(),
                "submitted_at": b.submitted_at.isoformat() if b.submitted_at else None,
                "age_seconds": round((now - b.created_at).total_seconds(), 1),
                "expires_at": expires_at.isoformat() if expires_at else None,
                "expires_in_seconds": round((expires_at - now).total_seconds(), 1)
                if expires_at
                else None,
                "cost_usd": float(b.cost_usd or 0),
            }
        )
    today = now.astimezone(settings.zone).strftime("%Y-%m-%d")
    sends = OperationsStore(store.engine).summary_sends(today)
    return {
        "now": now.isoformat(),
        "buffer": {
            "pending": state.pending_count,
            "pending_bytes": state.pending_bytes,
            "oldest_age_seconds": round((now - state.oldest_received_at).total_seconds(), 1)
            if state.oldest_received_at
            else None,
            "next_flush": {
                "due_now": decision.flush,
                "trigger": decision.trigger,
                "reason": decision.reason,
                "at": decision.next_due.isoformat() if decision.next_due else None,
                "in_seconds": round((decision.next_due - now).total_seconds(), 1)
                if decision.next_due
                else None,
            },
        },
        "batches": batches,
        "summary_email": {
            "date": today,
            "configured": settings.smtp_configured(),
            "sends": [
                {
                    "audience": s.audience,
                    "status": s.status,
                    "attempts": s.attempts,
                    "sent_at": s.sent_at.isoformat() if s.sent_at else None,
                    "error": s.error,
                }
                for s in sends
            ],
        },
    }


def _seconds(value: float | None) -> str:
    return "-" if value is None else duration(timedelta(seconds=value))


def render_status(data: dict[str, Any]) -> Group:
    buffer = data["buffer"]
    flush = buffer["next_flush"]
    if flush["due_now"]:
        when = f"due now ({flush['trigger']}: {flush['reason']})"
    elif flush["in_seconds"] is not None:
        when = f"in {_seconds(flush['in_seconds'])} — {flush['reason']}"
    else:
        when = flush["reason"]
    lines: list[Any] = [
        Text.from_markup(
            f"[bold]Buffer[/]: {buffer['pending']} pending "
            f"({buffer['pending_bytes'] / 1e6:.1f} MB"
            + (
                f", oldest {_seconds(buffer['oldest_age_seconds'])} old"
                if buffer["oldest_age_seconds"] is not None
                else ""
            )
            + ")"
        ),
        Text.from_markup(f"[bold]Next flush[/]: {when}"),
    ]
    table = Table(title="Batches (newest first)", title_justify="left")
    for column in ("batch", "status", "progress", "done / total", "age", "expires in", "cost $"):
        table.add_column(column)
    for b in data["batches"]:
        status = (
            b["status"] if b["status"] == "done" else f"{b['status']} ({b['processing_status']})"
        )
        table.add_row(
            str(b["batch_id"] or b["key"]),
            status,
            ProgressBar(total=max(b["requests"], 1), completed=b["done"], width=24),
            f"{b['done']} / {b['requests']}" + (f" ({b['failed']} failed)" if b["failed"] else ""),
            _seconds(b["age_seconds"]),
            _seconds(b["expires_in_seconds"]),
            f"{b['cost_usd']:.6f}",
        )
    lines.append(table)
    mail = data["summary_email"]
    if mail["configured"] or mail["sends"]:
        sends = ", ".join(f"{s['audience']}: {s['status']}" for s in mail["sends"]) or "not yet"
        lines.append(Text.from_markup(f"[bold]Summary e-mail {mail['date']}[/]: {sends}"))
    return Group(*lines)


def show_status(
    settings: Settings, store: Store, *, as_json: bool, limit: int, watch: float | None
) -> None:
    """Print the status once, or every ``watch`` seconds until Ctrl-C."""
    console = Console()

    def snapshot() -> dict[str, Any]:
        return collect_status(store, settings, datetime.now(UTC), limit)

    if watch is None:
        data = snapshot()
        if as_json:
            print(json.dumps(data, indent=2))
        else:
            console.print(render_status(data))
        return
    try:
        if as_json:
            while True:
                print(json.dumps(snapshot()), flush=True)
                time.sleep(watch)
        with Live(render_status(snapshot()), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(watch)
                live.update(render_status(snapshot()), refresh=True)
    except KeyboardInterrupt:
        return

"""When pending invoices become a batch. Pure code: state and clock in, decision out.

Triggers, in the order they are checked:

- ``count``: pending requests reach BATCH_MAX_REQUESTS;
- ``bytes``: their serialized size reaches BATCH_MAX_BYTES;
- ``cutoff``: a row was received before the most recent wall-clock cut-off
  (BATCH_CUTOFF in BATCH_TIMEZONE). The rule needs no memory of past flushes:
  once everything older than the cut-off is in a batch, nothing is due until the
  next one, and a consumer that was down at 23:00 flushes as soon as it is back;
- ``retry``: invoices whose previous attempt failed have waited RETRY_DELAY;
  they are not held until the next cut-off, which could be a day away;
- ``age``: the oldest pending row has waited BATCH_MAX_WAIT_SECONDS. With a
  cut-off configured this applies only when BATCH_MAX_WAIT_SECONDS is set too,
  so a nightly deployment is not flushed hourly by the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

Trigger = Literal["count", "bytes", "age", "cutoff", "retry", "manual"]


@dataclass(frozen=True, slots=True)
class FlushPolicy:
    max_requests: int
    max_bytes: int
    max_wait: timedelta | None
    cutoff: time | None
    zone: ZoneInfo
    retry_delay: timedelta = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class BufferState:
    pending_count: int
    pending_bytes: int
    oldest_received_at: datetime | None
    oldest_retry_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class FlushDecision:
    flush: bool
    trigger: Trigger | None
    reason: str
    # When the next time-based trigger fires if nothing else happens (None: no
    # pending rows, or only count/bytes can fire).
    next_due: datetime | None = None
    # Rows received before this instant must go now (cut-off flushes only).
    received_before: datetime | None = None


def last_cutoff(now: datetime, cutoff: time, zone: ZoneInfo) -> datetime:
    """The most recent cut-off instant at or before ``now`` (aware, in ``zone``)."""
    local = now.astimezone(zone)
    candidate = datetime.combine(local.date(), cutoff, tzinfo=zone)
    if candidate > local:
        candidate = datetime.combine(local.date() - timedelta(days=1), cutoff, tzinfo=zone)
    return candidate


def next_cutoff(now: datetime, cutoff: time, zone: ZoneInfo) -> datetime:
    """The first cut-off instant strictly after ``now``."""
    previous = last_cutoff(now, cutoff, zone)
    return datetime.combine(previous.date() + timedelta(days=1), cutoff, tzinfo=zone)


def decide_flush(state: BufferState, now: datetime, policy: FlushPolicy) -> FlushDecision:
    if state.pending_count == 0:
        return FlushDecision(False, None, "nothing pending")
    if state.pending_count >= policy.max_requests:
        return FlushDecision(
            True, "count", f"{state.pending_count} pending ≥ {policy.max_requests} requests"
        )
    if state.pending_bytes >= policy.max_bytes:
        return FlushDecision(
            True, "bytes", f"{state.pending_bytes} pending bytes ≥ {policy.max_bytes}"
        )

    due: list[datetime] = []
    oldest = state.oldest_received_at
    if policy.cutoff is not None and oldest is not None:
        previous = last_cutoff(now, policy.cutoff, policy.zone)
        if oldest < previous:
            return FlushDecision(
                True,
                "cutoff",
                f"rows received before the {previous:%Y-%m-%d %H:%M %Z} cut-off",
                received_before=previous,
            )
        due.append(next_cutoff(now, policy.cutoff, policy.zone))
    if state.oldest_retry_at is not None:
        retry_due = state.oldest_retry_at + policy.retry_delay
        if now >= retry_due:
            return FlushDecision(True, "retry", "failed requests waited the retry delay")
        due.append(retry_due)
    if policy.max_wait is not None and oldest is not None:
        age_due = oldest + policy.max_wait
        if now >= age_due:
            return FlushDecision(
                True, "age", f"oldest row waited {(now - oldest).total_seconds():.0f} s"
            )
        due.append(age_due)
    next_due = min(due) if due else None
    when = f"; next at {next_due:%Y-%m-%d %H:%M:%S %Z}" if next_due else ""
    return FlushDecision(
        False, None, f"{state.pending_count} pending, below every limit{when}", next_due=next_due
    )

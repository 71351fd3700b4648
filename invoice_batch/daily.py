"""Once-a-day work of the collector: result retention and the morning summary e-mail.

``DailyTasks`` is called on every pass of the collector's loop and returns at once
unless something is due, so the loop's pace is unchanged. Both tasks are safe to run
from several collectors: retention deletes are idempotent, and the summary is
claimed in the store before it is sent (``summary_mail``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta

from invoice_batch.logs import get_logger
from invoice_batch.settings import Settings
from invoice_batch.store.reporting import OperationsStore
from invoice_batch.summary_mail import send_daily_summary, summary_due

log = get_logger("invoice_batch.daily")

RETENTION_EVERY = timedelta(days=1)
# How often a collector asks whether the summary is due, and how long it backs off
# after an error: a minute keeps a 06:00 summary within a minute of 06:00.
CHECK_EVERY_SECONDS = 60.0


class DailyTasks:
    def __init__(
        self,
        settings: Settings,
        store: OperationsStore,
        owner: str,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.store = store
        self.owner = owner
        self.monotonic = monotonic
        self._retention_done_at: datetime | None = None
        self._summary_done_for: str | None = None
        self._next_check = 0.0

    def __call__(self, now: datetime) -> None:
        """Run what is due. Never raises: a failure is logged and tried again later."""
        if self.monotonic() < self._next_check:
            return
        self._next_check = self.monotonic() + CHECK_EVERY_SECONDS
        try:
            self.apply_retention(now)
            self.send_summary(now)
        except Exception as exc:
            log.warning(
                "daily task failed; will try again", error=f"{type(exc).__name__}: {exc}"[:300]
            )

    def apply_retention(self, now: datetime) -> None:
        if self._retention_done_at is not None and now - self._retention_done_at < RETENTION_EVERY:
            return
        before = now - timedelta(days=self.settings.results_retention_days)
        result = self.store.delete_expired(before)
        self._retention_done_at = now
        log.info(
            "retention applied",
            older_than=before.isoformat(),
            invoices=result.invoices,
            batches=result.batches,
            summary_sends=result.summary_sends,
        )

    def send_summary(self, now: datetime) -> None:
        if not self.settings.smtp_configured() or not summary_due(self.settings, now):
            return
        today = now.astimezone(self.settings.zone).strftime("%Y-%m-%d")
        if self._summary_done_for == today:
            return
        outcomes = send_daily_summary(self.settings, self.store, now, self.owner)
        for outcome in outcomes:
            if outcome.result in ("sent", "failed"):
                log.info(
                    "summary e-mail " + outcome.result,
                    audience=outcome.audience,
                    recipients=len(outcome.recipients),
                    error=outcome.error,
                )
        # Sent here or by another collector: done for today. A failed send ("wait" for
        # others, "failed" here) is asked about again at the next check.
        if all(o.result in ("sent", "already_sent", "taken") for o in outcomes):
            self._summary_done_for = today

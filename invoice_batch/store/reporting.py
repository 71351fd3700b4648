"""The store's reads for reports, the daily retention, the summary-send ledger and
the DLQ replay ledger. Each public method is one transaction.

Kept apart from ``repository.py`` (the services' hot path) because nothing here
runs per record: these are daily or on-demand operator reads and writes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal

from sqlalchemy import Engine, and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from invoice_batch.store.models import BatchRow, DlqReplayRow, InvoiceRow, SummarySendRow


@dataclass(frozen=True, slots=True)
class ClassifiedLine:
    invoice_id: str
    department: str
    amount: Decimal | None
    currency: str | None
    summary: str
    approval_required: bool
    approval_reasons: tuple[str, ...]
    batch_id: str | None
    attempts: int
    classified_at: datetime
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal


@dataclass(frozen=True, slots=True)
class DlqLine:
    invoice_id: str
    amount: Decimal | None
    currency: str | None
    error_code: str
    error_message: str
    attempts: int


@dataclass(frozen=True, slots=True)
class BatchLine:
    batch_id: str | None
    key: str
    status: str
    trigger: str
    model: str
    requests: int
    succeeded: int
    errored: int
    canceled: int
    expired: int
    created_at: datetime
    submitted_at: datetime | None
    finished_at: datetime | None
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal


@dataclass(frozen=True, slots=True)
class ReportRows:
    """Everything a report for one window needs, read in one transaction."""

    classified: list[ClassifiedLine]
    dlq: list[DlqLine]
    awaiting_retry: int
    batches: list[BatchLine]


@dataclass(frozen=True, slots=True)
class RetentionResult:
    invoices: int
    batches: int
    summary_sends: int


SendClaim = Literal["claimed", "taken", "sent", "wait"]


def _decimal(value: object) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        return Decimal(str(value))
    except ArithmeticError:
        return None


def _reasons(raw: str | None) -> tuple[str, ...]:
    if not raw:
        return ()
    try:
        value = json.loads(raw)
    except ValueError:
        return (raw,)
    return tuple(str(v) for v in value) if isinstance(value, list) else (str(value),)


class OperationsStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # ------------------------------------------------------------------ reports

    def report_rows(self, since: datetime, until: datetime) -> ReportRows:
        """Rows classified in [since, until), rows dead-lettered whose batch finished (or,
        without a batch, that arrived) in it, and batches created or finished in it or
        still open."""
        with self.engine.connect() as connection:
            classified = [
                ClassifiedLine(
                    invoice_id=row.invoice_id,
                    department=row.department or "Unknown",
                    amount=_decimal(row.amount),
                    currency=row.currency,
                    summary=row.summary or "",
                    approval_required=bool(row.approval_required),
                    approval_reasons=_reasons(row.approval_reasons),
                    batch_id=row.api_batch_id,
                    attempts=row.attempts,
                    classified_at=row.classified_at or row.received_at,
                    input_tokens=row.input_tokens or 0,
                    output_tokens=row.output_tokens or 0,
                    cost_usd=_decimal(row.cost_usd) or Decimal(0),
                )
                for row in connection.execute(
                    select(*InvoiceRow.__table__.columns)
                    .where(
                        InvoiceRow.status == "done",
                        InvoiceRow.classified_at >= since,
                        InvoiceRow.classified_at < until,
                    )
                    .order_by(InvoiceRow.classified_at, InvoiceRow.invoice_id)
                )
            ]
            finished = func.coalesce(BatchRow.done_at, InvoiceRow.received_at)
            dlq = []
            for row in connection.execute(
                select(
                    InvoiceRow.invoice_id,
                    InvoiceRow.payload,
                    InvoiceRow.error_code,
                    InvoiceRow.error_message,
                    InvoiceRow.attempts,
                )
                .select_from(InvoiceRow)
                .outerjoin(BatchRow, BatchRow.key == InvoiceRow.batch_key)
                .where(InvoiceRow.status == "dlq", finished >= since, finished < until)
                .order_by(InvoiceRow.id)
            ):
                payload = json.loads(row.payload)
                dlq.append(
                    DlqLine(
                        invoice_id=row.invoice_id,
                        amount=_decimal(payload.get("amount")),
                        currency=payload.get("currency"),
                        error_code=row.error_code or "unknown",
                        error_message=row.error_message or "",
                        attempts=row.attempts,
                    )
                )
            awaiting_retry = connection.execute(
                select(func.count(InvoiceRow.id)).where(
                    InvoiceRow.status == "pending", InvoiceRow.retry_at.is_not(None)
                )
            ).scalar_one()
            batches = [
                BatchLine(
                    batch_id=b.api_batch_id,
                    key=b.key,
                    status=b.status,
                    trigger=b.trigger,
                    model=b.model,
                    requests=b.request_count,
                    succeeded=b.succeeded,
                    errored=b.errored,
                    canceled=b.canceled,
                    expired=b.expired,
                    created_at=b.created_at,
                    submitted_at=b.submitted_at,
                    finished_at=b.ended_at or b.done_at,
                    input_tokens=b.input_tokens + b.cache_read_tokens + b.cache_creation_tokens,
                    output_tokens=b.output_tokens,
                    cost_usd=_decimal(b.cost_usd) or Decimal(0),
                )
                for b in connection.execute(
                    select(*BatchRow.__table__.columns)
                    .where(
                        BatchRow.status != "released",
                        or_(
                            and_(BatchRow.created_at >= since, BatchRow.created_at < until),
                            and_(BatchRow.done_at >= since, BatchRow.done_at < until),
                            BatchRow.status.in_(["open", "submitting"]),
                        ),
                    )
                    .order_by(BatchRow.created_at)
                )
            ]
            # The batch row's counts are what the last poll before "ended" saw; for a
            # finished batch count its classified rows instead (a retried row leaves
            # its batch, a classified one keeps it).
            finished_keys = [b.key for b in batches if b.status == "done"]
            classified_per_batch: dict[str, int] = {}
            for start in range(0, len(finished_keys), 500):
                classified_per_batch.update(
                    (str(key), int(count))
                    for key, count in connection.execute(
                        select(InvoiceRow.batch_key, func.count(InvoiceRow.id))
                        .where(
                            InvoiceRow.batch_key.in_(finished_keys[start : start + 500]),
                            InvoiceRow.status == "done",
                        )
                        .group_by(InvoiceRow.batch_key)
                    )
                )
        batches = [
            replace(b, succeeded=classified_per_batch.get(b.key, 0)) if b.status == "done" else b
            for b in batches
        ]
        return ReportRows(classified, dlq, int(awaiting_retry), batches)

    # ---------------------------------------------------------------- retention

    def delete_expired(self, before: datetime) -> RetentionResult:
        """Delete done and DLQ'd invoices last touched before ``before``, then the done
        batches no invoice refers to any more, then old summary-send rows. Idempotent;
        several collectors may run it at once."""
        with self.engine.begin() as connection:
            finished = or_(
                and_(InvoiceRow.status == "done", InvoiceRow.classified_at < before),
                and_(
                    InvoiceRow.status == "dlq",
                    InvoiceRow.received_at < before,
                    or_(
                        InvoiceRow.batch_key.is_(None),
                        InvoiceRow.batch_key.in_(
                            select(BatchRow.key).where(
                                BatchRow.status == "done", BatchRow.done_at < before
                            )
                        ),
                    ),
                ),
            )
            invoices = connection.execute(delete(InvoiceRow).where(finished)).rowcount
            referenced = select(InvoiceRow.batch_key).where(InvoiceRow.batch_key.is_not(None))
            batches = connection.execute(
                delete(BatchRow).where(
                    BatchRow.status.in_(["done", "released"]),
                    func.coalesce(BatchRow.done_at, BatchRow.created_at) < before,
                    BatchRow.key.not_in(referenced),
                )
            ).rowcount
            sends = connection.execute(
                delete(SummarySendRow).where(SummarySendRow.claimed_at < before)
            ).rowcount
        return RetentionResult(int(invoices), int(batches), int(sends))

    # ------------------------------------------------------- summary-send ledger

    def claim_summary(
        self,
        local_date: str,
        audience: str,
        owner: str,
        recipients: Sequence[str],
        now: datetime,
        *,
        max_attempts: int,
    ) -> SendClaim:
        """Step 1 of the send protocol (see ``summary_mail``): insert the day's row as
        ``sending``. ``claimed``: this caller sends. ``sent``: already sent today.
        ``taken``: another process is sending, or the send's outcome is unknown.
        ``wait``: an earlier attempt failed; it is retried from ``next_attempt_at``,
        and then this caller gets ``claimed``.
        """
        try:
            with self.engine.begin() as connection:
                connection.execute(
                    insert(SummarySendRow).values(
                        local_date=local_date,
                        audience=audience,
                        status="sending",
                        attempts=1,
                        owner=owner,
                        recipients=",".join(recipients),
                        claimed_at=now,
                    )
                )
            return "claimed"
        except IntegrityError:
            pass
        with self.engine.begin() as connection:
            retried = connection.execute(
                update(SummarySendRow)
                .where(
                    SummarySendRow.local_date == local_date,
                    SummarySendRow.audience == audience,
                    SummarySendRow.status == "failed",
                    SummarySendRow.attempts < max_attempts,
                    or_(
                        SummarySendRow.next_attempt_at.is_(None),
                        SummarySendRow.next_attempt_at <= now,
                    ),
                )
                .values(
                    status="sending",
                    attempts=SummarySendRow.attempts + 1,
                    owner=owner,
                    claimed_at=now,
                    recipients=",".join(recipients),
                )
            ).rowcount
            if retried:
                return "claimed"
            status = connection.execute(
                select(SummarySendRow.status).where(
                    SummarySendRow.local_date == local_date, SummarySendRow.audience == audience
                )
            ).scalar_one_or_none()
        if status == "sent":
            return "sent"
        return "wait" if status == "failed" else "taken"

    def finish_summary(
        self,
        local_date: str,
        audience: str,
        owner: str,
        now: datetime,
        *,
        error: str | None = None,
        retry_after: timedelta = timedelta(minutes=5),
    ) -> None:
        """Step 3: ``sent``, or ``failed`` with the error and when to try again."""
        values: dict[str, object] = (
            {"status": "sent", "sent_at": now, "error": None, "next_attempt_at": None}
            if error is None
            else {"status": "failed", "error": error[:500], "next_attempt_at": now + retry_after}
        )
        with self.engine.begin() as connection:
            connection.execute(
                update(SummarySendRow)
                .where(
                    SummarySendRow.local_date == local_date,
                    SummarySendRow.audience == audience,
                    SummarySendRow.owner == owner,
                    SummarySendRow.status == "sending",
                )
                .values(**values)
            )

    def mark_stale_sends_unknown(self, claimed_before: datetime) -> int:
        """A ``sending`` row older than any send can take belongs to a process that died
        mid-send: the message may or may not have gone out. Mark it ``unknown`` and never
        retry it on its own (at most once a day); ``report --send`` sends by hand."""
        with self.engine.begin() as connection:
            return int(
                connection.execute(
                    update(SummarySendRow)
                    .where(
                        SummarySendRow.status == "sending",
                        SummarySendRow.claimed_at < claimed_before,
                    )
                    .values(status="unknown", error="the sender stopped during the send")
                ).rowcount
            )

    def summary_sends(self, local_date: str) -> list[SummarySendRow]:
        with self.engine.connect() as connection:
            return [
                SummarySendRow(**row._mapping)
                for row in connection.execute(
                    select(*SummarySendRow.__table__.columns)
                    .where(SummarySendRow.local_date == local_date)
                    .order_by(SummarySendRow.audience)
                )
            ]

    # ---------------------------------------------------------- DLQ replay ledger

    def replayed_sources(self, topic: str) -> set[tuple[int, int]]:
        """(partition, offset) of every record of ``topic`` replayed from the DLQ."""
        with self.engine.connect() as connection:
            return {
                (row.source_partition, row.source_offset)
                for row in connection.execute(
                    select(DlqReplayRow.source_partition, DlqReplayRow.source_offset).where(
                        DlqReplayRow.source_topic == topic
                    )
                )
            }

    def record_replays(self, rows: Iterable[dict[str, object]]) -> int:
        """Remember replayed records; ones already remembered are left alone."""
        written = 0
        with self.engine.begin() as connection:
            for row in rows:
                exists = connection.execute(
                    select(func.count())
                    .select_from(DlqReplayRow)
                    .where(
                        DlqReplayRow.source_topic == row["source_topic"],
                        DlqReplayRow.source_partition == row["source_partition"],
                        DlqReplayRow.source_offset == row["source_offset"],
                    )
                ).scalar_one()
                if not exists:
                    connection.execute(insert(DlqReplayRow).values(**row))
                    written += 1
        return written

    def forget_dead_lettered(self, sources: Iterable[tuple[str, int, int]]) -> int:
        """Delete DLQ'd invoice rows that came from these (topic, partition, offset), so a
        replayed copy is taken as new rather than skipped as a duplicate of a row that was
        never classified. Classified rows are kept: their replay stays a duplicate."""
        deleted = 0
        with self.engine.begin() as connection:
            for topic, partition, offset in sources:
                deleted += connection.execute(
                    delete(InvoiceRow).where(
                        InvoiceRow.status == "dlq",
                        InvoiceRow.source_topic == topic,
                        InvoiceRow.source_partition == partition,
                        InvoiceRow.source_offset == offset,
                    )
                ).rowcount
        return deleted

"""The store's tables. The schema itself is created by the Alembic migrations.

``invoices`` is the durable buffer and the record of every result; ``batches``
is one row per Message Batch, written as ``submitting`` before the API is called.

Invoice status:  pending → submitted → done | dlq   (submitted → pending on a retry)
Batch status:    submitting → open → done            (submitting → released when the
                 create certainly did not happen; open → done once every row is final)
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

InvoiceStatus = Literal["pending", "submitted", "done", "dlq"]
BatchStatus = Literal["submitting", "open", "done", "released"]


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite keeps no zone; PostgreSQL does)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# SQLite autoincrements only an INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
RowId = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class BatchRow(Base):
    __tablename__ = "batches"

    key: Mapped[str] = mapped_column(String(40), primary_key=True)
    api_batch_id: Mapped[str | None] = mapped_column(String(80), unique=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    trigger: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(80))
    request_count: Mapped[int] = mapped_column(Integer)
    request_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    processing_status: Mapped[str | None] = mapped_column(String(16))
    succeeded: Mapped[int] = mapped_column(Integer, default=0)
    errored: Mapped[int] = mapped_column(Integer, default=0)
    canceled: Mapped[int] = mapped_column(Integer, default=0)
    expired: Mapped[int] = mapped_column(Integer, default=0)
    processing: Mapped[int] = mapped_column(Integer, default=0)
    next_poll_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    polls: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(80))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_creation_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_usd: Mapped[float] = mapped_column(Numeric(14, 6), default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    # The collector's publish intent: JSON {partition: offset} of the output topic
    # from which records of this batch not yet marked done may have been published.
    publish_from: Mapped[str | None] = mapped_column(Text)


class InvoiceRow(Base):
    __tablename__ = "invoices"
    __table_args__ = (
        UniqueConstraint("invoice_id", "content_hash", name="uq_invoices_invoice_id_content"),
        Index("ix_invoices_status_id", "status", "id"),
        # Partial (migration 0006): a new row has neither, and every query on them
        # compares them to a value, which implies IS NOT NULL on both stores.
        Index(
            "ix_invoices_batch_key",
            "batch_key",
            postgresql_where=text("batch_key IS NOT NULL"),
            sqlite_where=text("batch_key IS NOT NULL"),
        ),
        Index(
            "ix_invoices_classified_at",
            "classified_at",
            postgresql_where=text("classified_at IS NOT NULL"),
            sqlite_where=text("classified_at IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    invoice_id: Mapped[str] = mapped_column(String(128))
    content_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(12))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    payload: Mapped[str] = mapped_column(Text)
    request_bytes: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    event_time: Mapped[datetime | None] = mapped_column(UTCDateTime)
    retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    source_topic: Mapped[str | None] = mapped_column(String(255))
    source_partition: Mapped[int | None] = mapped_column(Integer)
    source_offset: Mapped[int | None] = mapped_column(BigInteger)
    source_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    source_value: Mapped[bytes | None] = mapped_column(LargeBinary)
    # Set when source_value is left empty because the record's value is rebuilt from
    # the payload (schemas.codec.SourceEncoding): how to rebuild it.
    source_encoding: Mapped[str | None] = mapped_column(String(16))
    batch_key: Mapped[str | None] = mapped_column(ForeignKey("batches.key"))
    custom_id: Mapped[str | None] = mapped_column(String(64))
    # Result, once classified (kept for reports and the approval queue).
    event_id: Mapped[str | None] = mapped_column(String(36))
    api_batch_id: Mapped[str | None] = mapped_column(String(80))
    department: Mapped[str | None] = mapped_column(String(32))
    amount: Mapped[str | None] = mapped_column(String(40))
    currency: Mapped[str | None] = mapped_column(String(3))
    summary: Mapped[str | None] = mapped_column(Text)
    approval_required: Mapped[bool | None] = mapped_column(Boolean)
    approval_reasons: Mapped[str | None] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(String(80))
    input_tokens: Mapped[int | None] = mapped_column(Integer)
    output_tokens: Mapped[int | None] = mapped_column(Integer)
    cost_usd: Mapped[float | None] = mapped_column(Numeric(14, 8))
    classified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error_code: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)


SummaryStatus = Literal["sending", "sent", "failed", "unknown"]


class SummarySendRow(Base):
    """One morning summary e-mail per local date and audience, claimed before it is sent.

    The primary key is what makes "at most once a day" hold across restarts and
    several collectors: only the process whose INSERT succeeds sends.
    """

    __tablename__ = "summary_sends"

    local_date: Mapped[str] = mapped_column(String(10), primary_key=True)
    # "all" for SUMMARY_TO, "department:IT" for a department's own approval queue.
    audience: Mapped[str] = mapped_column(String(80), primary_key=True)
    status: Mapped[str] = mapped_column(String(12))
    attempts: Mapped[int] = mapped_column(Integer)
    owner: Mapped[str] = mapped_column(String(80))
    recipients: Mapped[str] = mapped_column(Text)
    claimed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)


class DlqReplayRow(Base):
    """A DLQ record sent back to the input topic, keyed by where it first came from."""

    __tablename__ = "dlq_replays"

    source_topic: Mapped[str] = mapped_column(String(255), primary_key=True)
    source_partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_offset: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    dlq_topic: Mapped[str] = mapped_column(String(255))
    dlq_partition: Mapped[int] = mapped_column(Integer)
    dlq_offset: Mapped[int] = mapped_column(BigInteger)
    error_code: Mapped[str] = mapped_column(String(32))
    replayed_to: Mapped[str] = mapped_column(String(255))
    replayed_at: Mapped[datetime] = mapped_column(UTCDateTime)

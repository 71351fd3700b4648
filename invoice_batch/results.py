"""Batch results → what happens to each invoice. Pure code.

The collector reads results with the SDK and hands each one here as plain values;
``decide_outcome`` says whether the invoice is classified, tried again, or rejected.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Literal, assert_never

from invoice_batch.approval import ApprovalDecision
from invoice_batch.batch_requests import DEPARTMENTS
from invoice_batch.invoices import MAX_AMOUNT, Invoice
from invoice_batch.pricing import Usage

# Namespace of event ids: uuid5(namespace, invoice_id + content hash) is the same on
# every publish of the same invoice, so downstream can deduplicate by it.
EVENT_ID_NAMESPACE = uuid.UUID("5d1f3c3e-6a53-4d1f-9a0c-2f9e1b7c4a10")
_NAMESPACE_BYTES = EVENT_ID_NAMESPACE.bytes

# Errors worth another attempt; anything else in an errored result is final.
RETRYABLE_ERRORS = frozenset(
    {"api_error", "overloaded_error", "rate_limit_error", "timeout_error", "internal_server_error"}
)


@dataclass(frozen=True, slots=True)
class Succeeded:
    tool_input: object
    model: str
    usage: Usage


@dataclass(frozen=True, slots=True)
class Errored:
    error_type: str
    message: str


@dataclass(frozen=True, slots=True)
class Canceled:
    pass


@dataclass(frozen=True, slots=True)
class Expired:
    pass


ResultBody = Succeeded | Errored | Canceled | Expired


@dataclass(frozen=True, slots=True)
class Classification:
    department: str
    amount: Decimal | None
    currency: str | None
    summary: str
    needs_review: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Classified:
    classification: Classification
    model: str
    usage: Usage


RetryReason = Literal["errored", "expired", "canceled", "missing"]


@dataclass(frozen=True, slots=True)
class Retry:
    reason: RetryReason
    detail: str
    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True, slots=True)
class Reject:
    code: Literal["model_rejected"]
    detail: str


Outcome = Classified | Retry | Reject


class BadToolInput(ValueError):
    """The model's tool call does not match the classify_invoice schema."""


def parse_tool_input(value: object) -> Classification:
    if not isinstance(value, Mapping):
        raise BadToolInput("tool input is not an object")
    department = value.get("department")
    if department not in DEPARTMENTS:
        raise BadToolInput(f"department {str(department)[:30]!r} is not one of ours")
    raw_amount = value.get("amount")
    amount: Decimal | None
    if raw_amount is None:
        amount = None
    elif isinstance(raw_amount, bool) or not isinstance(raw_amount, int | float | str):
        raise BadToolInput("amount is not a number")
    else:
        try:
            amount = Decimal(str(raw_amount).replace(",", ""))
        except InvalidOperation:
            raise BadToolInput(f"amount {str(raw_amount)[:30]!r} is not a number") from None
        if not amount.is_finite() or amount < 0 or amount >= MAX_AMOUNT:
            raise BadToolInput(f"amount {str(raw_amount)[:30]} is out of range")
    currency = value.get("currency")
    if currency is not None and not isinstance(currency, str):
        raise BadToolInput("currency is not a string")
    summary = value.get("summary")
    if not isinstance(summary, str) or not summary.strip():
        raise BadToolInput("summary is missing")
    needs_review = value.get("needs_review", False)
    if not isinstance(needs_review, bool):
        raise BadToolInput("needs_review is not a boolean")
    reason = value.get("reason", "")
    if not isinstance(reason, str):
        raise BadToolInput("reason is not a string")
    return Classification(
        department=str(department),
        amount=amount,
        currency=(currency or "").strip().upper() or None,
        summary=" ".join(summary.split())[:200],
        needs_review=needs_review,
        reason=" ".join(reason.split())[:500],
    )


def decide_outcome(body: ResultBody) -> Outcome:
    """What one result means for its invoice."""
    match body:
        case Succeeded(tool_input=tool_input, model=model, usage=usage):
            try:
                return Classified(parse_tool_input(tool_input), model, usage)
            except BadToolInput as exc:
                # Billed, but unusable: the next attempt may well be fine.
                return Retry("errored", f"invalid tool input: {exc}", usage)
        case Errored(error_type=error_type, message=message):
            detail = f"{error_type}: {' '.join(message.split())[:200]}"
            if error_type in RETRYABLE_ERRORS:
                return Retry("errored", detail)
            return Reject("model_rejected", detail)
        case Canceled():
            return Retry("canceled", "the batch was canceled before this request ran")
        case Expired():
            return Retry("expired", "the batch expired before this request ran")
        case _:
            assert_never(body)


def event_id_for(invoice: Invoice) -> str:
    """Stable across re-publishes of the same invoice content."""
    return event_id_from(invoice.invoice_id, invoice.content_hash())


def event_id_from(invoice_id: str, content_hash: str) -> str:
    """``event_id_for`` from the content hash the store already holds for the row.

    ``str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{invoice_id}\\x00{content_hash}"))``, written
    out (SHA-1, then the version and variant bits): a quarter of the cost without the
    UUID object, once per published invoice.
    """
    digest = bytearray(
        hashlib.sha1(_NAMESPACE_BYTES + f"{invoice_id}\x00{content_hash}".encode()).digest()[:16]
    )
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def classified_record(
    *,
    invoice: Invoice,
    classification: Classification,
    approval: ApprovalDecision,
    model: str,
    batch_id: str,
    classified_at: datetime,
    content_hash: str | None = None,
) -> dict[str, object]:
    """The ClassifiedInvoice event (CONTRACT.md). Upstream amount and currency win.

    ``content_hash``: the invoice's, when the caller has it stored (saves hashing
    the invoice again for its event id)."""
    amount = invoice.amount if invoice.amount is not None else classification.amount
    currency = invoice.currency or classification.currency
    return {
        "event_id": event_id_for(invoice)
        if content_hash is None
        else event_id_from(invoice.invoice_id, content_hash),
        "invoice_id": invoice.invoice_id,
        "department": classification.department,
        "amount": None if amount is None else f"{amount:f}",
        "currency": currency,
        "summary": classification.summary,
        "approval_required": approval.required,
        "approval_reasons": list(approval.reasons),
        "model": model,
        "batch_id": batch_id,
        "classified_at": classified_at,
    }

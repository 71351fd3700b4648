"""The morning summary: what was classified in a window, the approval queue, the DLQ,
and what the batches cost. Pure code: rows from the store in, a ``Report`` out, and
renderers to a terminal table, CSV, JSON and plain text.

Costs: the store keeps each batch's estimated cost at batch prices (50 % of list);
real-time calls would have cost twice that (``pricing.BATCH_DISCOUNT``), so the
saving equals the batch cost. With ``USD_RATES`` (1 USD = RATE units) costs are
also shown in the invoices' own currency.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Literal
from zoneinfo import ZoneInfo

from invoice_batch.pricing import BATCH_DISCOUNT
from invoice_batch.store.reporting import BatchLine, ClassifiedLine, DlqLine, ReportRows

ReportFormat = Literal["table", "csv", "json"]

_DURATION = re.compile(r"(\d+)\s*([mhdw])")
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86_400, "w": 604_800}


class BadWindow(ValueError):
    """``--since`` is neither a duration nor a date."""


def parse_since(raw: str, now: datetime, zone: ZoneInfo) -> datetime:
    """``24h``, ``90m``, ``7d``, ``2w`` before ``now``; a date (``2026-11-27``: its local
    midnight in ``zone``); or an ISO date-time (local in ``zone`` unless it has an offset)."""
    text = raw.strip().lower()
    match = _DURATION.fullmatch(text)
    if match:
        return now - timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    try:
        day = date.fromisoformat(text)
    except ValueError:
        pass
    else:
        return datetime.combine(day, time(0), tzinfo=zone)
    try:
        moment = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise BadWindow(
            f"--since: expected a duration like 24h, 90m, 7d or a date like 2026-11-27, got {raw!r}"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=zone)


@dataclass(frozen=True, slots=True)
class DepartmentTotal:
    department: str
    count: int
    approval_required: int
    # Amounts per currency; invoices without an amount are counted but not summed.
    amounts: dict[str, Decimal]


@dataclass(frozen=True, slots=True)
class BatchSummary:
    line: BatchLine
    latency: timedelta | None
    currency: str | None
    cost_local: Decimal | None


@dataclass(frozen=True, slots=True)
class CostSummary:
    batch_usd: Decimal
    realtime_usd: Decimal
    saved_usd: Decimal
    input_tokens: int
    output_tokens: int
    # Currency → (batch cost, real-time cost, saved) in that currency, where a rate is set.
    local: dict[str, tuple[Decimal, Decimal, Decimal]]


@dataclass(frozen=True, slots=True)
class Report:
    since: datetime
    until: datetime
    zone: ZoneInfo
    classified: list[ClassifiedLine]
    departments: list[DepartmentTotal]
    approval_queue: list[ClassifiedLine]
    dlq: list[DlqLine]
    dlq_by_reason: dict[str, int]
    retried_invoices: int
    retries: int
    awaiting_retry: int
    batches: list[BatchSummary]
    cost: CostSummary
    department: str | None = None
    notes: list[str] = field(default_factory=list)


def _realtime(batch_cost: Decimal) -> Decimal:
    return batch_cost / BATCH_DISCOUNT


def build_report(
    rows: ReportRows,
    *,
    since: datetime,
    until: datetime,
    zone: ZoneInfo,
    usd_rates: Mapping[str, Decimal],
    department: str | None = None,
) -> Report:
    """Totals of one window. With ``department`` only that department's invoices and
    approval queue are kept (a department's own e-mail); costs stay whole."""
    classified = [
        line for line in rows.classified if department is None or line.department == department
    ]
    by_department: dict[str, list[ClassifiedLine]] = {}
    for line in classified:
        by_department.setdefault(line.department, []).append(line)
    departments = []
    for name in sorted(by_department, key=lambda d: (-len(by_department[d]), d)):
        lines = by_department[name]
        amounts: dict[str, Decimal] = {}
        for line in lines:
            if line.amount is not None and line.currency:
                amounts[line.currency] = amounts.get(line.currency, Decimal(0)) + line.amount
        departments.append(
            DepartmentTotal(
                department=name,
                count=len(lines),
                approval_required=sum(1 for line in lines if line.approval_required),
                amounts=dict(sorted(amounts.items())),
            )
        )
    queue = sorted(
        (line for line in classified if line.approval_required),
        key=lambda line: (line.department, line.invoice_id),
    )
    dlq = [] if department is not None else rows.dlq

    # A batch's currency: the most common currency of the invoices it classified.
    currencies: dict[str, Counter[str]] = {}
    for line in rows.classified:
        if line.batch_id and line.currency:
            currencies.setdefault(line.batch_id, Counter())[line.currency] += 1
    batches = []
    for batch in rows.batches:
        counter = currencies.get(batch.batch_id or "")
        currency = counter.most_common(1)[0][0] if counter else None
        rate = usd_rates.get(currency) if currency else None
        latency = (
            batch.finished_at - batch.submitted_at
            if batch.finished_at and batch.submitted_at
            else None
        )
        batches.append(
            BatchSummary(
                line=batch,
                latency=latency,
                currency=currency,
                cost_local=batch.cost_usd * rate if rate is not None else None,
            )
        )
    batch_usd = sum((b.cost_usd for b in rows.batches), Decimal(0))
    realtime_usd = _realtime(batch_usd)
    seen_currencies = sorted({line.currency for line in rows.classified if line.currency})
    local = {
        code: (
            batch_usd * usd_rates[code],
            realtime_usd * usd_rates[code],
            (realtime_usd - batch_usd) * usd_rates[code],
        )
        for code in seen_currencies
        if code in usd_rates
    }
    return Report(
        since=since,
        until=until,
        zone=zone,
        classified=classified,
        departments=departments,
        approval_queue=queue,
        dlq=dlq,
        dlq_by_reason=dict(sorted(Counter(line.error_code for line in dlq).items())),
        retried_invoices=sum(1 for line in classified if line.attempts > 1),
        retries=sum(line.attempts - 1 for line in classified if line.attempts > 1),
        awaiting_retry=rows.awaiting_retry if department is None else 0,
        batches=batches,
        cost=CostSummary(
            batch_usd=batch_usd,
            realtime_usd=realtime_usd,
            saved_usd=realtime_usd - batch_usd,
            input_tokens=sum(b.input_tokens for b in rows.batches),
            output_tokens=sum(b.output_tokens for b in rows.batches),
            local=local,
        ),
        department=department,
    )


# ------------------------------------------------------------------ rendering


def money(amount: Decimal | None, currency: str | None = None) -> str:
    """``1234567.5`` → ``1,234,567.50``; with a currency, ``INR 1,234,567.50``."""
    if amount is None:
        return "?"
    shown = f"{amount.quantize(Decimal('0.01')):,}"
    return f"{currency} {shown}" if currency else shown


def usd(amount: Decimal) -> str:
    return f"${amount:.6f}" if amount < 1 else f"${amount:,.2f}"


def local_cost(amount: Decimal, currency: str) -> str:
    return f"{currency} {amount:,.4f}" if amount < 1 else f"{currency} {amount:,.2f}"


def duration(delta: timedelta | None) -> str:
    if delta is None:
        return "-"
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _local(moment: datetime, zone: ZoneInfo) -> str:
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")


def title(report: Report) -> str:
    scope = f" — {report.department}" if report.department else ""
    return (
        f"Invoice summary{scope}: {_local(report.since, report.zone)} → "
        f"{_local(report.until, report.zone)}"
    )


def headline(report: Report) -> list[str]:
    lines = [
        f"Invoices classified: {len(report.classified)}"
        f" ({len(report.approval_queue)} need approval)",
    ]
    if report.department is None:
        lines.append(
            f"DLQ: {len(report.dlq)}"
            + (
                " (" + ", ".join(f"{code} {n}" for code, n in report.dlq_by_reason.items()) + ")"
                if report.dlq_by_reason
                else ""
            )
            + f"; retried: {report.retried_invoices} invoices ({report.retries} retries),"
            f" {report.awaiting_retry} awaiting retry"
        )
        cost = report.cost
        lines.append(
            f"Cost: {usd(cost.batch_usd)} at batch prices; real-time: {usd(cost.realtime_usd)};"
            f" saved {usd(cost.saved_usd)}"
            + "".join(
                f" ({local_cost(b, code)} batch, saved {local_cost(s, code)})"
                for code, (b, _r, s) in cost.local.items()
            )
        )
        lines.append(
            f"Tokens: {cost.input_tokens:,} input, {cost.output_tokens:,} output"
            f" in {len(report.batches)} batches"
        )
    return lines


def text_sections(report: Report) -> list[tuple[str, list[str], list[list[str]]]]:
    """(heading, columns, rows) of each table, shared by the terminal, text and HTML."""
    sections: list[tuple[str, list[str], list[list[str]]]] = [
        (
            "Per department",
            ["department", "invoices", "need approval", "amount"],
            [
                [
                    d.department,
                    str(d.count),
                    str(d.approval_required),
                    "; ".join(money(a, c) for c, a in d.amounts.items()) or "-",
                ]
                for d in report.departments
            ],
        ),
        (
            "Approval queue",
            ["invoice", "department", "amount", "summary", "reasons"],
            [
                [
                    line.invoice_id,
                    line.department,
                    money(line.amount, line.currency),
                    line.summary,
                    "; ".join(line.approval_reasons),
                ]
                for line in report.approval_queue
            ],
        ),
    ]
    if report.department is None:
        sections.append(
            (
                "DLQ",
                ["invoice", "reason", "attempts", "detail"],
                [
                    [line.invoice_id, line.error_code, str(line.attempts), line.error_message]
                    for line in report.dlq
                ],
            )
        )
        sections.append(
            (
                "Batches",
                ["batch", "status", "requests", "latency", "tokens in/out", "cost"],
                [
                    [
                        b.line.batch_id or b.line.key,
                        b.line.status,
                        f"{b.line.succeeded}/{b.line.requests}"
                        + (
                            f" ({b.line.requests - b.line.succeeded} retried or DLQ)"
                            if b.line.status == "done" and b.line.succeeded < b.line.requests
                            else ""
                        ),
                        duration(b.latency),
                        f"{b.line.input_tokens:,} / {b.line.output_tokens:,}",
                        usd(b.line.cost_usd)
                        + (
                            f" ({local_cost(b.cost_local, b.currency)})"
                            if b.cost_local is not None and b.currency
                            else ""
                        ),
                    ]
                    for b in report.batches
                ],
            )
        )
    return sections


def render_text(report: Report) -> str:
    """Plain text with aligned columns: the e-mail's text part."""
    out = [title(report), "", *headline(report)]
    for heading, columns, rows in text_sections(report):
        out += ["", f"{heading} ({len(rows)})"]
        if not rows:
            out.append("  (none)")
            continue
        widths = [min(60, max(len(c), *(len(r[i]) for r in rows))) for i, c in enumerate(columns)]
        out.append(
            "  " + "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()
        )
        for row in rows:
            out.append(
                "  "
                + "  ".join(
                    (v if len(v) <= w else v[: w - 1] + "…").ljust(w)
                    for v, w in zip(row, widths, strict=True)
                ).rstrip()
            )
    return "\n".join(out) + "\n"


def render_rich(report: Report) -> Any:
    """A rich renderable for the terminal."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = [Text(title(report), style="bold"), *(Text(h) for h in headline(report))]
    for heading, columns, rows in text_sections(report):
        table = Table(title=f"{heading} ({len(rows)})", title_justify="left")
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*row)
        parts.append(table)
    return Group(*parts)


CSV_COLUMNS = [
    "invoice_id",
    "status",
    "department",
    "amount",
    "currency",
    "approval_required",
    "approval_reasons",
    "summary",
    "batch_id",
    "attempts",
    "classified_at",
    "cost_usd",
    "error_code",
]


def render_csv(report: Report) -> str:
    """One line per invoice of the window (classified, then DLQ'd), for a spreadsheet."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for line in report.classified:
        writer.writerow(
            [
                line.invoice_id,
                "classified",
                line.department,
                "" if line.amount is None else f"{line.amount}",
                line.currency or "",
                "true" if line.approval_required else "false",
                "; ".join(line.approval_reasons),
                line.summary,
                line.batch_id or "",
                line.attempts,
                line.classified_at.isoformat(),
                f"{line.cost_usd:.8f}",
                "",
            ]
        )
    for dead in report.dlq:
        writer.writerow(
            [
                dead.invoice_id,
                "dlq",
                "",
                "" if dead.amount is None else f"{dead.amount}",
                dead.currency or "",
                "",
                "",
                "",
                "",
                dead.attempts,
                "",
                "",
                dead.error_code,
            ]
        )
    return buffer.getvalue()


def _cost(value: Decimal) -> float:
    return float(round(value, 8))


def to_json_dict(report: Report) -> dict[str, Any]:
    """Invoice amounts are decimal strings (as in the events); costs are numbers."""
    cost = report.cost
    return {
        "window": {
            "since": report.since.isoformat(),
            "until": report.until.isoformat(),
            "timezone": str(report.zone),
        },
        "department": report.department,
        "invoices": {
            "classified": len(report.classified),
            "approval_required": len(report.approval_queue),
            "dlq": len(report.dlq),
            "retried": report.retried_invoices,
            "retries": report.retries,
            "awaiting_retry": report.awaiting_retry,
        },
        "departments": [
            {
                "department": d.department,
                "count": d.count,
                "approval_required": d.approval_required,
                "amounts": {code: str(amount) for code, amount in d.amounts.items()},
            }
            for d in report.departments
        ],
        "approval_queue": [
            {
                "invoice_id": line.invoice_id,
                "department": line.department,
                "amount": None if line.amount is None else str(line.amount),
                "currency": line.currency,
                "summary": line.summary,
                "reasons": list(line.approval_reasons),
                "batch_id": line.batch_id,
                "classified_at": line.classified_at.isoformat(),
            }
            for line in report.approval_queue
        ],
        "dlq": {
            "total": len(report.dlq),
            "by_reason": report.dlq_by_reason,
            "invoices": [
                {
                    "invoice_id": line.invoice_id,
                    "error_code": line.error_code,
                    "error_message": line.error_message,
                    "attempts": line.attempts,
                }
                for line in report.dlq
            ],
        },
        "batches": [
            {
                "batch_id": b.line.batch_id,
                "status": b.line.status,
                "trigger": b.line.trigger,
                "model": b.line.model,
                "requests": b.line.requests,
                "succeeded": b.line.succeeded,
                # Requests not classified in this batch: retried later or dead-lettered.
                "failed": b.line.requests - b.line.succeeded
                if b.line.status == "done"
                else b.line.errored + b.line.canceled + b.line.expired,
                "errored": b.line.errored,
                "canceled": b.line.canceled,
                "expired": b.line.expired,
                "created_at": b.line.created_at.isoformat(),
                "submitted_at": b.line.submitted_at.isoformat() if b.line.submitted_at else None,
                "finished_at": b.line.finished_at.isoformat() if b.line.finished_at else None,
                "latency_seconds": b.latency.total_seconds() if b.latency else None,
                "input_tokens": b.line.input_tokens,
                "output_tokens": b.line.output_tokens,
                "cost_usd": _cost(b.line.cost_usd),
                "currency": b.currency,
                "cost_local": None if b.cost_local is None else _cost(b.cost_local),
            }
            for b in report.batches
        ],
        "cost": {
            "batch_usd": _cost(cost.batch_usd),
            "realtime_usd": _cost(cost.realtime_usd),
            "saved_usd": _cost(cost.saved_usd),
            "input_tokens": cost.input_tokens,
            "output_tokens": cost.output_tokens,
            "local": {
                code: {"batch": _cost(b), "realtime": _cost(r), "saved": _cost(s)}
                for code, (b, r, s) in cost.local.items()
            },
        },
    }


def render_json(report: Report) -> str:
    return json.dumps(to_json_dict(report), indent=2)

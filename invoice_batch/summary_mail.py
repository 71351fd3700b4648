"""The morning summary e-mail: compose (plain text + HTML table), send over SMTP, and
send at most once a day however many collectors run and however often they restart.

The send protocol (``send_daily_summary``), per audience (``all`` for SUMMARY_TO,
``department:IT`` for each SUMMARY_TO_DEPARTMENTS address):

1. Claim the day: INSERT the (local date, audience) row as ``sending``. The primary
   key lets exactly one process win; the others see ``taken`` or ``sent`` and stop.
   A ``failed`` row is claimed again (an UPDATE guarded on ``failed``) once its
   ``next_attempt_at`` has passed, up to ``MAX_SEND_ATTEMPTS``.
2. Build the report and hand the message to the SMTP server.
3. Mark the row ``sent``; if step 2 raised, mark it ``failed`` with the error and
   ``next_attempt_at`` = now + ``RETRY_AFTER``.

What a restart does after a crash at each step:

- after 1, before 2 or during 2: the row stays ``sending``. After ``STALE_AFTER``
  it is marked ``unknown`` and not retried by itself: the server may have taken the
  message, and a second copy breaks "at most once". ``report --send --force``
  sends it by hand; ``status`` shows the row.
- after 2, before 3: the same as above (the message went out; nobody resends it).
- after 3: nothing is left to do today.
"""

from __future__ import annotations

import html
import smtplib
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from invoice_batch.report import Report, build_report, headline, render_text, text_sections, title
from invoice_batch.settings import Settings
from invoice_batch.store.reporting import OperationsStore

# Failed sends are retried this many times in a day, RETRY_AFTER apart: a mail
# server down for half an hour still gets the summary out the same morning.
MAX_SEND_ATTEMPTS = 6
RETRY_AFTER = timedelta(minutes=5)
# Longer than any SMTP conversation (SMTP_TIMEOUT per command, a handful of commands).
STALE_AFTER = timedelta(minutes=15)
SMTP_TIMEOUT_SECONDS = 30.0
DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}


@dataclass(frozen=True, slots=True)
class Audience:
    name: str
    recipients: list[str]
    department: str | None


@dataclass(frozen=True, slots=True)
class SendOutcome:
    audience: str
    recipients: list[str]
    # sent | failed (this call), already_sent | taken | wait (see claim_summary)
    result: str
    error: str | None = None


def audiences(settings: Settings) -> list[Audience]:
    found = []
    if settings.summary_recipients:
        found.append(Audience("all", settings.summary_recipients, None))
    for department, address in sorted(settings.summary_to_departments.items()):
        found.append(Audience(f"department:{department}", [address], department))
    return found


def subject_for(report: Report) -> str:
    day = report.until.astimezone(report.zone).strftime("%Y-%m-%d")
    if report.department is not None:
        count = len(report.approval_queue)
        return (
            f"{report.department} approval queue {day}: "
            f"{count} invoice{'s' if count != 1 else ''} to approve"
        )
    return (
        f"Invoice summary {day}: {len(report.classified)} classified, "
        f"{len(report.approval_queue)} need approval, {len(report.dlq)} in DLQ"
    )


def render_html(report: Report) -> str:
    """An HTML body with inline styles (mail clients drop style sheets)."""
    cell = 'style="border:1px solid #ccc;padding:4px 8px;text-align:left"'
    parts = [
        '<html><body style="font-family:sans-serif">',
        f"<h2>{html.escape(title(report))}</h2>",
        *(f"<p>{html.escape(line)}</p>" for line in headline(report)),
    ]
    for heading, columns, rows in text_sections(report):
        parts.append(f"<h3>{html.escape(heading)} ({len(rows)})</h3>")
        if not rows:
            parts.append("<p>(none)</p>")
            continue
        parts.append('<table style="border-collapse:collapse">')
        parts.append(
            "<tr>" + "".join(f"<th {cell}>{html.escape(c)}</th>" for c in columns) + "</tr>"
        )
        for row in rows:
            parts.append(
                "<tr>" + "".join(f"<td {cell}>{html.escape(v)}</td>" for v in row) + "</tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def compose(report: Report, sender: str, recipients: Sequence[str]) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = subject_for(report)
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    message.set_content(render_text(report))
    message.add_alternative(render_html(report), subtype="html")
    return message


def send_message(settings: Settings, message: EmailMessage) -> None:
    """Hand the message to SMTP_HOST. Raises OSError / smtplib.SMTPException on failure."""
    assert settings.smtp_host is not None
    port = settings.smtp_port or DEFAULT_PORTS[settings.smtp_security]
    context = ssl.create_default_context()
    smtp: smtplib.SMTP
    # The plain host name for EHLO: smtplib's default (getfqdn) can wait seconds on DNS.
    helo = socket.gethostname()
    if settings.smtp_security == "tls":
        smtp = smtplib.SMTP_SSL(
            settings.smtp_host,
            port,
            local_hostname=helo,
            timeout=SMTP_TIMEOUT_SECONDS,
            context=context,
        )
    else:
        smtp = smtplib.SMTP(
            settings.smtp_host, port, local_hostname=helo, timeout=SMTP_TIMEOUT_SECONDS
        )
    with smtp:
        if settings.smtp_security == "starttls":
            smtp.starttls(context=context)
        if settings.smtp_user:
            password = settings.smtp_password.get_secret_value() if settings.smtp_password else ""
            smtp.login(settings.smtp_user, password)
        smtp.send_message(message)


def summary_window(settings: Settings, now: datetime) -> tuple[datetime, datetime]:
    """From yesterday's SUMMARY_AT to now: each morning covers the day since the last."""
    local = now.astimezone(settings.zone)
    scheduled = datetime.combine(local.date(), settings.summary_at, tzinfo=settings.zone)
    if scheduled > local:
        scheduled -= timedelta(days=1)
    return scheduled - timedelta(days=1), now


def summary_due(settings: Settings, now: datetime) -> bool:
    """Today's SUMMARY_AT has passed (local time in BATCH_TIMEZONE)."""
    local = now.astimezone(settings.zone)
    return local.time() >= settings.summary_at


def send_daily_summary(
    settings: Settings,
    store: OperationsStore,
    now: datetime,
    owner: str,
    *,
    force: bool = False,
) -> list[SendOutcome]:
    """Steps 1–3 of the send protocol for every audience. ``force`` sends without
    claiming the day (an operator's extra copy; the day's row is left as it is)."""
    assert settings.summary_from is not None
    local_date = now.astimezone(settings.zone).strftime("%Y-%m-%d")
    store.mark_stale_sends_unknown(now - STALE_AFTER)
    since, until = summary_window(settings, now)
    rows = None
    outcomes = []
    for audience in audiences(settings):
        if not force:
            claim = store.claim_summary(
                local_date,
                audience.name,
                owner,
                audience.recipients,
                now,
                max_attempts=MAX_SEND_ATTEMPTS,
            )
            if claim != "claimed":
                result = "already_sent" if claim == "sent" else claim
                outcomes.append(SendOutcome(audience.name, audience.recipients, result))
                continue
        error = None
        try:
            if rows is None:
                rows = store.report_rows(since, until)
            report = build_report(
                rows,
                since=since,
                until=until,
                zone=settings.zone,
                usd_rates=settings.usd_rates,
                department=audience.department,
            )
            send_message(settings, compose(report, settings.summary_from, audience.recipients))
        except Exception as exc:
            # Whatever went wrong (the server, the network, reading the store), the
            # row says failed and the send is tried again after RETRY_AFTER.
            error = f"{type(exc).__name__}: {exc}"[:500]
        if not force:
            store.finish_summary(
                local_date, audience.name, owner, now, error=error, retry_after=RETRY_AFTER
            )
        outcomes.append(
            SendOutcome(
                audience.name, audience.recipients, "failed" if error else "sent", error=error
            )
        )
    return outcomes

"""The morning e-mail against a real SMTP server (aiosmtpd) started by the test: what
arrives, to whom, and that it goes out once a day however many senders try."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from invoice_batch.broker import free_port
from invoice_batch.daily import DailyTasks
from invoice_batch.settings import Settings, load_settings
from invoice_batch.store.reporting import OperationsStore
from invoice_batch.store.schema import make_engine, upgrade_schema
from invoice_batch.summary_mail import send_daily_summary
from tests.report.seed import seed_known_day

NOW = datetime(2026, 11, 28, 0, 45, tzinfo=UTC)  # 06:15 in Asia/Kolkata, after SUMMARY_AT


@dataclass
class Received:
    sender: str
    recipients: list[str]
    message: EmailMessage


@dataclass
class Inbox:
    port: int
    messages: list[Received] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)


class _Handler:
    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.inbox.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"


@pytest.fixture()
def inbox() -> Iterator[Inbox]:
    box = Inbox(port=free_port())

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        if isinstance(data, LoginPassword):
            box.logins.append((data.login.decode(), data.password.decode()))
            return AuthResult(success=data.password == b"mail-secret")
        return AuthResult(success=False)

    controller = Controller(
        _Handler(box),
        hostname="127.0.0.1",
        port=box.port,
        authenticator=authenticate,
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


def mail_settings(database_url: str, port: int, **extra: str) -> Settings:
    return load_settings(
        {
            "DATABASE_URL": database_url,
            "BATCH_TIMEZONE": "Asia/Kolkata",
            "SUMMARY_AT": "06:00",
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(port),
            "SMTP_SECURITY": "none",
            "SMTP_USER": "ap-robot",
            "SMTP_PASSWORD": "mail-secret",
            "SUMMARY_FROM": "invoice-batch@example.com",
            "SUMMARY_TO": "ap-team@example.com,cfo@example.com",
            "SUMMARY_TO_DEPARTMENTS": "IT=it-ap@example.com,Finance=fin@example.com",
            "USD_RATES": "INR=84.2",
            **extra,
        }
    )


@pytest.fixture()
def database_url(tmp_path: Path) -> str:
    """SQLite only: the ledger's behaviour on PostgreSQL is tested in test_report_and_retention."""
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture()
def ops(database_url: str) -> Iterator[OperationsStore]:
    engine = make_engine(database_url)
    upgrade_schema(engine)
    seed_known_day(engine, NOW)
    yield OperationsStore(engine)
    engine.dispose()


def parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()


def test_the_summary_arrives_with_text_and_html_and_each_department_gets_its_queue(
    inbox: Inbox, ops: OperationsStore, database_url: str
) -> None:
    settings = mail_settings(database_url, inbox.port)
    outcomes = send_daily_summary(settings, ops, NOW, "collector-a")
    assert [(o.audience, o.result) for o in outcomes] == [
        ("all", "sent"),
        ("department:Finance", "sent"),
        ("department:IT", "sent"),
    ]
    assert inbox.logins == [("ap-robot", "mail-secret")] * 3
    by_recipient = {tuple(r.recipients): r for r in inbox.messages}
    main = by_recipient[("ap-team@example.com", "cfo@example.com")]
    assert main.sender == "invoice-batch@example.com"
    assert main.message["Subject"] == (
        "Invoice summary 2026-11-28: 7 classified, 3 need approval, 1 in DLQ"
    )
    assert main.message["To"] == "ap-team@example.com, cfo@example.com"
    text, html = parts(main.message)
    assert "Invoices classified: 7 (3 need approval)" in text
    assert "INV-005" in text and "INR 850,000.00" in text
    assert "DLQ: 1 (max_attempts 1)" in text
    assert "saved $0.004000 (INR 0.3368 batch, saved INR 0.3368)" in text
    assert "<table" in html and "<td" in html and "INV-003" in html
    assert "amount INR 285000 reaches the INR 200000 threshold" in html

    it = by_recipient[("it-ap@example.com",)].message
    assert it["Subject"] == "IT approval queue 2026-11-28: 1 invoice to approve"
    it_text, it_html = parts(it)
    assert "INV-006" in it_text and "INV-003" not in it_text and "INV-006" in it_html
    fin = by_recipient[("fin@example.com",)].message
    assert fin["Subject"] == "Finance approval queue 2026-11-28: 1 invoice to approve"


def test_the_summary_goes_out_once_a_day_across_collectors_and_restarts(
    inbox: Inbox, ops: OperationsStore, database_url: str
) -> None:
    settings = mail_settings(database_url, inbox.port, SUMMARY_TO_DEPARTMENTS="")
    clock = [0.0]
    first = DailyTasks(settings, ops, "collector-a", monotonic=lambda: clock[0])
    second = DailyTasks(settings, ops, "collector-b", monotonic=lambda: clock[0])
    first(NOW - timedelta(minutes=30))  # 05:45 local: not due yet
    assert inbox.messages == []
    first(NOW)
    second(NOW)
    clock[0] += 120
    restarted = DailyTasks(settings, ops, "collector-c", monotonic=lambda: clock[0])
    restarted(NOW + timedelta(minutes=2))
    assert len(inbox.messages) == 1
    # The next morning is a new day.
    clock[0] += 120
    first(NOW + timedelta(days=1))
    assert len(inbox.messages) == 2


def test_a_failed_send_is_recorded_and_retried_until_it_goes_out(
    inbox: Inbox, ops: OperationsStore, database_url: str
) -> None:
    # The mail server is down (nothing listens on the port).
    down = mail_settings(database_url, free_port(), SUMMARY_TO_DEPARTMENTS="")
    [outcome] = send_daily_summary(down, ops, NOW, "collector-a")
    assert outcome.result == "failed" and "ConnectionRefusedError" in (outcome.error or "")
    [row] = ops.summary_sends("2026-11-28")
    assert (row.status, row.attempts) == ("failed", 1)

    right = mail_settings(database_url, inbox.port, SUMMARY_TO_DEPARTMENTS="")
    [early] = send_daily_summary(right, ops, NOW + timedelta(minutes=1), "collector-b")
    assert early.result == "wait" and inbox.messages == []
    [later] = send_daily_summary(right, ops, NOW + timedelta(minutes=6), "collector-b")
    assert later.result == "sent" and len(inbox.messages) == 1
    [row] = ops.summary_sends("2026-11-28")
    assert (row.status, row.attempts, row.owner) == ("sent", 2, "collector-b")

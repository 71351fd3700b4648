"""Fixtures for the emulator conformance suite: real emulator processes, the
official SDK pointed at them, and builders for the service's request shape."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types.messages import MessageBatch
from invoice_batch_emulator.testing import running_emulator

REPO = Path(__file__).resolve().parents[2]
SEED_INVOICES = REPO / "examples" / "seed_invoices.jsonl"
MODEL = "claude-haiku-4-5"
API_KEY = "test-key"

CLASSIFY_TOOL: dict[str, Any] = {
    "name": "classify_invoice",
    "description": "Record the department, amount and approval flag of one invoice.",
    "input_schema": {
        "type": "object",
        "properties": {
            "department": {
                "type": "string",
                "enum": [
                    "IT",
                    "HR",
                    "Admin",
                    "Marketing",
                    "Finance",
                    "Operations",
                    "Legal",
                    "Sales",
                    "Facilities",
                    "Other",
                ],
            },
            "amount": {"type": "number"},
            "currency": {"type": "string"},
            "summary": {"type": "string"},
            "needs_review": {"type": "boolean"},
            "reason": {"type": "string"},
        },
        "required": ["department", "amount", "currency", "summary", "needs_review", "reason"],
    },
}
SYSTEM_PROMPT = "You classify supplier invoices for an accounts-payable team."


HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip this folder's `slow` tests unless `-m` mentions slow (e.g. `-m slow`)."""
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow")
    for item in items:
        if item.get_closest_marker("slow") and HERE in Path(str(item.path)).parents:
            item.add_marker(skip)


def invoice_text(invoice: dict[str, str]) -> str:
    lines = [
        f"Invoice ID: {invoice['invoice_id']}",
        f"Supplier: {invoice.get('supplier', '')}",
        f"Description: {invoice.get('description', '')}",
    ]
    if invoice.get("amount"):
        lines.append(f"Amount: {invoice['amount']} {invoice.get('currency', '')}".rstrip())
    if invoice.get("raw_text"):
        lines.append(f"Text: {invoice['raw_text']}")
    if invoice.get("invoice_date"):
        lines.append(f"Invoice date: {invoice['invoice_date']}")
    return "\n".join(lines)


def invoice_params(text: str, *, system: str = SYSTEM_PROMPT, **extra: Any) -> dict[str, Any]:
    """The params the service sends for one invoice."""
    return {
        "model": MODEL,
        "max_tokens": 1024,
        "system": [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}],
        "tools": [CLASSIFY_TOOL],
        "tool_choice": {"type": "tool", "name": "classify_invoice"},
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


def simple_requests(count: int, prefix: str = "req") -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"{prefix}-{i}",
            "params": invoice_params(
                invoice_text(
                    {
                        "invoice_id": f"INV-{i}",
                        "supplier": "Acme",
                        "description": "Laptop purchase",
                        "amount": "1000",
                        "currency": "USD",
                    }
                )
            ),
        }
        for i in range(count)
    ]


def seed_invoices() -> list[dict[str, str]]:
    return [json.loads(line) for line in SEED_INVOICES.read_text().splitlines() if line.strip()]


def wait_until_ended(
    client: anthropic.Anthropic, batch_id: str, timeout: float = 30.0
) -> MessageBatch:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended":
            return batch
        if time.monotonic() > deadline:
            raise AssertionError(f"batch {batch_id} still {batch.processing_status}")
        time.sleep(0.05)


def make_client(base_url: str, **kwargs: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=base_url, api_key=API_KEY, **kwargs)


def raw_headers(version: str = "2026-10-21", **extra: str) -> dict[str, str]:
    return {"authorization": f"Bearer {API_KEY}", "anthropic-version": version, **extra}


@pytest.fixture(scope="session")
def emulator_url() -> Iterator[str]:
    """One shared emulator with fast processing, no faults."""
    with running_emulator(processing_seconds=0.15, cancel_seconds=0.3, seed=7) as url:
        yield url


@pytest.fixture
def client(emulator_url: str) -> Iterator[anthropic.Anthropic]:
    with make_client(emulator_url) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def faulty_url() -> Iterator[str]:
    """An emulator whose faults each test sets through the admin endpoint."""
    with running_emulator(processing_seconds=0.2, seed=11) as url:
        yield url


@pytest.fixture
def faulty(faulty_url: str) -> Iterator[str]:
    httpx.post(f"{faulty_url}/_emulator/reset").raise_for_status()
    yield faulty_url
    httpx.post(f"{faulty_url}/_emulator/reset").raise_for_status()


def set_faults(base_url: str, **settings: Any) -> dict[str, Any]:
    response = httpx.post(f"{base_url}/_emulator/faults", json=settings)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def request_log(base_url: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{base_url}/_emulator/requests")
    response.raise_for_status()
    return [json.loads(line) for line in response.text.splitlines()]

import json
from datetime import date
from decimal import Decimal

import pytest

from invoice_batch.batch_requests import (
    CUSTOM_ID_PATTERN,
    SYSTEM_PROMPT,
    TOOL_NAME,
    build_request,
    custom_id_for,
    request_size,
    request_size_bound,
    row_id_from,
)
from invoice_batch.invoices import Invoice

INVOICE = Invoice(
    "INV-003",
    "Taj Hotels",
    "Hotel conference offsite room",
    Decimal("285000"),
    "INR",
    date(2026, 11, 5),
    None,
)


def test_request_forces_the_classify_tool_with_a_cached_system_prompt() -> None:
    request = build_request(INVOICE, custom_id="i1-a1", model="claude-haiku-4-5", max_tokens=1024)
    params = request["params"]
    assert request["custom_id"] == "i1-a1"
    assert params["tool_choice"] == {"type": "tool", "name": TOOL_NAME}
    assert params["system"] == [
        {"type": "text", "text": SYSTEM_PROMPT, "cache_control": {"type": "ephemeral"}}
    ]
    schema = params["tools"][0]["input_schema"]
    assert set(schema["required"]) == {
        "department",
        "amount",
        "currency",
        "summary",
        "needs_review",
        "reason",
    }
    assert "temperature" not in params and "top_p" not in params
    text = params["messages"][0]["content"]
    assert "Invoice ID: INV-003" in text and "Amount: 285000 INR" in text


def test_custom_ids_match_the_api_pattern_and_round_trip() -> None:
    for row_id, attempt in [(1, 1), (10**18, 99), (123456, 3)]:
        custom_id = custom_id_for(row_id, attempt)
        assert CUSTOM_ID_PATTERN.match(custom_id)
        assert row_id_from(custom_id) == row_id
    assert row_id_from("someone-else") is None


def test_a_custom_id_outside_the_api_pattern_is_refused() -> None:
    with pytest.raises(ValueError):
        build_request(INVOICE, custom_id="has space", model="m", max_tokens=10)
    with pytest.raises(ValueError):
        build_request(INVOICE, custom_id="x" * 65, model="m", max_tokens=10)


def test_size_bound_is_at_least_the_size_of_the_real_request() -> None:
    non_ascii = Invoice(
        "INV-ü",
        "Société Générale",
        "Beratung für Steuern – Q3 ₹",
        Decimal("1.5"),
        "EUR",
        None,
        "日本語のテキスト",
    )
    for invoice in (INVOICE, non_ascii):
        real = request_size(
            build_request(
                invoice,
                custom_id=custom_id_for(987654321, 12),
                model="claude-haiku-4-5",
                max_tokens=1024,
            )
        )
        assert request_size_bound(invoice, model="claude-haiku-4-5", max_tokens=1024) >= real
        assert (
            real
            == len(
                json.dumps(
                    build_request(
                        invoice,
                        custom_id=custom_id_for(987654321, 12),
                        model="claude-haiku-4-5",
                        max_tokens=1024,
                    )
                )
            )
            + 2
        )

"""What the stand-in model answers, and the usage it reports."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest
from invoice_batch_emulator.classifier import classify_invoice, input_from_schema

from .conftest import (
    CLASSIFY_TOOL,
    invoice_params,
    invoice_text,
    seed_invoices,
    wait_until_ended,
)

ARTICLE = {
    "INV-001": ("IT", 124500, "AWS cloud infrastructure costs"),
    "INV-002": ("HR", 45000, "Job posting recruitment platform"),
    "INV-003": ("Admin", 285000, "Hotel conference offsite room"),
    "INV-004": ("Marketing", 78000, "Adobe design software license"),
    "INV-005": ("Finance", 850000, "EY consulting risk assessment"),
}


def run_batch(client: anthropic.Anthropic, params_by_id: dict[str, Any]) -> dict[str, Any]:
    batch = client.messages.batches.create(
        requests=[{"custom_id": cid, "params": p} for cid, p in params_by_id.items()]  # type: ignore[misc]
    )
    wait_until_ended(client, batch.id)
    return {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}


def test_the_five_seed_invoices_come_out_as_the_article_prints(
    client: anthropic.Anthropic,
) -> None:
    invoices = seed_invoices()
    results = run_batch(
        client,
        {
            inv["invoice_id"].replace("-", "_"): invoice_params(invoice_text(inv))
            for inv in invoices
        },
    )
    for invoice_id, (department, amount, summary) in ARTICLE.items():
        result = results[invoice_id.replace("-", "_")]
        assert result.type == "succeeded"
        tool_input = result.message.content[0].input
        assert tool_input["department"] == department
        assert tool_input["amount"] == amount
        assert tool_input["currency"] == "INR"
        assert tool_input["summary"] == summary
        assert tool_input["needs_review"] is False
        assert set(tool_input) == set(CLASSIFY_TOOL["input_schema"]["required"])


def test_the_seed_invoices_are_recognised_by_description_not_by_id() -> None:
    invoice = {
        "invoice_id": "ZZZ-9",
        "supplier": "Adobe Systems",
        "description": "Adobe design software license - Creative Cloud for the brand team",
        "amount": "78000",
        "currency": "INR",
    }
    assert classify_invoice(invoice_text(invoice))["department"] == "Marketing"


@pytest.mark.parametrize(
    ("raw_text", "amount", "currency"),
    [("Total due: Rs 12,500", 12500, "INR"), ("Please pay USD 1,200.50 by Friday", 1200.5, "USD")],
)
def test_the_amount_is_read_from_the_text_when_the_amount_line_is_missing(
    raw_text: str, amount: float, currency: str
) -> None:
    invoice = {"invoice_id": "X", "supplier": "S", "description": "Office supplies"}
    result = classify_invoice(invoice_text({**invoice, "raw_text": raw_text}))
    assert (result["amount"], result["currency"]) == (amount, currency)
    assert result["department"] == "Admin"
    assert result["needs_review"] is False


@pytest.mark.parametrize(
    ("description", "why"),
    [
        ("URGENT payroll run", "urgent"),
        ("Advance payment for the trade show stand", "advance payment"),
        ("Possible duplicate of last month's audit fee", "duplicate"),
    ],
)
def test_risky_wording_sets_needs_review_with_a_reason(description: str, why: str) -> None:
    text = invoice_text(
        {"invoice_id": "X", "supplier": "S", "description": description, "amount": "10 USD"}
    )
    result = classify_invoice(text)
    assert result["needs_review"] is True
    assert why.split()[0] in result["reason"].lower()


def test_an_invoice_without_any_amount_needs_review() -> None:
    result = classify_invoice(invoice_text({"invoice_id": "X", "description": "Misc items"}))
    assert result["needs_review"] is True
    assert result["department"] == "Other"
    assert "amount" in result["reason"]


@pytest.mark.parametrize(
    ("description", "department"),
    [
        ("New laptops for the sales floor", "IT"),
        ("Recruitment agency fee", "HR"),
        ("Google ads campaign for Diwali", "Marketing"),
        ("Statutory audit fee FY26", "Finance"),
        ("Trademark filing by our law firm", "Legal"),
        ("Office rent for November", "Facilities"),
    ],
)
def test_other_invoices_get_a_department_by_keyword(description: str, department: str) -> None:
    text = invoice_text({"invoice_id": "X", "description": description, "amount": "5 USD"})
    assert classify_invoice(text)["department"] == department


def test_the_summary_is_the_first_few_words_and_at_most_60_characters() -> None:
    description = "Extraordinarily-long-hyphenated-component-name " * 4
    summary = classify_invoice(invoice_text({"invoice_id": "X", "description": description}))
    assert len(summary["summary"]) <= 60


def test_other_tools_get_input_that_satisfies_their_schema(client: anthropic.Anthropic) -> None:
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer", "minimum": 1},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["city", "days"],
    }
    params = {
        "model": "claude-haiku-4-5",
        "max_tokens": 256,
        "tools": [{"name": "get_weather", "input_schema": schema}],
        "tool_choice": {"type": "any"},
        "messages": [{"role": "user", "content": "Weather in Pune?"}],
    }
    result = run_batch(client, {"weather": params})["weather"]
    block = result.message.content[0]
    assert block.name == "get_weather"
    assert isinstance(block.input["city"], str)
    assert block.input["days"] >= 1
    assert block.input["unit"] == "celsius"
    assert input_from_schema(schema)["tags"] == ["example tags"]


def test_a_request_without_tools_gets_a_text_answer(client: anthropic.Anthropic) -> None:
    params = {
        "model": "claude-haiku-4-5",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "Say hello"}],
    }
    message = run_batch(client, {"hello": params})["hello"].message
    assert message.content[0].type == "text"
    assert message.stop_reason == "end_turn"


def test_input_tokens_grow_with_the_prompt_and_include_the_tool_prompt(
    client: anthropic.Anthropic,
) -> None:
    short = invoice_params("Invoice ID: A\nDescription: laptop\nAmount: 5 USD")
    long = invoice_params("Invoice ID: A\nDescription: laptop\nAmount: 5 USD\n" + "x" * 4000)
    results = run_batch(client, {"short": short, "long": long})
    short_usage = results["short"].message.usage
    long_usage = results["long"].message.usage
    assert short_usage.input_tokens > 588
    assert long_usage.input_tokens - short_usage.input_tokens == pytest.approx(1000, abs=2)


def test_a_short_cached_system_prompt_is_silently_not_cached(client: anthropic.Anthropic) -> None:
    requests = {f"r{i}": invoice_params(f"Invoice ID: {i}\nDescription: laptop") for i in range(3)}
    for result in run_batch(client, requests).values():
        usage = result.message.usage
        assert usage.cache_creation_input_tokens == 0
        assert usage.cache_read_input_tokens == 0


def test_a_long_cached_system_prompt_is_written_once_then_read(
    client: anthropic.Anthropic,
) -> None:
    system = "Classify invoices carefully. " * 700  # ~20,300 characters, ~5,075 tokens
    requests = {
        f"r{i}": invoice_params(f"Invoice ID: {i}\nDescription: laptop", system=system)
        for i in range(4)
    }
    usages = [result.message.usage for result in run_batch(client, requests).values()]
    prefix = max(u.cache_creation_input_tokens or 0 for u in usages)
    assert prefix > 4096
    written = [u for u in usages if u.cache_creation_input_tokens]
    read = [u for u in usages if u.cache_read_input_tokens]
    assert len(written) == 1 and len(read) == 3
    assert all(u.cache_read_input_tokens == prefix for u in read)
    assert all(u.cache_creation_input_tokens == 0 for u in read)
    assert written[0].cache_creation is not None
    assert written[0].cache_creation.ephemeral_5m_input_tokens == prefix

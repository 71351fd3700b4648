"""Per-request params are checked after the batch is accepted: a bad request
becomes an `errored` result, the rest of the batch goes on."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import pytest

from .conftest import invoice_params, raw_headers, wait_until_ended

GOOD_TEXT = "Invoice ID: A-1\nSupplier: Dell\nDescription: Laptop for new hire\nAmount: 900 USD"


def errored_message(client: anthropic.Anthropic, params: dict[str, Any]) -> str:
    batch = client.messages.batches.create(
        requests=[
            {"custom_id": "bad", "params": params},  # type: ignore[typeddict-item]
            {"custom_id": "good", "params": invoice_params(GOOD_TEXT)},  # type: ignore[typeddict-item]
        ]
    )
    ended = wait_until_ended(client, batch.id)
    assert ended.request_counts.errored == 1
    assert ended.request_counts.succeeded == 1
    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert results["good"].type == "succeeded"
    bad = results["bad"]
    assert bad.type == "errored"
    assert bad.error.type == "error"
    assert bad.error.error.type == "invalid_request_error"
    return bad.error.error.message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"model": "claude-nonexistent-9"}, "model:"),
        ({"max_tokens": 0}, "max_tokens:"),
        ({"max_tokens": "ten"}, "max_tokens:"),
        ({"messages": []}, "messages:"),
        ({"messages": "hello"}, "messages:"),
        ({"tool_choice": {"type": "tool", "name": "not_a_tool"}}, "tool_choice"),
        ({"tools": [{"name": "x", "input_schema": {"type": "string"}}]}, "tools.0"),
        ({"temperature": 0.2}, "temperature:"),
        ({"top_p": 0.9}, "top_p:"),
        ({"top_k": 5}, "top_k:"),
    ],
)
def test_an_invalid_request_errors_alone_without_failing_the_create(
    client: anthropic.Anthropic, change: dict[str, Any], expected: str
) -> None:
    params = {**invoice_params(GOOD_TEXT), **change}
    assert errored_message(client, params).startswith(expected)


def test_missing_required_params_error_the_request(client: anthropic.Anthropic) -> None:
    params = invoice_params(GOOD_TEXT)
    del params["max_tokens"]
    assert errored_message(client, params) == "max_tokens: Field required"


def test_sampling_params_are_accepted_under_the_2023_api_version(emulator_url: str) -> None:
    params = {**invoice_params(GOOD_TEXT), "temperature": 0.2}
    response = httpx.post(
        f"{emulator_url}/v1/messages/batches",
        headers=raw_headers("2023-06-01"),
        json={"requests": [{"custom_id": "old-sdk", "params": params}]},
    )
    assert response.status_code == 200
    with anthropic.Anthropic(base_url=emulator_url, api_key="k") as client:
        ended = wait_until_ended(client, response.json()["id"])
    assert ended.request_counts.succeeded == 1

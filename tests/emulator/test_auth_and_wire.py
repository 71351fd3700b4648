"""Headers both SDK generations send, the error envelope, and request ids."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import httpx
import pytest
from invoice_batch_emulator.testing import running_emulator

from .conftest import API_KEY, make_client, simple_requests

BATCHES = "/v1/messages/batches"


@pytest.fixture(scope="module")
def keyed_url() -> Iterator[str]:
    """An emulator that accepts only the key 'right-key'."""
    with running_emulator(api_key="right-key", processing_seconds=0.2) as url:
        yield url


def test_sdk_2x_sends_a_bearer_token_and_the_2026_version(emulator_url: str) -> None:
    seen: list[httpx.Request] = []
    client = make_client(emulator_url)
    client._client.event_hooks["request"].append(seen.append)
    client.messages.batches.list(limit=1)
    assert seen[0].headers["authorization"] == f"Bearer {API_KEY}"
    assert seen[0].headers["anthropic-version"] == "2026-10-21"


def test_the_x_api_key_style_of_older_sdks_is_accepted(emulator_url: str) -> None:
    response = httpx.get(
        f"{emulator_url}{BATCHES}",
        headers={"x-api-key": API_KEY, "anthropic-version": "2023-06-01"},
    )
    assert response.status_code == 200
    assert set(response.json()) == {"data", "has_more", "first_id", "last_id"}


def test_a_configured_key_accepts_either_style(keyed_url: str) -> None:
    with anthropic.Anthropic(base_url=keyed_url, api_key="right-key") as client:
        client.messages.batches.list(limit=1)
    response = httpx.get(
        f"{keyed_url}{BATCHES}",
        headers={"x-api-key": "right-key", "anthropic-version": "2023-06-01"},
    )
    assert response.status_code == 200


def test_a_wrong_key_is_401_authentication_error(keyed_url: str) -> None:
    with (
        anthropic.Anthropic(base_url=keyed_url, api_key="wrong-key") as client,
        pytest.raises(anthropic.AuthenticationError) as caught,
    ):
        client.messages.batches.list()
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "authentication_error"
    assert "wrong-key" not in str(caught.value.body)


def test_a_missing_key_is_401_authentication_error(emulator_url: str) -> None:
    response = httpx.get(f"{emulator_url}{BATCHES}", headers={"anthropic-version": "2023-06-01"})
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_a_missing_anthropic_version_is_400(emulator_url: str) -> None:
    response = httpx.get(f"{emulator_url}{BATCHES}", headers={"x-api-key": API_KEY})
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == {
        "type": "invalid_request_error",
        "message": "anthropic-version: header is required",
    }


def test_every_error_has_the_envelope_and_a_matching_request_id_header(
    emulator_url: str,
) -> None:
    response = httpx.get(f"{emulator_url}{BATCHES}/msgbatch_01nothere", headers={})
    body = response.json()
    assert set(body) == {"type", "error", "request_id"}
    assert body["type"] == "error"
    assert set(body["error"]) == {"type", "message"}
    assert body["request_id"] == response.headers["request-id"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", BATCHES),
        ("GET", f"{BATCHES}/msgbatch_01nothere"),
        ("POST", BATCHES),
        ("GET", "/v1/unknown"),
        ("GET", "/_emulator/faults"),
    ],
)
def test_every_response_carries_a_request_id_header(
    emulator_url: str, method: str, path: str
) -> None:
    response = httpx.request(
        method,
        f"{emulator_url}{path}",
        headers={"x-api-key": API_KEY, "anthropic-version": "2023-06-01"},
        json={"requests": simple_requests(1)} if method == "POST" else None,
    )
    assert response.headers["request-id"].startswith("req_")

"""The synchronous rules of POST /v1/messages/batches: a broken create is a 400
naming the offending request, and nothing is stored."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from .conftest import (
    invoice_params,
    raw_headers,
    request_log,
    simple_requests,
    wait_until_ended,
)


def create_error(client: anthropic.Anthropic, requests: Any) -> dict[str, Any]:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.batches.create(requests=requests)
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert body["request_id"].startswith("req_")
    return body["error"]


def test_a_custom_id_longer_than_64_characters_is_rejected_with_its_index(
    client: anthropic.Anthropic,
) -> None:
    requests = simple_requests(4)
    requests[3]["custom_id"] = "x" * 65
    error = create_error(client, requests)
    assert error["message"] == "requests.3.custom_id: String should have at most 64 characters"


def test_a_custom_id_of_exactly_64_allowed_characters_is_accepted(
    client: anthropic.Anthropic,
) -> None:
    requests = simple_requests(1)
    requests[0]["custom_id"] = "aZ09_-" * 10 + "abcd"
    assert len(requests[0]["custom_id"]) == 64
    assert client.messages.batches.create(requests=requests).request_counts.processing == 1


@pytest.mark.parametrize(
    ("custom_id", "message"),
    [
        ("", "String should have at least 1 character"),
        ("has space", "String should match pattern"),
        ("dot.ted", "String should match pattern"),
        ("ümlaut", "String should match pattern"),
    ],
)
def test_custom_ids_outside_the_allowed_pattern_are_rejected(
    client: anthropic.Anthropic, custom_id: str, message: str
) -> None:
    requests = simple_requests(2)
    requests[1]["custom_id"] = custom_id
    error = create_error(client, requests)
    assert error["message"].startswith(f"requests.1.custom_id: {message}")


def test_a_custom_id_repeated_in_one_batch_is_rejected_at_the_repeat(
    client: anthropic.Anthropic,
) -> None:
    requests = simple_requests(3)
    requests[2]["custom_id"] = requests[0]["custom_id"]
    error = create_error(client, requests)
    assert error["message"].startswith("requests.2.custom_id: Duplicate custom_id")


def test_the_same_custom_id_in_two_batches_is_fine(client: anthropic.Anthropic) -> None:
    client.messages.batches.create(requests=simple_requests(1, prefix="same"))
    client.messages.batches.create(requests=simple_requests(1, prefix="same"))


def test_params_that_are_not_an_object_are_rejected(client: anthropic.Anthropic) -> None:
    requests: list[Any] = simple_requests(2)
    requests[1]["params"] = ["not", "an", "object"]
    error = create_error(client, requests)
    assert error["message"] == "requests.1.params: Input should be a valid dictionary"


def test_a_request_without_params_is_rejected(client: anthropic.Anthropic) -> None:
    error = create_error(client, [{"custom_id": "a"}])
    assert error["message"] == "requests.0.params: Field required"


def test_an_empty_request_list_is_rejected(client: anthropic.Anthropic) -> None:
    error = create_error(client, [])
    assert error["message"].startswith("requests: List should have at least 1 item")


def test_more_than_100000_requests_are_rejected(client: anthropic.Anthropic) -> None:
    requests = [{"custom_id": f"r{i}", "params": {}} for i in range(100_001)]
    error = create_error(client, requests)
    assert error["message"] == (
        "requests: List should have at most 100000 items after validation, not 100001"
    )


def test_a_body_without_requests_or_with_extra_keys_is_rejected(emulator_url: str) -> None:
    url = f"{emulator_url}/v1/messages/batches"
    missing = httpx.post(url, headers=raw_headers(), json={})
    assert missing.status_code == 400
    assert missing.json()["error"]["message"] == "requests: Field required"
    extra = httpx.post(url, headers=raw_headers(), json={"requests": [], "x": 1})
    assert extra.status_code == 400
    assert extra.json()["error"]["type"] == "invalid_request_error"


def test_malformed_json_is_a_400(emulator_url: str) -> None:
    response = httpx.post(
        f"{emulator_url}/v1/messages/batches",
        headers={**raw_headers(), "content-type": "application/json"},
        content=b'{"requests": [{"custom_id": "a", "params": {}}',
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_a_rejected_create_stores_nothing(client: anthropic.Anthropic, emulator_url: str) -> None:
    requests = simple_requests(3, prefix="rejected-create")
    requests[2]["custom_id"] = "bad id"
    create_error(client, requests)
    logged = {entry["custom_id"] for entry in request_log(emulator_url)}
    assert not any(cid.startswith("rejected-create") for cid in logged)


LIMIT = 256 * 1024 * 1024


def _body_of_requests(total: int) -> Iterator[bytes]:
    """A valid-looking JSON body of about `total` bytes made of 4 KB requests
    (so it stays under 100,000 requests), produced in ~1 MB pieces."""
    pad = b"x" * 4000
    head, tail = b'{"requests":[', b"]}"
    yield head
    sent = len(head) + len(tail)
    index = 0
    pieces: list[bytes] = []
    while sent < total:
        item = (b"," if index else b"") + (
            b'{"custom_id":"r%d","params":{"model":"claude-haiku-4-5","max_tokens":8,'
            b'"messages":[{"role":"user","content":"%s"}]}}' % (index, pad)
        )
        pieces.append(item)
        sent += len(item)
        index += 1
        if len(pieces) == 256:
            yield b"".join(pieces)
            pieces.clear()
    yield b"".join(pieces) + tail


def _exactly(total: int) -> Iterator[bytes]:
    piece = b" " * (1 << 20)
    while total > 0:
        chunk = piece[: min(total, len(piece))]
        total -= len(chunk)
        yield chunk


def test_a_streamed_body_declared_over_256_mb_is_413_request_too_large(
    emulator_url: str,
) -> None:
    size = LIMIT + 1
    response = httpx.post(
        f"{emulator_url}/v1/messages/batches",
        headers={**raw_headers(), "content-length": str(size)},
        content=_exactly(size),
        timeout=120,
    )
    assert response.status_code == 413
    body = response.json()
    assert body["error"]["type"] == "request_too_large"
    assert set(body) == {"error"}  # the edge's bare shape, see BATCH_API_FACTS.md
    assert response.headers["request-id"].startswith("req_")


@pytest.mark.slow
def test_a_chunked_body_growing_past_256_mb_is_cut_off_with_413(emulator_url: str) -> None:
    response = httpx.post(
        f"{emulator_url}/v1/messages/batches",
        headers=raw_headers(),
        content=_body_of_requests(LIMIT + (1 << 20)),
        timeout=300,
    )
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"


def test_one_request_params_are_not_checked_at_create_time(client: anthropic.Anthropic) -> None:
    bad = {"custom_id": "bad", "params": {"model": "no-such-model"}}
    good = {"custom_id": "good", "params": invoice_params("Invoice ID: A\nDescription: laptop")}
    batch = client.messages.batches.create(requests=[bad, good])  # type: ignore[list-item]
    assert batch.request_counts.processing == 2


def _post(emulator_url: str, body: bytes) -> httpx.Response:
    return httpx.post(
        f"{emulator_url}/v1/messages/batches",
        headers={**raw_headers(), "content-type": "application/json"},
        content=body,
    )


@pytest.mark.parametrize(
    "body",
    [
        b'{"requests": [{"custom_id": "a", "params": {}},]}',
        b'{"requests": [{"custom_id": "a", "params": {}} {"custom_id": "b", "params": {}}]}',
        b'{"requests": [{"custom_id": "a", "params": {"x": NaN}}]}',
        b'{"requests": [{"custom_id": "a", "params": {"x": "\xff"}}]}',
        b'{"requests": [{"custom_id": "a", "params": {}}]}trailing',
        b'{"requests": [{"custom_id": "a", "params": {"x": [1, 2}}]}',
    ],
)
def test_a_body_that_is_not_strict_json_is_a_400(emulator_url: str, body: bytes) -> None:
    response = _post(emulator_url, body)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert response.json()["error"]["message"].startswith("Request body is not valid JSON")


def test_other_top_level_keys_beside_requests_are_rejected(emulator_url: str) -> None:
    response = _post(emulator_url, b'{"requests": [{"custom_id": "a", "params": {}}], "x": 1}')
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "x: Extra inputs are not permitted"


def test_requests_in_any_key_order_and_spacing_are_taken(emulator_url: str) -> None:
    params = json.dumps(invoice_params("Invoice ID: A\nDescription: laptop")).encode()
    body = (
        b'\n{ "requests" :\n[ {"params": ' + params + b', "custom_id": "first"},\r\n'
        b'{\t"custom_id"\t:\t"second" ,"params":' + params + b" }\n]\n}\n"
    )
    response = _post(emulator_url, body)
    assert response.status_code == 200, response.text
    assert response.json()["request_counts"]["processing"] == 2
    logged = [
        e["custom_id"] for e in request_log(emulator_url) if e["batch_id"] == response.json()["id"]
    ]
    assert logged == ["first", "second"]


def test_a_body_arriving_in_tiny_pieces_is_parsed_whole(
    client: anthropic.Anthropic, emulator_url: str
) -> None:
    requests = simple_requests(3, prefix="pieces")
    requests[1]["params"]["messages"][0]["content"] = 'Déjà vu: €5, 😀 \\ " \u2028 done'
    body = json.dumps({"requests": requests}, ensure_ascii=False).encode()
    response = httpx.post(
        f"{emulator_url}/v1/messages/batches",
        headers={**raw_headers(), "content-type": "application/json"},
        content=(body[i : i + 3] for i in range(0, len(body), 3)),
    )
    assert response.status_code == 200, response.text
    batch = wait_until_ended(client, response.json()["id"])
    assert batch.request_counts.succeeded == 3
    results = {r.custom_id: r.result.type for r in client.messages.batches.results(batch.id)}
    assert results == {r["custom_id"]: "succeeded" for r in requests}

"""A batch's life through the official SDK: create, progress, results, cancel, delete."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import timedelta

import anthropic
import httpx
import pytest
from invoice_batch_emulator.testing import running_emulator

from .conftest import make_client, raw_headers, simple_requests, wait_until_ended

BATCH_KEYS = {
    "id",
    "type",
    "processing_status",
    "request_counts",
    "created_at",
    "expires_at",
    "ended_at",
    "cancel_initiated_at",
    "archived_at",
    "results_url",
}
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


@pytest.fixture(scope="module")
def stalled_url() -> Iterator[str]:
    """Batches here take a minute, so they stay unended for the whole test."""
    with running_emulator(processing_seconds=60, cancel_seconds=0.3) as url:
        yield url


def test_a_created_batch_has_all_ten_keys_and_starts_in_progress(emulator_url: str) -> None:
    response = httpx.post(
        f"{emulator_url}/v1/messages/batches",
        headers=raw_headers(),
        json={"requests": simple_requests(2)},
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == BATCH_KEYS
    assert body["type"] == "message_batch"
    assert body["processing_status"] == "in_progress"
    assert re.fullmatch(r"msgbatch_[A-Za-z0-9]{24}", body["id"])
    assert body["results_url"] is None
    assert body["request_counts"] == {
        "processing": 2,
        "succeeded": 0,
        "errored": 0,
        "canceled": 0,
        "expired": 0,
    }
    for key in ("created_at", "expires_at"):
        assert TIMESTAMP.match(body[key])
    assert body["ended_at"] is None and body["cancel_initiated_at"] is None


def test_expiry_is_twenty_four_hours_after_creation(client: anthropic.Anthropic) -> None:
    batch = client.messages.batches.create(requests=simple_requests(1))
    assert batch.expires_at - batch.created_at == timedelta(hours=24)


def test_request_counts_show_mixed_progress_before_the_batch_ends() -> None:
    with running_emulator(processing_seconds=1.0) as url, make_client(url) as client:
        batch = client.messages.batches.create(requests=simple_requests(10))
        seen_mixed = False
        while batch.processing_status != "ended":
            counts = batch.request_counts
            total = (
                counts.processing
                + counts.succeeded
                + counts.errored
                + counts.canceled
                + counts.expired
            )
            assert total == 10
            if batch.processing_status == "in_progress" and 0 < counts.succeeded < 10:
                seen_mixed = True
            time.sleep(0.05)
            batch = client.messages.batches.retrieve(batch.id)
        assert seen_mixed
        assert batch.request_counts.succeeded == 10
        assert batch.ended_at is not None
        assert batch.results_url is not None


def test_results_url_points_at_the_emulator_itself_once_ended(
    client: anthropic.Anthropic, emulator_url: str
) -> None:
    batch = client.messages.batches.create(requests=simple_requests(2))
    ended = wait_until_ended(client, batch.id)
    assert ended.results_url == f"{emulator_url}/v1/messages/batches/{batch.id}/results"


def test_results_are_jsonl_with_one_lf_terminated_line_per_request(
    client: anthropic.Anthropic, emulator_url: str
) -> None:
    batch = client.messages.batches.create(requests=simple_requests(25))
    wait_until_ended(client, batch.id)
    response = httpx.get(
        f"{emulator_url}/v1/messages/batches/{batch.id}/results", headers=raw_headers()
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-jsonl"
    assert response.headers["request-id"].startswith("req_")
    body = response.content
    assert b"\r" not in body
    assert body.endswith(b"\n")
    lines = body.split(b"\n")[:-1]
    assert len(lines) == 25
    assert all(lines)


def test_the_sdk_parses_every_succeeded_result_into_a_full_message(
    client: anthropic.Anthropic,
) -> None:
    batch = client.messages.batches.create(requests=simple_requests(3))
    wait_until_ended(client, batch.id)
    results = list(client.messages.batches.results(batch.id))
    assert sorted(r.custom_id for r in results) == ["req-0", "req-1", "req-2"]
    for entry in results:
        assert entry.result.type == "succeeded"
        message = entry.result.message
        assert message.id.startswith("msg_")
        assert message.type == "message"
        assert message.role == "assistant"
        assert message.model.startswith("claude-haiku-4-5")
        assert message.stop_reason == "tool_use"
        assert message.stop_sequence is None
        (block,) = message.content
        assert block.type == "tool_use"
        assert block.id.startswith("toolu_")
        assert block.name == "classify_invoice"
        assert block.input["department"] == "IT"
        usage = message.usage
        assert usage.service_tier == "batch"
        assert usage.input_tokens > 588
        assert usage.output_tokens > 0
        assert usage.cache_creation_input_tokens == 0
        assert usage.cache_read_input_tokens == 0


def test_the_sdk_refuses_results_before_the_batch_ends_and_the_endpoint_answers_400(
    stalled_url: str,
) -> None:
    url = stalled_url
    with make_client(url) as client:
        batch = client.messages.batches.create(requests=simple_requests(2))
        with pytest.raises(anthropic.AnthropicError, match="results_url"):
            client.messages.batches.results(batch.id)
        response = httpx.get(f"{url}/v1/messages/batches/{batch.id}/results", headers=raw_headers())
        assert response.status_code == 400
        assert response.json()["error"]["type"] == "invalid_request_error"


def test_cancel_moves_a_batch_through_canceling_to_ended_with_canceled_requests(
    stalled_url: str,
) -> None:
    with make_client(stalled_url) as client:
        batch = client.messages.batches.create(requests=simple_requests(5))
        canceling = client.messages.batches.cancel(batch.id)
        assert canceling.processing_status == "canceling"
        assert canceling.cancel_initiated_at is not None
        ended = wait_until_ended(client, batch.id)
        assert ended.request_counts.canceled == 5
        assert ended.request_counts.processing == 0
        results = list(client.messages.batches.results(batch.id))
        assert {r.result.type for r in results} == {"canceled"}
        assert len(results) == 5


def test_requests_done_before_a_cancel_keep_their_results() -> None:
    with (
        running_emulator(processing_seconds=1.0, cancel_seconds=0.2) as url,
        make_client(url) as client,
    ):
        batch = client.messages.batches.create(requests=simple_requests(10))
        while client.messages.batches.retrieve(batch.id).request_counts.succeeded < 3:
            time.sleep(0.05)
        client.messages.batches.cancel(batch.id)
        ended = wait_until_ended(client, batch.id)
        counts = ended.request_counts
        assert counts.succeeded >= 3 and counts.canceled >= 1
        assert counts.succeeded + counts.canceled == 10
        types = [r.result.type for r in client.messages.batches.results(batch.id)]
        assert types.count("succeeded") == counts.succeeded
        assert types.count("canceled") == counts.canceled


def test_canceling_an_ended_batch_returns_it_unchanged(client: anthropic.Anthropic) -> None:
    batch = client.messages.batches.create(requests=simple_requests(1))
    ended = wait_until_ended(client, batch.id)
    again = client.messages.batches.cancel(batch.id)
    assert again.processing_status == "ended"
    assert again.cancel_initiated_at is None
    assert again.request_counts == ended.request_counts


def test_deleting_an_unended_batch_is_a_400_and_not_retried(stalled_url: str) -> None:
    with make_client(stalled_url) as client:
        batch = client.messages.batches.create(requests=simple_requests(1))
        started = time.monotonic()
        with pytest.raises(anthropic.BadRequestError) as caught:
            client.messages.batches.delete(batch.id)
        assert time.monotonic() - started < 0.4  # no retry back-off happened
        assert caught.value.status_code == 400
        assert isinstance(caught.value.body, dict)
        assert caught.value.body["error"]["type"] == "invalid_request_error"


def test_deleting_an_ended_batch_removes_it(client: anthropic.Anthropic) -> None:
    batch = client.messages.batches.create(requests=simple_requests(1))
    wait_until_ended(client, batch.id)
    deleted = client.messages.batches.delete(batch.id)
    assert deleted.id == batch.id
    assert deleted.type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(batch.id)
    assert batch.id not in {b.id for b in client.messages.batches.list(limit=1000).data}


@pytest.mark.parametrize("operation", ["retrieve", "cancel", "delete", "results"])
def test_unknown_batch_ids_are_404_not_found_error(
    client: anthropic.Anthropic, operation: str
) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        getattr(client.messages.batches, operation)("msgbatch_01doesnotexist000000000000")
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "not_found_error"
    assert caught.value.body["request_id"].startswith("req_")


def test_a_batch_not_finished_by_expires_at_ends_with_the_rest_expired() -> None:
    # time_scale 86400 / 0.8: the 24 h window lasts 0.8 real seconds,
    # while processing 10 requests takes 2 s.
    with (
        running_emulator(processing_seconds=2.0, time_scale=86400 / 0.8) as url,
        make_client(url) as client,
    ):
        batch = client.messages.batches.create(requests=simple_requests(10))
        assert (batch.expires_at - batch.created_at).total_seconds() == pytest.approx(0.8)
        ended = wait_until_ended(client, batch.id, timeout=10)
        counts = ended.request_counts
        assert counts.expired > 0 and counts.succeeded > 0
        assert counts.succeeded + counts.expired == 10
        types = [r.result.type for r in client.messages.batches.results(batch.id)]
        assert types.count("expired") == counts.expired

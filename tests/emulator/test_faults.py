"""Fault injection as the SDK experiences it: retries, lost creates, bad outcomes."""

from __future__ import annotations

import time
from collections import Counter

import anthropic
import httpx
import pytest
from invoice_batch_emulator.testing import running_emulator

from .conftest import (
    make_client,
    request_log,
    set_faults,
    simple_requests,
    wait_until_ended,
)


def test_a_429_with_retry_after_makes_the_sdk_wait_that_long_then_succeed(faulty: str) -> None:
    set_faults(faulty, http=["list:rate_limit:count=1,retry_after=1"])
    with make_client(faulty) as client:
        started = time.monotonic()
        client.messages.batches.list()
        waited = time.monotonic() - started
    assert 1.0 <= waited < 2.5


def test_the_429_carries_retry_after_and_a_rate_limit_error(faulty: str) -> None:
    set_faults(faulty, http=["list:rate_limit:count=1,retry_after=3"])
    with (
        make_client(faulty, max_retries=0) as client,
        pytest.raises(anthropic.RateLimitError) as caught,
    ):
        client.messages.batches.list()
    assert caught.value.response.headers["retry-after"] == "3"
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "rate_limit_error"


def test_two_529s_are_retried_and_the_third_call_succeeds(faulty: str) -> None:
    set_faults(faulty, http=["retrieve:overloaded:count=2"])
    with make_client(faulty) as client:
        batch = client.messages.batches.create(requests=simple_requests(1))
        assert client.messages.batches.retrieve(batch.id).id == batch.id


def test_three_failures_exhaust_the_default_two_retries(faulty: str) -> None:
    set_faults(faulty, http=["list:overloaded:count=3"])
    with make_client(faulty) as client, pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.batches.list()
    assert caught.value.status_code == 529
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "overloaded_error"
    with make_client(faulty) as client:
        client.messages.batches.list()  # the fourth call is clean again


def test_a_500_is_an_api_error_the_sdk_retries(faulty: str) -> None:
    set_faults(faulty, http=["list:api_error:count=1"])
    with (
        make_client(faulty, max_retries=0) as client,
        pytest.raises(anthropic.InternalServerError) as caught,
    ):
        client.messages.batches.list()
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "api_error"


def test_a_dropped_connection_is_a_connection_error_for_the_sdk(faulty: str) -> None:
    set_faults(faulty, http=["retrieve:drop:count=1"])
    with make_client(faulty) as client:
        batch = client.messages.batches.create(requests=simple_requests(1))
    with make_client(faulty, max_retries=0) as client:
        set_faults(faulty, http=["retrieve:drop:count=1"])
        with pytest.raises(anthropic.APIConnectionError):
            client.messages.batches.retrieve(batch.id)
        assert client.messages.batches.retrieve(batch.id).id == batch.id


def test_a_slow_response_arrives_after_the_delay(faulty: str) -> None:
    set_faults(faulty, http=["list:slow:count=1,delay=0.7"])
    with make_client(faulty) as client:
        started = time.monotonic()
        client.messages.batches.list()
        assert time.monotonic() - started >= 0.7


def test_a_slow_response_beyond_the_client_timeout_is_a_timeout(faulty: str) -> None:
    set_faults(faulty, http=["list:slow:count=1,delay=1.5"])
    with (
        make_client(faulty, max_retries=0, timeout=0.5) as client,
        pytest.raises(anthropic.APITimeoutError),
    ):
        client.messages.batches.list()


def test_a_lost_create_still_stores_the_batch_and_logs_its_requests(faulty: str) -> None:
    set_faults(faulty, http=["create:lost_create:count=1"])
    requests = simple_requests(3, prefix="lost")
    with make_client(faulty, max_retries=0) as client:
        with pytest.raises(anthropic.APIConnectionError):
            client.messages.batches.create(requests=requests)
        logged = [e for e in request_log(faulty) if e["custom_id"].startswith("lost-")]
        assert sorted(e["custom_id"] for e in logged) == ["lost-0", "lost-1", "lost-2"]
        batch_id = logged[0]["batch_id"]
        assert client.messages.batches.retrieve(batch_id).request_counts.processing >= 0
        assert {"batch_id", "custom_id", "created_at", "create_seq"} <= set(logged[0])


def test_an_sdk_retry_after_a_lost_create_submits_the_requests_twice(faulty: str) -> None:
    set_faults(faulty, http=["create:lost_create:count=1,lost_as=api_error"])
    with make_client(faulty) as client:
        batch = client.messages.batches.create(requests=simple_requests(2, prefix="twice"))
    logged = [e for e in request_log(faulty) if e["custom_id"].startswith("twice-")]
    per_id = Counter(e["custom_id"] for e in logged)
    assert per_id == {"twice-0": 2, "twice-1": 2}
    batches = {e["batch_id"] for e in logged}
    assert len(batches) == 2 and batch.id in batches
    assert len({e["create_seq"] for e in logged}) == 2


def test_fault_settings_can_be_read_set_and_reset_at_runtime(faulty: str) -> None:
    set_faults(faulty, errored_api_rate=0.25, http=["results:drop:p=0.5"])
    current = httpx.get(f"{faulty}/_emulator/faults").json()
    assert current["errored_api_rate"] == 0.25
    assert current["http"][0]["endpoint"] == "results"
    assert current["http"][0]["probability"] == 0.5
    httpx.post(f"{faulty}/_emulator/reset").raise_for_status()
    cleared = httpx.get(f"{faulty}/_emulator/faults").json()
    assert cleared["http"] == [] and cleared["errored_api_rate"] == 0.0


def test_invalid_fault_settings_are_refused(faulty: str) -> None:
    response = httpx.post(f"{faulty}/_emulator/faults", json={"errored_api_rate": 2})
    assert response.status_code == 400
    response = httpx.post(f"{faulty}/_emulator/faults", json={"http": ["nowhere:drop"]})
    assert response.status_code == 400


def test_errored_rates_mix_both_error_kinds_into_the_results(faulty: str) -> None:
    set_faults(faulty, errored_invalid_rate=0.2, errored_api_rate=0.2)
    with make_client(faulty) as client:
        batch = client.messages.batches.create(requests=simple_requests(200))
        ended = wait_until_ended(client, batch.id)
        kinds = Counter(
            r.result.error.error.type if r.result.type == "errored" else r.result.type
            for r in client.messages.batches.results(batch.id)
        )
    assert ended.request_counts.errored == kinds["invalid_request_error"] + kinds["api_error"]
    assert 20 <= kinds["invalid_request_error"] <= 60
    assert 20 <= kinds["api_error"] <= 60
    assert kinds["succeeded"] == ended.request_counts.succeeded


def test_missing_and_duplicated_result_lines_are_injected(faulty: str) -> None:
    set_faults(faulty, missing_result_rate=0.1, duplicate_result_rate=0.1)
    with make_client(faulty) as client:
        batch = client.messages.batches.create(requests=simple_requests(200))
        ended = wait_until_ended(client, batch.id)
        per_id = Counter(r.custom_id for r in client.messages.batches.results(batch.id))
    assert ended.request_counts.succeeded == 200
    missing = 200 - len(per_id)
    duplicated = sum(1 for n in per_id.values() if n == 2)
    assert 5 <= missing <= 40 and 5 <= duplicated <= 40


def test_bad_tool_input_breaks_the_schema_in_both_ways(faulty: str) -> None:
    set_faults(faulty, bad_tool_input_rate=1.0)
    with make_client(faulty) as client:
        batch = client.messages.batches.create(requests=simple_requests(40))
        wait_until_ended(client, batch.id)
        inputs = [
            r.result.message.content[0].input for r in client.messages.batches.results(batch.id)
        ]
    assert any("department" not in i for i in inputs)
    assert any(i.get("amount") == "abc" for i in inputs)


def test_an_expiring_batch_stalls_part_way_and_ends_with_the_rest_expired() -> None:
    with (
        running_emulator(
            processing_seconds=0.2,
            time_scale=86400 / 1.0,
            expire_batch_rate=1.0,
            expire_done_fraction=0.4,
        ) as url,
        make_client(url) as client,
    ):
        batch = client.messages.batches.create(requests=simple_requests(10))
        ended = wait_until_ended(client, batch.id)
        assert ended.request_counts.succeeded == 4
        assert ended.request_counts.expired == 6


def test_the_same_seed_gives_the_same_ids_and_outcomes() -> None:
    def run() -> list[tuple[str, str]]:
        with (
            running_emulator(processing_seconds=0.1, seed=42, errored_api_rate=0.3) as url,
            make_client(url) as client,
        ):
            batch = client.messages.batches.create(requests=simple_requests(20))
            wait_until_ended(client, batch.id)
            results = sorted(
                (r.custom_id, r.result.type) for r in client.messages.batches.results(batch.id)
            )
            return [(batch.id, "batch"), *results]

    assert run() == run()

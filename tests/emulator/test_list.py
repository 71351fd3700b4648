"""GET /v1/messages/batches: newest first, cursors both ways, SDK auto-pagination."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import httpx
import pytest
from invoice_batch_emulator.testing import running_emulator

from .conftest import make_client, raw_headers, simple_requests

TOTAL = 250


@pytest.fixture(scope="module")
def listed() -> Iterator[tuple[str, list[str]]]:
    """An emulator holding exactly 250 batches; yields its URL and the ids in
    creation order."""
    with running_emulator(processing_seconds=0.1) as url, make_client(url) as client:
        ids = [client.messages.batches.create(requests=simple_requests(1)).id for _ in range(TOTAL)]
        yield url, ids


def test_auto_pagination_walks_all_250_batches_newest_first(
    listed: tuple[str, list[str]],
) -> None:
    url, ids = listed
    with make_client(url) as client:
        walked = [batch.id for batch in client.messages.batches.list(limit=20)]
    assert walked == list(reversed(ids))


def test_the_default_page_is_20_with_first_last_and_has_more(
    listed: tuple[str, list[str]],
) -> None:
    url, ids = listed
    with make_client(url) as client:
        page = client.messages.batches.list()
    assert len(page.data) == 20
    assert page.has_more is True
    assert page.first_id == ids[-1]
    assert page.last_id == ids[-20]


def test_after_id_pages_to_older_batches_and_the_last_page_has_no_more(
    listed: tuple[str, list[str]],
) -> None:
    url, ids = listed
    with make_client(url) as client:
        page = client.messages.batches.list(after_id=ids[10], limit=1000)
    assert [b.id for b in page.data] == list(reversed(ids[:10]))
    assert page.has_more is False


def test_before_id_pages_to_newer_batches(listed: tuple[str, list[str]]) -> None:
    url, ids = listed
    with make_client(url) as client:
        page = client.messages.batches.list(before_id=ids[100], limit=5)
    assert [b.id for b in page.data] == list(reversed(ids[101:106]))
    assert page.has_more is True
    with make_client(url) as client:
        walked = [b.id for b in client.messages.batches.list(before_id=ids[100], limit=50)]
    assert sorted(walked) == sorted(ids[101:])


def test_a_limit_of_1000_returns_everything_in_one_page(listed: tuple[str, list[str]]) -> None:
    url, _ = listed
    with make_client(url) as client:
        page = client.messages.batches.list(limit=1000)
    assert len(page.data) == TOTAL
    assert page.has_more is False


@pytest.mark.parametrize("limit", ["0", "1001", "abc"])
def test_a_limit_outside_1_to_1000_is_400(emulator_url: str, limit: str) -> None:
    response = httpx.get(
        f"{emulator_url}/v1/messages/batches", params={"limit": limit}, headers=raw_headers()
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_an_empty_emulator_lists_nothing_with_null_cursors() -> None:
    with running_emulator() as url, make_client(url) as client:
        page = client.messages.batches.list()
        assert page.data == []
        assert page.first_id is None and page.last_id is None
        assert page.has_more is False
        assert list(client.messages.batches.list()) == []


def test_listing_shows_current_status(client: anthropic.Anthropic) -> None:
    batch = client.messages.batches.create(requests=simple_requests(1))
    listed = {b.id: b for b in client.messages.batches.list(limit=1000)}
    assert (
        listed[batch.id].request_counts.processing + listed[batch.id].request_counts.succeeded == 1
    )

"""Large batches: the create body and the results are streamed, never held whole."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from invoice_batch_emulator.testing import running_emulator

from .conftest import make_client, raw_headers, wait_until_ended
from .measure_rss import measure_big_batch, request_body


def test_a_10000_request_batch_is_accepted_processed_and_streamed(tmp_path: Path) -> None:
    with running_emulator(processing_seconds=1.0) as url:
        response = httpx.post(
            f"{url}/v1/messages/batches",
            headers=raw_headers(),
            content=request_body(10_000, text_chars=600),
            timeout=120,
        )
        assert response.status_code == 200, response.text
        batch_id = response.json()["id"]
        with make_client(url) as client:
            ended = wait_until_ended(client, batch_id, timeout=60)
            assert ended.request_counts.succeeded == 10_000
            seen = set()
            for result in client.messages.batches.results(batch_id):
                assert result.result.type == "succeeded"
                seen.add(result.custom_id)
        assert len(seen) == 10_000
        with httpx.stream(
            "GET", f"{url}/v1/messages/batches/{batch_id}/results", headers=raw_headers()
        ) as stream:
            assert stream.headers.get("content-length") is None  # chunked, not built whole
            first = next(stream.iter_lines())
            assert json.loads(first)["result"]["type"] == "succeeded"


@pytest.mark.slow
def test_a_100000_request_250_mb_batch_stays_within_bounded_memory() -> None:
    report = measure_big_batch(100_000, text_chars=2200)
    assert report["body_bytes"] > 250_000_000
    assert report["results"] == 100_000
    # The body alone is 250 MB; holding it (or the results) would show here.
    assert report["peak_rss_mb"] < 200

"""The collector's reading of a results file: a line that does not parse is logged and
skipped, and the lines around it are still read (its request then counts as missing,
which the collector retries)."""

from __future__ import annotations

import sqlite3
import time
from decimal import Decimal
from pathlib import Path

import anthropic
from invoice_batch.collector.service import read_results
from invoice_batch_emulator.testing import running_emulator
from structlog.testing import capture_logs

from invoice_batch.batch_requests import build_request
from invoice_batch.invoices import Invoice
from invoice_batch.results import Succeeded

API_KEY = "sk-ant-test-results-stream"


def test_a_malformed_results_line_is_skipped_and_the_others_are_read(tmp_path: Path) -> None:
    state = tmp_path / "emulator"
    with running_emulator(processing_seconds=0, state_dir=str(state), api_key=API_KEY) as url:
        client = anthropic.Anthropic(base_url=url, api_key=API_KEY, max_retries=0)
        requests = [
            build_request(
                Invoice(f"INV-{i}", "Dell", "laptops", Decimal("90000"), "INR", None, None),
                custom_id=f"i{i}-a1",
                model="claude-haiku-4-5",
                max_tokens=1024,
            )
            for i in range(3)
        ]
        batch = client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
        deadline = time.monotonic() + 30
        while batch.processing_status != "ended":
            assert time.monotonic() < deadline, "the batch did not end"
            time.sleep(0.2)
            batch = client.messages.batches.retrieve(batch.id)
        assert [r.custom_id for r in client.messages.batches.results(batch.id)] == [
            "i0-a1",
            "i1-a1",
            "i2-a1",
        ]
        # The second line arrives cut short, as a corrupted stream would deliver it.
        with sqlite3.connect(state / "emulator.sqlite3") as db:
            changed = db.execute(
                "UPDATE requests SET result = substr(result, 1, 40) WHERE custom_id = 'i1-a1'"
            ).rowcount
        assert changed == 1

        with capture_logs() as logs:
            read = list(read_results(client, batch.id))
    assert [custom_id for custom_id, _ in read] == ["i0-a1", "i2-a1"]
    assert all(isinstance(result, Succeeded) for _, result in read)
    [warning] = [entry for entry in logs if entry["event"] == "malformed results line skipped"]
    assert warning["log_level"] == "warning" and warning["batch_id"] == batch.id

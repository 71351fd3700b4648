"""The flusher's submit protocol when several batches are due: the next batch is
claimed and built while the create before it is in flight, creates still go one
at a time in claim order, and a failed create stops the run with nothing lost."""

from __future__ import annotations

import json
import threading
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import anthropic
import httpx
import pytest
from anthropic.types.messages import MessageBatch
from invoice_batch.consumer.flusher import Flusher
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from invoice_batch.batch_requests import build_request, custom_id_for, request_size_bound
from invoice_batch.invoices import Invoice
from invoice_batch.metrics import Metrics
from invoice_batch.settings import Settings, load_settings
from invoice_batch.store.models import BatchRow, InvoiceRow
from invoice_batch.store.repository import NewInvoice, Store
from invoice_batch.store.schema import make_engine, upgrade_schema

ROWS = 7
PER_BATCH = 3  # 7 rows: batches of 3, 3 and 1


def _batch(n: int, requests: int) -> MessageBatch:
    now = datetime.now(UTC)
    return MessageBatch.model_validate(
        {
            "id": f"msgbatch_{n:024d}",
            "type": "message_batch",
            "processing_status": "in_progress",
            "request_counts": {
                "processing": requests,
                "succeeded": 0,
                "errored": 0,
                "canceled": 0,
                "expired": 0,
            },
            "created_at": now,
            "expires_at": now,
            "ended_at": None,
            "cancel_initiated_at": None,
            "archived_at": None,
            "results_url": None,
        }
    )


class FakeApi:
    """Stands in for the SDK client: records each create body; call number
    ``fail_at`` (1-based) raises ``failure``."""

    def __init__(self, fail_at: int | None = None, failure: Exception | None = None) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self.fail_at = fail_at
        self.failure = failure
        self.threads: set[str] = set()
        self.release: threading.Event | None = None

    def with_options(self, **_: Any) -> FakeApi:
        return self

    def post(self, path: str, *, cast_to: Any, content: IO[bytes], options: Any) -> MessageBatch:
        assert path == "/v1/messages/batches"
        self.threads.add(threading.current_thread().name)
        if self.release is not None:
            assert self.release.wait(10)
        raw = content.read()
        self.raw.append(raw)
        self.bodies.append(json.loads(raw))
        if len(self.bodies) == self.fail_at:
            assert self.failure is not None
            raise self.failure
        return _batch(len(self.bodies), len(self.bodies[-1]["requests"]))


def _invoice(i: int) -> Invoice:
    return Invoice(
        f"INV-{i}",
        "Acme Supplies",
        f"Laptop {i}",
        Decimal("1000.50"),
        "INR",
        date(2026, 1, 2),
        'TAX INVOICE\nline 1 \u20ac "quoted"',
    )


@pytest.fixture()
def setup(tmp_path: Path) -> tuple[Store, Settings]:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    settings = load_settings(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
            "DATABASE_URL": url,
            "ANTHROPIC_API_KEY": "sk-ant-test",
            "BATCH_MAX_REQUESTS": str(PER_BATCH),
            "LOG_LEVEL": "WARNING",
        }
    )
    engine = make_engine(url)
    upgrade_schema(engine)
    store = Store(engine)
    now = datetime.now(UTC)
    store.add_invoices(
        [
            NewInvoice(
                _invoice(i),
                request_size_bound(
                    _invoice(i), model=settings.claude_model, max_tokens=settings.claude_max_tokens
                ),
                now,
            )
            for i in range(ROWS)
        ]
    )
    return store, settings


def _flusher(store: Store, settings: Settings, api: FakeApi) -> Flusher:
    return Flusher(store, api, settings, Metrics(CollectorRegistry()))  # type: ignore[arg-type]


def _rows(store: Store) -> list[tuple[int, str, int, str | None]]:
    with store.engine.connect() as connection:
        return [
            tuple(r)  # type: ignore[misc]
            for r in connection.execute(
                select(
                    InvoiceRow.id, InvoiceRow.status, InvoiceRow.attempts, InvoiceRow.batch_key
                ).order_by(InvoiceRow.id)
            )
        ]


def _batches(store: Store) -> list[tuple[str, int, str | None]]:
    with store.engine.connect() as connection:
        return [
            (r.status, r.request_count, r.last_error)
            for r in connection.execute(
                select(BatchRow.status, BatchRow.request_count, BatchRow.last_error).order_by(
                    BatchRow.created_at
                )
            )
        ]


def test_all_batches_go_in_claim_order_with_the_bytes_json_dumps_writes(
    setup: tuple[Store, Settings],
) -> None:
    store, settings = setup
    api = FakeApi()
    created = _flusher(store, settings, api).flush_all()
    assert created == [f"msgbatch_{n:024d}" for n in (1, 2, 3)]
    ids = [row[0] for row in _rows(store)]
    expected = [ids[0:3], ids[3:6], ids[6:7]]
    for raw, row_ids in zip(api.raw, expected, strict=True):
        requests = [
            build_request(
                _invoice(row_id - ids[0]),
                custom_id=custom_id_for(row_id, 1),
                model=settings.claude_model,
                max_tokens=settings.claude_max_tokens,
            )
            for row_id in row_ids
        ]
        assert raw == json.dumps({"requests": requests}).encode("ascii")
    assert {status for _, status, _, _ in _rows(store)} == {"submitted"}
    assert _batches(store) == [("open", 3, None), ("open", 3, None), ("open", 1, None)]


def test_the_next_batch_is_claimed_while_a_create_is_in_flight(
    setup: tuple[Store, Settings],
) -> None:
    store, settings = setup
    api = FakeApi()
    api.release = threading.Event()
    flusher = _flusher(store, settings, api)
    result: list[list[str]] = []
    runner = threading.Thread(target=lambda: result.append(flusher.flush_all()))
    runner.start()
    try:
        # The first create waits for us; meanwhile the second batch gets claimed.
        deadline = datetime.now(UTC).timestamp() + 10
        while len(_batches(store)) < 2 and datetime.now(UTC).timestamp() < deadline:
            threading.Event().wait(0.02)
        assert [b[0] for b in _batches(store)] == ["submitting", "submitting"]
        assert api.bodies == []
    finally:
        api.release.set()
        runner.join(30)
    assert len(result[0]) == 3
    assert all(name.startswith("batch-create") for name in api.threads)


def test_a_refused_create_stops_the_run_and_releases_the_batch_claimed_after_it(
    setup: tuple[Store, Settings],
) -> None:
    store, settings = setup
    refused = anthropic.APIStatusError(
        "too large",
        response=httpx.Response(413, request=httpx.Request("POST", "http://api/v1")),
        body={"error": {"type": "request_too_large", "message": "too large"}},
    )
    api = FakeApi(fail_at=2, failure=refused)
    assert _flusher(store, settings, api).flush_all() == ["msgbatch_" + "0" * 23 + "1"]
    assert len(api.bodies) == 2  # the batch claimed after the refused one was not sent
    assert _batches(store) == [
        ("open", 3, None),
        ("released", 3, "create refused: 413"),
        ("released", 1, "not sent: the create before it failed"),
    ]
    rows = _rows(store)
    assert [(status, attempts) for _, status, attempts, _ in rows[:3]] == [("submitted", 1)] * 3
    assert [(status, attempts, key) for _, status, attempts, key in rows[3:]] == [
        ("pending", 0, None)
    ] * 4


def test_an_unknown_create_outcome_is_left_to_reconcile_and_the_next_batch_released(
    setup: tuple[Store, Settings],
) -> None:
    store, settings = setup
    lost = anthropic.APIConnectionError(request=httpx.Request("POST", "http://api/v1"))
    api = FakeApi(fail_at=2, failure=lost)
    assert len(_flusher(store, settings, api).flush_all()) == 1
    assert _batches(store) == [
        ("open", 3, None),
        ("submitting", 3, None),
        ("released", 1, "not sent: the create before it failed"),
    ]


def test_a_failure_building_the_next_batch_still_records_the_create_in_flight(
    setup: tuple[Store, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, settings = setup
    api = FakeApi()
    calls = 0
    payloads = store.iter_batch_payloads

    def failing_second(batch_key: str) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("store went away")
        return payloads(batch_key)

    monkeypatch.setattr(store, "iter_batch_payloads", failing_second)
    with pytest.raises(RuntimeError, match="store went away"):
        _flusher(store, settings, api).flush_all()
    assert len(api.bodies) == 1
    assert _batches(store) == [("open", 3, None), ("submitting", 3, None)]

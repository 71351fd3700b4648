"""What an operator sees of running services: metrics, health, logs, and no secrets."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from invoice_batch.demo import Pipeline, running_pipeline
from tests.conftest import unavailable
from tests.support.prometheus import find_promtool
from tests.support.topics import produce_raw, read_all, read_topic

API_KEY = "sk-ant-api03-VERY-SECRET-operations-key"
DB_PASSWORD = "db-pw-Secret-0f9e8d"
GOOD = [
    {
        "invoice_id": f"OPS-{i}",
        "supplier": "AWS",
        "description": "cloud hosting",
        "amount": "120.00",
        "currency": "USD",
    }
    for i in range(12)
]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    workdir = tmp_path_factory.mktemp("ops")
    settings = {
        "ANTHROPIC_API_KEY": API_KEY,
        # SQLite ignores credentials, but the URL travels through settings, logs and errors.
        "DATABASE_URL": f"sqlite:///{workdir / 'store.db'}",
        "SMTP_PASSWORD": DB_PASSWORD,
        "KAFKA_SASL_PASSWORD": DB_PASSWORD,
    }
    with running_pipeline(workdir, processing_seconds=0.5, settings=settings) as running:
        from invoice_batch.schemas.codec import InvoiceCodec

        codec = InvoiceCodec("avro", max_text_bytes=32_768)
        items = [(g["invoice_id"].encode(), codec.encode(g)) for g in GOOD]
        items.append((b"OPS-bad", b"\x00\x01 not avro"))
        produce_raw(running.bootstrap, "invoices", items)
        out = read_topic(
            running.bootstrap, "invoices.classified", len(GOOD), 90, check=running.check_alive
        )
        assert len(out) == len(GOOD)
        yield running


def metrics_text(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


def test_healthz_and_readyz_answer_on_the_metrics_port(pipeline: Pipeline) -> None:
    for port in (pipeline.consumer_metrics_port, pipeline.collector_metrics_port):
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=20)
        assert ready.status_code == 200, ready.text
        assert ready.text.strip() == "ready"


def test_readyz_names_the_broker_when_it_does_not_answer(pipeline: Pipeline) -> None:
    assert pipeline.broker is not None
    pipeline.broker.send_signal(signal.SIGSTOP)
    try:
        ready = httpx.get(f"http://127.0.0.1:{pipeline.collector_metrics_port}/readyz", timeout=30)
    finally:
        pipeline.broker.send_signal(signal.SIGCONT)
    assert ready.status_code == 503
    assert "broker unreachable" in ready.text
    assert (
        httpx.get(
            f"http://127.0.0.1:{pipeline.collector_metrics_port}/healthz", timeout=10
        ).status_code
        == 200
    )


def test_each_metrics_page_passes_promtool_check_metrics(pipeline: Pipeline) -> None:
    promtool = find_promtool()
    if promtool is None:
        unavailable("promtool is not installed (make tools)")
    for port in (pipeline.consumer_metrics_port, pipeline.collector_metrics_port):
        page = metrics_text(port)
        assert "invoice_events_total" in page and "claude_batch_latency_seconds_bucket" in page
        checked = subprocess.run(
            [promtool, "check", "metrics"], input=page, capture_output=True, text=True, timeout=60
        )
        # promtool exits 1 on problems and lists them; lint notes about _total are not ours.
        problems = [line for line in (checked.stdout + checked.stderr).splitlines() if line.strip()]
        assert checked.returncode == 0, problems


def test_metrics_count_what_happened(pipeline: Pipeline) -> None:
    consumer = metrics_text(pipeline.consumer_metrics_port)
    collector = metrics_text(pipeline.collector_metrics_port)
    assert f'invoice_events_total{{outcome="accepted"}} {float(len(GOOD))}' in consumer
    assert 'invoice_events_total{outcome="invalid"} 1.0' in consumer
    dlq = [line for line in consumer.splitlines() if line.startswith("invoice_dlq_total{")]
    assert sum(float(line.split()[-1]) for line in dlq) == 1.0, dlq
    assert 'invoices_classified_total{approval_required="false",department="IT"} 12.0' in collector
    assert 'claude_batch_results_total{type="succeeded"} 12.0' in collector
    cost = [line for line in collector.splitlines() if line.startswith("claude_cost_usd_total ")]
    assert cost and float(cost[0].split()[1]) > 0


def test_logs_are_json_lines_with_batch_ids_and_counts(pipeline: Pipeline) -> None:
    lines = (pipeline.workdir / "consumer.log").read_text().splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    assert events and all("event" in e and "level" in e and "timestamp" in e for e in events)
    submitted = [e for e in events if e["event"] == "batch submitted"]
    assert submitted and submitted[0]["batch_id"].startswith("msgbatch_")
    assert submitted[0]["requests"] >= 1 and submitted[0]["trigger"] in ("count", "age")
    collected = [
        json.loads(line)
        for line in (pipeline.workdir / "collector.log").read_text().splitlines()
        if line.startswith("{") and "batch collected" in line
    ]
    assert collected and "seconds" in collected[0] and "succeeded" in collected[0]


def test_secrets_never_appear_in_logs_metrics_dlq_or_errors(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    secrets = [API_KEY, DB_PASSWORD]
    places = {
        name: (pipeline.workdir / f"{name}.log").read_text(errors="replace")
        for name in ("consumer", "collector")
    }
    places["consumer metrics"] = metrics_text(pipeline.consumer_metrics_port)
    places["collector metrics"] = metrics_text(pipeline.collector_metrics_port)
    dlq = read_all(pipeline.bootstrap, "invoices.dlq")
    assert dlq
    places["dlq"] = repr([(r.key, r.value, r.headers) for r in dlq])
    # A failing command whose error mentions the database URL.
    env = {**pipeline.env, "DATABASE_URL": f"postgresql+psycopg://ap:{DB_PASSWORD}@127.0.0.1:1/ap"}
    failed = subprocess.run(
        [sys.executable, "-m", "invoice_batch", "db", "upgrade"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert failed.returncode != 0
    places["db error"] = failed.stdout + failed.stderr
    shown = subprocess.run(
        [sys.executable, "-m", "invoice_batch", "config", "show"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    places["config show"] = shown.stdout + shown.stderr
    for place, text in places.items():
        for secret in secrets:
            assert secret not in text, f"a secret appears in the {place}"
    time.sleep(0)


def test_collected_batches_keep_their_final_counts_and_end_time(pipeline: Pipeline) -> None:
    from invoice_batch.store.repository import Store
    from invoice_batch.store.schema import make_engine

    store = Store(make_engine(pipeline.database_url))
    batches = [b for b in store.recent_batches(10) if b.status == "done"]
    store.engine.dispose()
    assert batches
    assert sum(b.succeeded for b in batches) == len(GOOD)
    for batch in batches:
        assert batch.processing_status == "ended" and batch.processing == 0
        assert batch.ended_at is not None and batch.submitted_at is not None
        assert (
            batch.succeeded + batch.errored + batch.canceled + batch.expired == batch.request_count
        )

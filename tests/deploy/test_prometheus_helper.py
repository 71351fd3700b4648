"""The Prometheus test helper runs a real server that scrapes a real prometheus_client endpoint."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.process_collector import ProcessCollector

from tests.support.deploy_files import CONFIG, CONSUMER_JOB, DASHBOARD, RULE_FILES
from tests.support.prometheus import (
    PrometheusError,
    dashboard_expressions,
    query,
    rule_expressions,
    running_prometheus,
    wait_for_series,
)


@pytest.fixture(scope="module")
def exporter() -> Iterator[str]:
    """A prometheus_client HTTP server in this process exposing a few of the service metrics."""
    registry = CollectorRegistry()
    events = Counter("invoice_events", "Input events by outcome", ["outcome"], registry=registry)
    events.labels(outcome="accepted").inc(5)
    events.labels(outcome="invalid").inc(1)
    Gauge("invoice_buffer_pending", "Pending invoices", registry=registry).set(7)
    latency = Histogram(
        "claude_batch_latency_seconds",
        "Submit to ended",
        buckets=(10, 60, 600, 3600, 86400),
        registry=registry,
    )
    latency.observe(300)
    latency.observe(1200)
    ProcessCollector(registry=registry)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield f"127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def prometheus_url(prometheus_binary: str, exporter: str) -> Iterator[str]:
    with running_prometheus(
        {CONSUMER_JOB: exporter}, RULE_FILES, base_config=CONFIG, binary=prometheus_binary
    ) as url:
        yield url


def value_of(series: dict[str, object]) -> float:
    _, value = series["value"]  # type: ignore[misc]
    return float(value)


def test_the_helper_starts_prometheus_that_scrapes_a_prometheus_client_server(
    prometheus_url: str,
) -> None:
    [pending] = wait_for_series(prometheus_url, f'invoice_buffer_pending{{job="{CONSUMER_JOB}"}}')
    assert value_of(pending) == 7
    [accepted] = query(prometheus_url, 'invoice_events_total{outcome="accepted"}')
    assert value_of(accepted) == 5
    [up] = query(prometheus_url, f'up{{job="{CONSUMER_JOB}"}}')
    assert value_of(up) == 1


def test_scraped_series_carry_the_labels_of_the_deployed_scrape_config(
    prometheus_url: str, exporter: str
) -> None:
    [pending] = wait_for_series(prometheus_url, "invoice_buffer_pending")
    assert pending["metric"]["job"] == CONSUMER_JOB
    assert pending["metric"]["service"] == "consumer"
    assert pending["metric"]["instance"] == exporter


def test_the_server_evaluates_the_recording_rules_every_second(prometheus_url: str) -> None:
    # increase() needs two scrapes of the counter, so this waits a couple of seconds.
    [accepted] = wait_for_series(
        prometheus_url, "invoice_batch:invoice_events_accepted:increase_1h"
    )
    assert value_of(accepted) == 0  # constant since the first scrape
    [p50] = wait_for_series(prometheus_url, "invoice_batch:claude_batch_latency_seconds:p50_1h")
    assert math.isnan(value_of(p50))  # no batch ended between two scrapes


def test_the_running_server_accepts_every_dashboard_and_rule_expression(
    prometheus_url: str,
) -> None:
    expressions = dashboard_expressions(DASHBOARD) + rule_expressions(RULE_FILES)
    for expr in expressions:
        query(prometheus_url, expr)  # raises PrometheusError on a parse or evaluation error


def test_a_query_that_does_not_parse_raises_with_prometheus_reason(prometheus_url: str) -> None:
    with pytest.raises(PrometheusError, match="bad_data"):
        query(prometheus_url, "sum(rate(invoice_events_total[5m])")


def test_a_rule_file_that_does_not_load_stops_the_start_with_the_server_log(
    prometheus_binary: str, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "groups:\n  - name: x\n    rules:\n      - record: a:b:c\n        expr: sum(\n"
    )
    with (
        pytest.raises(PrometheusError, match="did not become ready"),
        running_prometheus({}, [broken], binary=prometheus_binary),
    ):
        pass


def test_the_server_stops_when_the_context_exits(prometheus_binary: str) -> None:
    with running_prometheus({}, binary=prometheus_binary) as url:
        assert httpx.get(f"{url}/-/ready").status_code == 200
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/-/ready", timeout=2)

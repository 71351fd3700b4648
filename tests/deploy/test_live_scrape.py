"""Every dashboard query and rule returns data when Prometheus scrapes the running demo pipeline.

The unit tests of the rules run on made-up series; this one scrapes the real
consumer and collector with the deployed scrape config and rule files while the
article's five invoices go through, and then asks Prometheus each expression.
It runs when ``invoice_batch.demo`` provides ``running_pipeline()``, a context
manager yielding the running pipeline with ``consumer_metrics_port`` and
``collector_metrics_port`` (or a ``metrics_targets`` mapping of job to address).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest

from tests.support.deploy_files import (
    COLLECTOR_JOB,
    CONFIG,
    CONSUMER_JOB,
    DASHBOARD,
    RULE_FILES,
)
from tests.support.invoice_metrics import MAY_BE_ABSENT
from tests.support.prometheus import (
    dashboard_expressions,
    iter_rules,
    metric_names,
    query,
    running_prometheus,
    vector_selectors,
    wait_for_series,
)

# After the last invoice is published, the collector's next scrape comes within
# 1 s; the rest is slack for a busy machine.
SETTLE_SECONDS = 20.0
SCRAPE_SECONDS = 1.0


@dataclass(frozen=True)
class ScrapedPipeline:
    base_url: str
    published: int
    flagged_for_approval: int


def demo_module() -> tuple[ModuleType, Callable[..., Any]]:
    try:
        demo = importlib.import_module("invoice_batch.demo")
    except ImportError as exc:
        pytest.skip(f"invoice_batch.demo is not importable yet: {exc}")
    running_pipeline = getattr(demo, "running_pipeline", None)
    if not callable(running_pipeline):
        pytest.skip("invoice_batch.demo has no running_pipeline() yet")
    return demo, running_pipeline


def metrics_targets(pipeline: Any) -> dict[str, str]:
    """Job name -> host:port of the two services' /metrics in the running pipeline."""
    targets = getattr(pipeline, "metrics_targets", None)
    if isinstance(targets, Mapping):
        return dict(targets)
    return {
        CONSUMER_JOB: f"127.0.0.1:{pipeline.consumer_metrics_port}",
        COLLECTOR_JOB: f"127.0.0.1:{pipeline.collector_metrics_port}",
    }


@pytest.fixture(scope="module")
def scraped(prometheus_binary: str) -> Iterator[ScrapedPipeline]:
    """Prometheus scraping the demo pipeline after the article's invoices went through."""
    demo, running_pipeline = demo_module()
    with running_pipeline() as pipeline:
        targets = metrics_targets(pipeline)
        with running_prometheus(
            targets, RULE_FILES, base_config=CONFIG, binary=prometheus_binary
        ) as base_url:
            # Scrape before the invoices arrive, so that rates see them arrive.
            for job in targets:
                wait_for_series(base_url, f'up{{job="{job}"}} == 1', timeout=30)
            invoices = demo.seed_invoices()
            demo.produce_invoices(pipeline.bootstrap, "invoices", invoices)
            published = demo.read_classified(
                pipeline.bootstrap, "invoices.classified", len(invoices), 90
            )
            assert len(published) == len(invoices), "the demo did not publish every invoice"
            wait_for_series(
                base_url,
                f"sum(invoices_classified_total) >= {len(invoices)}",
                timeout=SETTLE_SECONDS,
            )
            # One more scrape for rate() and a rule evaluation after it.
            time.sleep(3 * SCRAPE_SECONDS)
            flagged = sum(1 for record in published if record["approval_required"])
            yield ScrapedPipeline(base_url, len(invoices), flagged)


def absent_selectors(base_url: str, expr: str) -> list[str]:
    return [selector for selector in vector_selectors(expr) if not query(base_url, selector)]


def query_until_data(base_url: str, expr: str, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        result = query(base_url, expr)
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(0.5)


def expressions_that_must_return_data() -> list[str]:
    recorded = [rule["expr"] for rule in iter_rules(RULE_FILES) if "record" in rule]
    return dashboard_expressions(DASHBOARD) + recorded


def test_every_dashboard_query_and_recording_rule_returns_data_from_the_services(
    scraped: ScrapedPipeline,
) -> None:
    empty = {}
    for expr in expressions_that_must_return_data():
        if query(scraped.base_url, expr):
            continue
        missing = absent_selectors(scraped.base_url, expr)
        if not missing and query_until_data(scraped.base_url, expr, timeout=3):
            continue  # its series are there; a rule evaluation was still to come
        # Empty is fine only when it reads a series that need not exist yet.
        if not missing or {n for s in missing for n in metric_names(s)} - MAY_BE_ABSENT:
            empty[expr] = missing
    assert not empty, "expressions without data (and the selectors that match nothing): " + repr(
        empty
    )


def test_every_series_the_alerts_read_is_scraped_from_the_services(
    scraped: ScrapedPipeline,
) -> None:
    for rule in iter_rules(RULE_FILES):
        if "alert" not in rule:
            continue
        missing = {
            name
            for selector in absent_selectors(scraped.base_url, rule["expr"])
            for name in metric_names(selector)
        }
        assert missing <= MAY_BE_ABSENT, f"{rule['alert']} reads {sorted(missing)}, not scraped"


def test_no_alert_fires_while_the_pipeline_is_healthy(scraped: ScrapedPipeline) -> None:
    firing = {
        rule["alert"]: result
        for rule in iter_rules(RULE_FILES)
        if "alert" in rule
        for result in [query(scraped.base_url, rule["expr"])]
        if result
    }
    assert not firing


def test_the_classified_counter_carries_the_label_values_the_approval_rate_matches(
    scraped: ScrapedPipeline,
) -> None:
    [total] = query(scraped.base_url, "sum(invoices_classified_total)")
    assert float(total["value"][1]) == scraped.published
    flagged = query(scraped.base_url, 'sum(invoices_classified_total{approval_required="true"})')
    assert sum(float(series["value"][1]) for series in flagged) == scraped.flagged_for_approval
    labels = query(scraped.base_url, "count by (approval_required) (invoices_classified_total)")
    assert {series["metric"]["approval_required"] for series in labels} <= {"true", "false"}
    [ratio] = query(scraped.base_url, "invoice_batch:approval_flag_rate:ratio_1h")
    assert ratio["metric"] == {"__name__": "invoice_batch:approval_flag_rate:ratio_1h"}

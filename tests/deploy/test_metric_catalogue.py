"""The metric list the deployment files are checked against is what the services register."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tests.support.invoice_metrics import COUNTERS, GAUGES, HISTOGRAMS


def services_metrics(registry: CollectorRegistry) -> Any:
    """The services' ``Metrics`` registered on ``registry``; skips before the module exists."""
    try:
        metrics = importlib.import_module("invoice_batch.metrics")
    except ImportError as exc:
        pytest.skip(f"invoice_batch.metrics is not importable yet: {exc}")
    return metrics.Metrics(registry)


def registered_families() -> dict[str, str]:
    """Sample name (with ``_total`` on counters) -> type, from invoice_batch.metrics."""
    registry = CollectorRegistry()
    services_metrics(registry)
    families = {}
    for family in registry.collect():
        name = f"{family.name}_total" if family.type == "counter" else family.name
        families[name] = family.type
    return families


def test_the_services_register_every_metric_the_dashboard_and_rules_may_read() -> None:
    expected = {
        **dict.fromkeys(COUNTERS, "counter"),
        **dict.fromkeys(GAUGES, "gauge"),
        **dict.fromkeys(HISTOGRAMS, "histogram"),
    }
    assert registered_families() == expected


def test_the_services_register_each_metric_with_the_labels_the_queries_group_by() -> None:
    instance = services_metrics(CollectorRegistry())
    labels = {}
    # prometheus_client keeps a metric's name, type and label names in these
    # attributes; its public collect() shows labels only once a child exists.
    for value in vars(instance).values():
        names = getattr(value, "_labelnames", None)
        name = getattr(value, "_name", None)
        if names is None or name is None:
            continue
        kind = getattr(value, "_type", "")
        labels[f"{name}_total" if kind == "counter" else name] = tuple(names)
    expected = {**COUNTERS, **GAUGES, **HISTOGRAMS}
    assert {name: labels.get(name) for name in expected} == dict(expected)

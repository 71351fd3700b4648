"""The Grafana dashboard and its provisioning: structure, data source, and PromQL that parses."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.invoice_metrics import (
    HISTOGRAMS,
    known_label_names,
    known_series_names,
    service_sample_names,
)
from tests.support.prometheus import (
    dashboard_expressions,
    iter_panels,
    iter_rules,
    label_names,
    metric_names,
)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "invoice-batch.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "invoice-batch.yml"
RECORDING_RULES = DEPLOY / "prometheus" / "rules" / "recording.yml"

DATASOURCE_UIDS = {"${DS_PROMETHEUS}", "prometheus"}
GRID_COLUMNS = 24


def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return document


def query_panels() -> list[dict[str, Any]]:
    return [panel for panel in iter_panels(dashboard()) if panel["type"] != "row"]


def recorded() -> dict[str, str]:
    return {
        rule["record"]: rule["expr"] for rule in iter_rules([RECORDING_RULES]) if "record" in rule
    }


def test_the_dashboard_is_json_with_its_uid_title_and_a_current_schema_version() -> None:
    document = dashboard()
    assert document["uid"] == "invoice-batch"
    assert document["title"] == "invoice-batch"
    assert document["schemaVersion"] >= 39
    assert query_panels()


def test_panel_ids_are_unique() -> None:
    ids = [panel["id"] for panel in iter_panels(dashboard())]
    assert len(ids) == len(set(ids))


def test_every_panel_has_a_grid_position_inside_the_24_column_grid() -> None:
    for panel in iter_panels(dashboard()):
        grid = panel["gridPos"]
        assert {"x", "y", "w", "h"} <= grid.keys(), panel["title"]
        assert grid["w"] > 0 and grid["h"] > 0, panel["title"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= GRID_COLUMNS, panel["title"]


def test_no_two_panels_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in iter_panels(dashboard()):
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_every_panel_queries_prometheus_through_the_data_source_variable() -> None:
    for panel in query_panels():
        assert panel["datasource"]["type"] == "prometheus", panel["title"]
        assert panel["datasource"]["uid"] in DATASOURCE_UIDS, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target.get("datasource", panel["datasource"]) == panel["datasource"]


def test_the_data_source_variable_defaults_to_the_provisioned_prometheus() -> None:
    variables = {item["name"]: item for item in dashboard()["templating"]["list"]}
    variable = variables["DS_PROMETHEUS"]
    assert variable["type"] == "datasource"
    assert variable["query"] == "prometheus"
    provisioned = yaml.safe_load(DATASOURCES.read_text(encoding="utf-8"))["datasources"]
    assert variable["current"]["value"] in {source["uid"] for source in provisioned}


def test_grafana_provisions_prometheus_with_uid_prometheus_as_the_default_source() -> None:
    sources = yaml.safe_load(DATASOURCES.read_text(encoding="utf-8"))["datasources"]
    [source] = sources
    assert (source["type"], source["uid"], source["isDefault"]) == (
        "prometheus",
        "prometheus",
        True,
    )


def test_grafana_loads_the_dashboard_folder_with_a_file_provider() -> None:
    [provider] = yaml.safe_load(DASHBOARD_PROVIDERS.read_text(encoding="utf-8"))["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_every_dashboard_expression_parses_in_promtool(promtool: str, tmp_path: Path) -> None:
    # promtool has no "parse this expression" command in Debian's 2.42, so each
    # expression becomes a recording rule and `check rules` parses it.
    expressions = dashboard_expressions(DASHBOARD)
    rules = [{"record": f"dashboard:expr_{i}:check", "expr": e} for i, e in enumerate(expressions)]
    rule_file = tmp_path / "dashboard.rules.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))

    result = subprocess.run(
        [promtool, "check", "rules", str(rule_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(expressions)} rules found" in result.stdout


def test_an_expression_that_does_not_parse_is_caught_by_that_promtool_check(
    promtool: str, tmp_path: Path
) -> None:
    rule_file = tmp_path / "broken.rules.yml"
    broken = {"record": "dashboard:expr_0:check", "expr": "sum(rate(invoice_events_total[5m])"}
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": [broken]}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(rule_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0


def test_the_dashboard_reads_only_metrics_the_services_expose_or_the_rules_record() -> None:
    known = known_series_names() | recorded().keys()
    for expr in dashboard_expressions(DASHBOARD):
        unknown = metric_names(expr) - known
        assert not unknown, f"unknown metric {sorted(unknown)} in: {expr}"


def test_the_dashboard_groups_and_matches_only_labels_the_metrics_carry() -> None:
    for expr in dashboard_expressions(DASHBOARD):
        unknown = label_names(expr) - known_label_names()
        assert not unknown, f"unknown label {sorted(unknown)} in: {expr}"


def test_every_metric_the_services_expose_is_shown_on_the_dashboard() -> None:
    rules = recorded()
    shown: set[str] = set()
    for expr in dashboard_expressions(DASHBOARD):
        for name in metric_names(expr):
            shown |= metric_names(rules[name]) if name in rules else {name}
    # a histogram counts as shown when any of its series is
    histogram_series = {
        f"{base}{suffix}" for base in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")
    }
    shown_histograms = {base for base in HISTOGRAMS if any(s.startswith(base) for s in shown)}
    missing = (service_sample_names() - histogram_series) - shown
    missing |= set(HISTOGRAMS) - shown_histograms
    assert not missing, f"not on the dashboard: {sorted(missing)}"


@pytest.mark.parametrize(
    "title",
    [
        "Invoices in, classified and dead-lettered",
        "Buffer pending",
        "Oldest pending invoice age",
        "Batches submitted by trigger",
        "Open batches and oldest age",
        "Batch latency (submit → ended)",
        "Batch latency quantiles (1 h)",
        "Approval-flag rate",
        "Department mix",
        "Tokens per day by type",
        "Cost per day",
        "End-to-end latency (event → published)",
        "DLQ by reason",
        "Retries by reason",
        "Claude API errors",
        "Consumer lag",
    ],
)
def test_the_dashboard_has_the_panel(title: str) -> None:
    assert title in {panel["title"] for panel in query_panels()}


def test_the_batch_latency_heatmap_reads_the_latency_histogram_buckets() -> None:
    [heatmap] = [panel for panel in query_panels() if panel["type"] == "heatmap"]
    [target] = heatmap["targets"]
    assert target["format"] == "heatmap"
    assert "claude_batch_latency_seconds_bucket" in target["expr"]
    assert "by (le)" in target["expr"]

"""The Prometheus config, recording rules and alerts pass promtool and read real metric names."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.invoice_metrics import known_label_names, known_series_names
from tests.support.prometheus import (
    iter_rules,
    label_names,
    metric_names,
    prometheus_config,
    rule_expressions,
)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RECORDING_RULES = PROMETHEUS_DIR / "rules" / "recording.yml"
ALERT_RULES = PROMETHEUS_DIR / "rules" / "alerts.yml"
RULE_FILES = [RECORDING_RULES, ALERT_RULES]
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))

JOBS = {"invoice-batch-consumer": "consumer:9101", "invoice-batch-collector": "collector:9102"}

# level:metric:operations, the Prometheus naming convention for recorded series
RECORDING_NAME = re.compile(r"^invoice_batch:[a-z0-9_]+:[a-z0-9_]+$")


def run(command: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=cwd, check=False)


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in iter_rules([ALERT_RULES]) if "alert" in rule]


def recording_rules() -> list[dict[str, Any]]:
    return [rule for rule in iter_rules([RECORDING_RULES]) if "record" in rule]


def normalized(expr: str) -> str:
    return re.sub(r"\s+", "", expr)


# --- promtool ---------------------------------------------------------------------


def test_the_compose_config_and_its_rule_files_pass_promtool_check_config(promtool: str) -> None:
    result = run([promtool, "check", "config", str(CONFIG)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 rule files found" in result.stdout


def test_the_loopback_variant_used_by_tests_passes_promtool_check_config(
    promtool: str, tmp_path: Path
) -> None:
    loopback = {
        "invoice-batch-consumer": "127.0.0.1:19101",
        "invoice-batch-collector": "[::1]:19102",
    }
    config = prometheus_config(loopback, RULE_FILES, base_config=CONFIG)
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")

    result = run([promtool, "check", "config", str(path)])

    assert result.returncode == 0, result.stdout + result.stderr
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {name: job["static_configs"][0]["targets"] for name, job in jobs.items()} == {
        name: [address] for name, address in loopback.items()
    }
    assert not any(key.endswith("_sd_configs") for job in jobs.values() for key in job)
    # the relabelling that adds service="consumer" is kept, so queries see the same labels
    assert jobs["invoice-batch-consumer"]["relabel_configs"] == next(
        job["relabel_configs"]
        for job in load(CONFIG)["scrape_configs"]
        if job["job_name"] == "invoice-batch-consumer"
    )


def test_the_rule_files_pass_promtool_check_rules(promtool: str) -> None:
    result = run([promtool, "check", "rules", *map(str, RULE_FILES)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alert_and_recording_rule_unit_tests_pass_promtool_test_rules(promtool: str) -> None:
    assert RULE_TESTS, "no promtool rule tests in deploy/prometheus/tests"
    result = run(
        [promtool, "test", "rules", *(path.name for path in RULE_TESTS)], RULE_TESTS[0].parent
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_wrong_threshold_makes_the_promtool_unit_tests_fail(
    promtool: str, tmp_path: Path
) -> None:
    # The unit tests must notice a changed rule, or passing them proves nothing.
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "rules" / "recording.yml").write_text(RECORDING_RULES.read_text(encoding="utf-8"))
    broken = ALERT_RULES.read_text(encoding="utf-8").replace("> 20 * 3600", "> 21 * 3600")
    assert broken != ALERT_RULES.read_text(encoding="utf-8")
    (tmp_path / "rules" / "alerts.yml").write_text(broken)
    unit_tests = PROMETHEUS_DIR / "tests" / "alerts_test.yml"
    (tmp_path / "tests" / unit_tests.name).write_text(unit_tests.read_text(encoding="utf-8"))

    result = run([promtool, "test", "rules", unit_tests.name], tmp_path / "tests")

    assert result.returncode != 0
    assert "ClaudeBatchOpenTooLong" in result.stdout + result.stderr


# --- what the unit tests cover ------------------------------------------------------


def alert_rule_tests() -> list[dict[str, Any]]:
    return [
        case
        for path in RULE_TESTS
        for test in load(path)["tests"]
        for case in test.get("alert_rule_test", [])
    ]


@pytest.mark.parametrize("alert", [rule["alert"] for rule in alerts()])
def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_stays_quiet(
    alert: str,
) -> None:
    cases = [case for case in alert_rule_tests() if case["alertname"] == alert]
    assert any(case.get("exp_alerts") for case in cases), f"no test shows {alert} firing"
    assert any(not case.get("exp_alerts") for case in cases), f"no test shows {alert} quiet"


def test_every_recording_rule_used_by_an_alert_or_named_in_the_brief_has_a_unit_test() -> None:
    tested = {
        case["expr"].strip()
        for path in RULE_TESTS
        for test in load(path)["tests"]
        for case in test.get("promql_expr_test", [])
    }
    for name in (
        "invoice_batch:approval_flag_rate:ratio_1h",
        "invoice_batch:claude_batch_latency_seconds:p50_1h",
        "invoice_batch:claude_batch_latency_seconds:p95_1h",
        "invoice_batch:claude_cost_usd:increase_1d",
        "invoice_batch:invoices_classified:increase_1h",
    ):
        assert name in tested, f"{name} has no promql_expr_test"


# --- rule content -------------------------------------------------------------------


def test_the_approval_flag_rate_is_recorded_exactly_as_the_contract_defines_it() -> None:
    rules = {rule["record"]: rule["expr"] for rule in recording_rules()}
    assert normalized(rules["invoice_batch:approval_flag_rate:ratio_1h"]) == normalized(
        'sum(rate(invoices_classified_total{approval_required="true"}[1h]))'
        " / sum(rate(invoices_classified_total[1h]))"
    )


def test_recording_rules_form_one_group_named_level_metric_operations() -> None:
    groups = load(RECORDING_RULES)["groups"]
    assert [group["name"] for group in groups] == ["invoice_batch"]
    names = [rule["record"] for rule in recording_rules()]
    assert len(names) == len(set(names)), "a recording rule is defined twice"
    for name in names:
        assert RECORDING_NAME.match(name), f"{name} is not invoice_batch:<metric>:<operations>"


def test_recording_rules_cover_latency_quantiles_cost_throughput_and_dlq() -> None:
    names = {rule["record"] for rule in recording_rules()}
    assert {
        "invoice_batch:approval_flag_rate:ratio_1h",
        "invoice_batch:claude_batch_latency_seconds:p50_1h",
        "invoice_batch:claude_batch_latency_seconds:p95_1h",
        "invoice_batch:claude_cost_usd:increase_1d",
        "invoice_batch:invoices_classified:increase_1h",
        "invoice_batch:invoice_dlq:rate5m",
    } <= names


@pytest.mark.parametrize("alert", alerts(), ids=lambda rule: rule["alert"])
def test_every_alert_carries_a_severity_summary_description_and_numbered_runbook(
    alert: dict[str, Any],
) -> None:
    assert alert["labels"]["severity"] in {"warning", "critical"}
    annotations = alert["annotations"]
    assert annotations["summary"].strip()
    assert annotations["description"].strip()
    steps = [line for line in annotations["runbook"].splitlines() if line.strip()]
    assert len(steps) >= 3, "a runbook gives the operator at least three concrete steps"
    assert all(re.match(r"^\d+\. ", step) for step in steps), "runbook steps are numbered"


def test_the_alerts_cover_every_failure_the_operators_asked_for() -> None:
    assert {rule["alert"] for rule in alerts()} >= {
        "ClaudeBatchOpenTooLong",
        "InvoiceBufferPastCutoff",
        "InvoiceDlqRateHigh",
        "ClaudeNoResultsWhileBatchesOpen",
        "ClaudeBatchRequestsExpired",
        "InvoiceConsumerDown",
        "InvoiceConsumerNotPolling",
        "InvoiceCollectorDown",
    }


def test_a_batch_alerts_before_the_api_expires_it_at_24_hours() -> None:
    rule = next(rule for rule in alerts() if rule["alert"] == "ClaudeBatchOpenTooLong")
    hours = int(re.search(r">\s*(\d+)\s*\*\s*3600", rule["expr"]).group(1))  # type: ignore[union-attr]
    assert 12 <= hours < 24


def test_the_down_alerts_watch_the_job_names_prometheus_scrapes() -> None:
    scraped = {job["job_name"] for job in load(CONFIG)["scrape_configs"]}
    assert scraped == set(JOBS)
    watched = {job for rule in alerts() for job in re.findall(r'job="([^"]+)"', rule["expr"])}
    assert watched == scraped


# --- names --------------------------------------------------------------------------


def test_rules_read_only_metrics_the_services_expose_or_other_rules_record() -> None:
    recorded = {rule["record"] for rule in recording_rules()}
    known = known_series_names() | recorded
    for expr in rule_expressions(RULE_FILES):
        unknown = metric_names(expr) - known
        assert not unknown, f"unknown metric {sorted(unknown)} in: {expr}"


def test_rules_group_and_match_only_labels_the_metrics_carry() -> None:
    for expr in rule_expressions(RULE_FILES):
        unknown = label_names(expr) - known_label_names()
        assert not unknown, f"unknown label {sorted(unknown)} in: {expr}"


def test_a_misspelt_metric_name_is_reported_as_unknown() -> None:
    # The name check above is only as good as the scanner behind it.
    expr = 'sum(rate(invoice_event_total{outcome="invalid"}[15m])) / sum(invoice_events_total)'
    assert metric_names(expr) - known_series_names() == {"invoice_event_total"}
    grouped = 'sum by (outcom) (invoice_events_total{outcome="x"})'
    assert label_names(grouped) - known_label_names() == {"outcom"}

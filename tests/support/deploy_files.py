"""Where the deployment files live, and the scrape job names they use."""

from __future__ import annotations

from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
RULE_FILES = [
    DEPLOY / "prometheus" / "rules" / "recording.yml",
    DEPLOY / "prometheus" / "rules" / "alerts.yml",
]
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "invoice-batch.json"

CONSUMER_JOB = "invoice-batch-consumer"
COLLECTOR_JOB = "invoice-batch-collector"

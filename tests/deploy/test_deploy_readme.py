"""deploy/README.md describes the panels, recording rules and alerts that are actually deployed."""

from __future__ import annotations

import json

from tests.support.deploy_files import DASHBOARD, DEPLOY, RULE_FILES
from tests.support.prometheus import iter_panels, iter_rules

README = DEPLOY / "README.md"


def readme() -> str:
    return README.read_text(encoding="utf-8")


def test_the_readme_lists_every_dashboard_panel() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    for panel in iter_panels(dashboard):
        assert f"| {panel['title']} |" in readme(), panel["title"]


def test_the_readme_names_every_recording_rule() -> None:
    for rule in iter_rules(RULE_FILES):
        if "record" in rule:
            suffix = rule["record"].rsplit(":", 1)[1]
            assert rule["record"] in readme() or f"…:{suffix}" in readme(), rule["record"]


def test_the_readme_gives_every_alert_with_its_runbook_as_deployed() -> None:
    for rule in iter_rules(RULE_FILES):
        if "alert" in rule:
            assert f"| `{rule['alert']}` |" in readme(), rule["alert"]
            assert rule["annotations"]["runbook"].strip() in readme(), rule["alert"]

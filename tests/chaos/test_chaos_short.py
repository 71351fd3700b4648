"""The short chaos run of `make test`, so the harness behind `make chaos` cannot rot.

Real processes killed at every kind of crash point and at random, the broker
frozen, API fault storms; then no invoice lost, none published twice, none paid
for twice, and every dead letter the record that was sent.
"""

from __future__ import annotations

import pytest

from tests.chaos.harness import Plan, run


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_kills_and_faults_lose_nothing_duplicate_nothing_and_pay_once(
    store: str, tmp_path, request: pytest.FixtureRequest
) -> None:
    if store == "postgresql":
        request.getfixturevalue("database_url_postgres_available")
    plan = Plan(
        store=store, invoices=600, kills=6, broker_pause_seconds=3, restart_postgres=False, seed=11
    )
    outcome = run(plan, tmp_path)
    print(f"\n{outcome.line()} store={store} seconds={outcome.seconds:.0f}")
    assert outcome.kills >= plan.kills
    assert outcome.sent == 600 and outcome.classified > 500
    assert (outcome.lost, outcome.duplicates, outcome.double_submits) == (0, 0, 0), outcome.notes
    assert outcome.dlq > 0 and outcome.altered == 0, outcome.notes

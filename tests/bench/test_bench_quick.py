"""The short benchmark runs end to end and produces every figure (no timing asserted).

Targets are printed as ratios by ``make bench``; a test that asserted them would
fail on a busy machine for reasons that are not bugs. This one proves the suite
still runs against the current code: every stage, every side, sane values.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.run import DEFAULTS_SIDE, TARGETS
from tests.conftest import POSTGRES_URL, unavailable

pytestmark = [pytest.mark.broker, pytest.mark.postgres]


def _postgres_reachable() -> bool:
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    engine = create_engine(POSTGRES_URL)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True
    except OperationalError:
        return False
    finally:
        engine.dispose()


def _sane(side: dict[str, object], n: int) -> None:
    assert side["items"] == n
    for name in ("seconds", "items_per_s", "us_per_item", "peak_rss_mb"):
        value = side[name]
        assert isinstance(value, int | float) and math.isfinite(value) and value > 0, (name, side)
    assert float(side["peak_rss_mb"]) < 16_000  # type: ignore[arg-type]


@pytest.mark.timeout(240)
def test_quick_bench_measures_every_stage_and_side(tmp_path: Path) -> None:
    if not _postgres_reachable():
        unavailable(f"PostgreSQL is not reachable at {POSTGRES_URL}")
    out = tmp_path / "results.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=230,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(out.read_text())

    assert results["machine"]["cores"] >= 1 and results["machine"]["memory_gb"] > 0
    assert {"python", "anthropic", "confluent-kafka", "sqlite"} <= set(results["versions"])
    for n in results["sizes"]:
        ingest = results["ingest"][str(n)]
        for side in ("baseline", DEFAULTS_SIDE, "sqlite", "postgresql"):
            _sane(ingest[side], n)
            assert ingest[side]["cpu_seconds"] > 0, ingest[side]
            assert ingest[side]["machine_busy_seconds"] >= ingest[side]["cpu_seconds"] * 0.5
            assert ingest[side]["runs_seconds"] == [ingest[side]["seconds"]]  # --quick: one run
        assert ingest["sqlite"]["rows_stored"] == n
        assert ingest["postgresql"]["rows_stored"] == n
        flush = results["flush"][str(n)]
        _sane(flush["baseline"], n)
        _sane(flush["ours"], n)
        assert flush["baseline"]["outcome"] == "created"
        assert sum(flush["ours"]["requests"]) == n
        collect = results["collect"][str(n)]
        _sane(collect["baseline"], n)
        _sane(collect["ours"], n)

    e2e = results["end_to_end"]
    assert e2e["seconds"] > 0 and e2e["batches"] >= 1
    assert len(e2e["stages"]) == 8 and all(s["seconds"] >= 0 for s in e2e["stages"])

    assert [t["target"] for t in results["targets"]] == [name for name, _, _ in TARGETS]
    for target in results["targets"]:
        if target["target"].startswith("collect RSS growth") and len(results["sizes"]) < 2:
            continue
        assert target["value"] is not None and target["met"] in (True, False), target
    assert "| target |" in completed.stdout

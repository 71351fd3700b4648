"""The bench reports the median of interleaved ingest runs, not a lucky or unlucky one."""

from __future__ import annotations

from bench.run import _cpu_note, _median_run, table


def _run(seconds: float, tag: str) -> dict[str, object]:
    return {"items": 1_000, "seconds": seconds, "peak_rss_mb": 100.0, "tag": tag}


def test_the_median_run_is_reported_with_every_run_time() -> None:
    chosen = _median_run([_run(5.0, "slow"), _run(3.0, "fast"), _run(4.0, "middle")])
    assert chosen["tag"] == "middle"
    assert chosen["runs_seconds"] == [5.0, 3.0, 4.0]  # in the order they ran


def test_an_even_count_reports_the_lower_middle_run() -> None:
    runs = [_run(4.0, "b"), _run(2.0, "a"), _run(9.0, "d"), _run(6.0, "c")]
    assert _median_run(runs)["tag"] == "b"
    assert _median_run([_run(7.0, "only")])["tag"] == "only"


def test_the_runs_do_not_change_the_inputs() -> None:
    runs = [_run(2.0, "a"), _run(1.0, "b"), _run(3.0, "c")]
    _median_run(runs)
    assert all("runs_seconds" not in run for run in runs)


def test_the_table_names_the_runs_behind_a_median() -> None:
    results = {
        "date": "2026-11-27T00:00:00+00:00",
        "machine": {"cores": 2, "cpu": "x", "memory_gb": 1.0, "platform": "p"},
        "versions": {},
        "ingest": {
            "1000": {
                "baseline": {
                    **_median_run([_run(1.0, "a"), _run(2.0, "b"), _run(3.0, "c")]),
                    "items_per_s": 500.0,
                    "us_per_item": 2_000.0,
                },
            }
        },
        "flush": {},
        "collect": {},
    }
    assert "median of 1.00, 2.00, 3.00 s" in table(results)


def test_the_cpu_note_says_how_busy_the_machine_was() -> None:
    side = {"seconds": 2.0, "cpu_seconds": 1.5, "machine_busy_seconds": 3.0}
    assert _cpu_note(side, {"cores": 2}) == "CPU 1.50 s, machine 75% busy"
    assert _cpu_note({"seconds": 2.0, "cpu_seconds": 1.5}, {"cores": 2}) == "CPU 1.50 s"
    assert _cpu_note({"seconds": 2.0}, {"cores": 2}) == ""
    short = {"seconds": 0.01, "cpu_seconds": 0.02, "machine_busy_seconds": 0.03}
    assert _cpu_note(short, {"cores": 2}) == "CPU 0.02 s"  # ticks too coarse for a share

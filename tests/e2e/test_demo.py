"""The demo as a user runs it: the installed console script, every part a real process."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ARTICLE_ROWS = [
    "INV-001 -> IT         | Rs 124500  | AWS cloud infrastructure costs",
    "INV-002 -> HR         | Rs 45000   | Job posting recruitment platform",
    "INV-003 -> Admin      | Rs 285000  | Hotel conference offsite room  *** APPROVAL REQUIRED ***",
    "INV-004 -> Marketing  | Rs 78000   | Adobe design software license",
    "INV-005 -> Finance    | Rs 850000  | EY consulting risk assessment  *** APPROVAL REQUIRED ***",
]


def console_script() -> str:
    found = shutil.which("invoice-batch", path=str(Path(sys.executable).parent))
    assert found, "the console script is installed next to the interpreter"
    return found


def test_demo_prints_the_articles_table_and_exits_zero(tmp_path: Path) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [console_script(), "demo"], cwd=tmp_path, capture_output=True, text=True, timeout=180
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert "Submitted 5 invoices" in lines
    assert any(re.fullmatch(r"Batch ID: msgbatch_[A-Za-z0-9]{24}", line) for line in lines)
    assert "Status: ended       | Done: 5 | Remaining: 0" in lines
    assert any(
        re.fullmatch(r"Status: in_progress \| Done: [1-4] \| Remaining: [1-4]", line)
        for line in lines
    )
    start = lines.index("=== INVOICE CLASSIFICATION RESULTS ===")
    assert lines[start + 1 : start + 6] == ARTICLE_ROWS
    assert any(line.startswith("Estimated cost: $") for line in lines)
    print(f"\ndemo took {elapsed:.1f} s")


def test_cli_errors_are_one_line_with_exit_code_two(tmp_path: Path) -> None:
    env = {"PATH": str(Path(sys.executable).parent), "BATCH_MAX_REQUESTS": "999999"}
    result = subprocess.run(
        [console_script(), "config", "show"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "BATCH_MAX_REQUESTS" in result.stderr and "Traceback" not in result.stderr
    missing = subprocess.run(
        [console_script(), "produce", str(tmp_path / "nope.jsonl")],
        cwd=tmp_path,
        env={"PATH": env["PATH"]},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_config_show_masks_secrets(tmp_path: Path) -> None:
    env = {
        "PATH": str(Path(sys.executable).parent),
        "ANTHROPIC_API_KEY": "sk-ant-very-secret",
        "DATABASE_URL": "postgresql+psycopg://app:pw-secret-1@db/ap",
    }
    result = subprocess.run(
        [console_script(), "config", "show"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert "sk-ant-very-secret" not in result.stdout and "pw-secret-1" not in result.stdout
    assert "ANTHROPIC_API_KEY=**********" in result.stdout
    assert "DATABASE_URL=postgresql+psycopg://app:***@db/ap" in result.stdout

"""Running the installed ``invoice-batch`` console script as a user does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path


def console_script() -> str:
    found = shutil.which("invoice-batch", path=str(Path(sys.executable).parent))
    assert found, "the console script is installed next to the interpreter"
    return found


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment without any setting of ours leaking in from the shell."""
    ours = ("KAFKA_", "DATABASE_URL", "ANTHROPIC_", "SMTP_", "SUMMARY_", "INVOICE_BATCH_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    return {**env, **(extra or {})}


def start(args: list[str], env: Mapping[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [console_script(), *args],
        env=dict(env),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(
    args: list[str], env: Mapping[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [console_script(), *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )

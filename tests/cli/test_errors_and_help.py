"""Mistakes a person can make are one line naming what to fix, exit code 2, no traceback;
every command's --help carries examples."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer.main

from invoice_batch.broker import free_port
from invoice_batch.cli import app
from invoice_batch.settings import ConfigError, load_settings
from tests.cli.console import clean_env, run, start


def test_every_mistake_a_person_can_make_is_one_line_naming_the_setting_with_exit_code_2(
    tmp_path: Path,
) -> None:
    sqlite = f"sqlite:///{tmp_path / 'store.db'}"
    dead = f"127.0.0.1:{free_port()}"
    cases: list[tuple[list[str], dict[str, str], str]] = [
        (["config", "show"], {"BATCH_MAX_REQUESTS": "999999"}, "BATCH_MAX_REQUESTS: "),
        (
            ["produce", str(tmp_path / "seed.jsonl")],
            {"KAFKA_BOOTSTRAP_SERVERS": dead},
            f"KAFKA_BOOTSTRAP_SERVERS: no broker answered at {dead}",
        ),
        (["produce", "missing.csv"], {}, "missing.csv: no such file"),
        (
            ["status"],
            {"DATABASE_URL": "postgresql+psycopg://ap:hunter22@127.0.0.1:1/ap"},
            "DATABASE_URL: cannot connect to postgresql+psycopg://ap:***@127.0.0.1:1/ap",
        ),
        (["report"], {"DATABASE_URL": "mysql+nodriver://x/y"}, "DATABASE_URL: not a usable"),
        (["flush", "--now"], {"DATABASE_URL": sqlite}, "ANTHROPIC_API_KEY: required"),
        (["cancel", "msgbatch_x"], {"DATABASE_URL": sqlite}, "ANTHROPIC_API_KEY: required"),
        (["report", "--since", "yesterday"], {"DATABASE_URL": sqlite}, "--since: expected"),
        (["report", "--format", "xml"], {"DATABASE_URL": sqlite}, "--format: expected"),
        (["report", "--send"], {"DATABASE_URL": sqlite}, "SMTP_HOST, SUMMARY_FROM and"),
        (["dlq", "replay"], {"DATABASE_URL": sqlite}, "choose records with --from/--to"),
        (["--config", "nope.toml", "status"], {}, "config file nope.toml does not exist"),
    ]
    (tmp_path / "seed.jsonl").write_text('{"invoice_id": "A-1"}\n')
    # All at once: each is a fresh interpreter, and the broker case waits its timeout.
    running = [(case, start(case[0], clean_env(case[1]), tmp_path)) for case in cases]
    for (args, env, expected), process in running:
        stdout, stderr = process.communicate(timeout=60)
        where = f"{' '.join(args)} with {env}: {stderr!r}"
        assert process.returncode == 2, where
        assert stderr.startswith("invoice-batch: " + expected) or expected in stderr, where
        assert stderr.strip().count("\n") == 0 and "Traceback" not in stderr, where
        assert "hunter22" not in stderr + stdout


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SMTP_SECURITY": "ssl"}, "SMTP_SECURITY"),
        ({"USD_RATES": "INR=0"}, "USD_RATES"),
        ({"USD_RATES": "rupees"}, "USD_RATES"),
        ({"SUMMARY_TO_DEPARTMENTS": "IT"}, "SUMMARY_TO_DEPARTMENTS"),
        ({"SUMMARY_TO": "ap-team"}, "SUMMARY_TO"),
        ({"SUMMARY_AT": "6am"}, "SUMMARY_AT"),
        ({"RESULTS_RETENTION_DAYS": "0"}, "RESULTS_RETENTION_DAYS"),
        ({"SMTP_PORT": "70000"}, "SMTP_PORT"),
    ],
)
def test_a_bad_summary_or_retention_setting_is_one_line_naming_it(
    env: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert str(caught.value).startswith(named + ":") and "\n" not in str(caught.value)


def test_debug_shows_the_traceback_of_an_unexpected_failure(tmp_path: Path) -> None:
    # A directory where the SQLite file should be: not a setting mistake, exit 1.
    (tmp_path / "store.db").mkdir()
    env = clean_env({"DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}"})
    plain = run(["report"], env, tmp_path)
    assert plain.returncode == 2 and "DATABASE_URL: cannot connect" in plain.stderr
    assert "Traceback" not in plain.stderr


def _commands(group: Any, prefix: list[str]) -> list[list[str]]:
    found = []
    for name, command in sorted(group.commands.items()):
        if hasattr(command, "commands"):
            found += _commands(command, [*prefix, name])
        else:
            found.append([*prefix, name])
    return found


COMMANDS = _commands(typer.main.get_group(app), [])


def test_every_command_is_listed_here() -> None:
    names = {" ".join(c) for c in COMMANDS}
    assert {"report", "status", "produce", "dlq list", "dlq show", "dlq replay"} <= names
    assert {"flush", "cancel", "config show", "db upgrade", "consume", "collect"} <= names


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_help_of_every_command_shows_an_example(command: list[str]) -> None:
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, [*command, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    assert re.search(r"invoice-batch( --\w+ \S+)? " + re.escape(command[0]), result.output), (
        result.output
    )


def test_the_console_script_prints_help_and_exit_code_0(tmp_path: Path) -> None:
    result = run(["dlq", "--help"], clean_env(), tmp_path)
    assert result.returncode == 0
    assert "$ invoice-batch dlq replay --reason unknown_currency" in result.stdout
    assert isinstance(result, subprocess.CompletedProcess)

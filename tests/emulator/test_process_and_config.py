"""The process: restarts keep state, the CLI and EMULATOR_* variables configure it,
and it stops cleanly on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from invoice_batch_emulator.__main__ import build_parser, config_from_args, main
from invoice_batch_emulator.config import ConfigError, EmulatorConfig, FaultSettings, HttpFault
from invoice_batch_emulator.testing import running_emulator

from .conftest import make_client, request_log, simple_requests, wait_until_ended


def test_a_restarted_emulator_continues_a_batch_mid_way(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    with (
        running_emulator(state_dir=state, processing_seconds=3.0) as url,
        make_client(url) as client,
    ):
        batch = client.messages.batches.create(requests=simple_requests(30))
        while client.messages.batches.retrieve(batch.id).request_counts.succeeded < 5:
            time.sleep(0.05)
        before = client.messages.batches.retrieve(batch.id)
    assert before.processing_status == "in_progress"
    with running_emulator(state_dir=state, processing_seconds=3.0) as url:
        with make_client(url) as client:
            after = client.messages.batches.retrieve(batch.id)
            assert after.created_at == before.created_at
            assert after.request_counts.succeeded >= before.request_counts.succeeded
            ended = wait_until_ended(client, batch.id)
            assert ended.request_counts.succeeded == 30
            results = list(client.messages.batches.results(batch.id))
        assert len(results) == 30
        assert len(request_log(url)) == 30


def test_without_a_state_dir_a_restart_starts_empty() -> None:
    with running_emulator() as url, make_client(url) as client:
        client.messages.batches.create(requests=simple_requests(1))
    with running_emulator() as url, make_client(url) as client:
        assert client.messages.batches.list().data == []


def test_sigterm_stops_the_process_cleanly_with_status_0(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "invoice_batch_emulator", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("emulator listening on http://127.0.0.1:")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0
    process.stdout.close()


def test_main_returns_2_for_a_bad_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--port", "0", "--errored-api-rate", "3"]) == 2
    assert "errored_api_rate" in capsys.readouterr().err


def test_flags_override_environment_variables() -> None:
    args = build_parser().parse_args(
        ["--port", "9000", "--processing-seconds", "1.5", "--http-fault", "create:drop:n=2"]
    )
    env = {"EMULATOR_PORT": "8000", "EMULATOR_SEED": "5", "EMULATOR_ERRORED_API_RATE": "0.1"}
    config = config_from_args(args, env)
    assert config.port == 9000
    assert config.seed == 5
    assert config.processing_seconds == 1.5
    assert config.faults.errored_api_rate == 0.1
    assert config.faults.http == (HttpFault(endpoint="create", kind="drop", count=2),)


def test_the_environment_round_trips_every_knob() -> None:
    config = EmulatorConfig(
        host="0.0.0.0",
        port=1234,
        api_key="k",
        state_dir="/tmp/s",
        processing_seconds=2.0,
        per_request_seconds=0.01,
        time_scale=100.0,
        seed=9,
        faults=FaultSettings(
            http=(HttpFault(endpoint="results", kind="slow", delay_seconds=3.0),),
            missing_result_rate=0.05,
        ),
    )
    assert EmulatorConfig.from_env(config.to_env()) == config


@pytest.mark.parametrize(
    "spec",
    ["create", "nowhere:drop", "create:explode", "list:lost_create", "create:drop:p=2"],
)
def test_malformed_http_fault_specs_are_refused(spec: str) -> None:
    with pytest.raises(ConfigError):
        HttpFault.parse(spec)

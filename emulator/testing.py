"""Start a real emulator process for tests, demos, chaos runs and benchmarks."""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from .config import EmulatorConfig

READY_PREFIX = "emulator listening on "
START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0


def _read_ready_line(process: subprocess.Popen[str], deadline: float) -> str:
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    try:
        while time.monotonic() < deadline:
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            line = process.stdout.readline()
            if not line:
                raise RuntimeError(
                    f"emulator exited with status {process.wait()} before it was ready"
                )
            if line.startswith(READY_PREFIX):
                return line[len(READY_PREFIX) :].strip()
    finally:
        selector.close()
    raise TimeoutError("emulator did not report ready in time")


@contextmanager
def running_emulator(**config_overrides: Any) -> Iterator[str]:
    """Run the emulator in a subprocess on a free loopback port; yield its base URL.

    Overrides are EmulatorConfig fields (`processing_seconds=0.5`, `state_dir=...`)
    or fault settings (`errored_api_rate=0.1`, `http=["create:lost_create:count=1"]`).
    The process gets SIGTERM on exit (SIGKILL if it has not stopped in 10 s).
    """
    overrides = {"port": 0, **config_overrides}
    config = EmulatorConfig().with_overrides(**overrides)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMULATOR_")}
    env.update(config.to_env())
    process = subprocess.Popen(
        [sys.executable, "-m", "invoice_batch_emulator"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        base_url = _read_ready_line(process, deadline)
        while True:
            try:
                if httpx.get(f"{base_url}/_emulator/health", timeout=2.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("emulator did not answer in time")
            time.sleep(0.05)
        yield base_url
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()

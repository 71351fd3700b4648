"""Process wiring: state, background worker and HTTP server in one place.

`serve` blocks until SIGTERM or SIGINT, then stops taking connections, lets
in-flight calls finish (3 s at most), stops the worker and returns normally.
"""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import tempfile
from pathlib import Path
from types import FrameType

import uvicorn

from .app import EmulatorApp
from .config import EmulatorConfig
from .faults import FaultState
from .progress import BatchWorker, CreatesInFlight
from .store import Store

log = logging.getLogger(__name__)

GRACEFUL_SHUTDOWN_SECONDS = 3


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit this. Without it every response (headers and body
    # are separate writes) waits ~40 ms for the client's delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def _ignore_signal(_signum: int, _frame: FrameType | None) -> None:
    """uvicorn re-raises the signal it shut down on; this makes that a no-op so
    the process ends with status 0 after a clean shutdown."""


def serve(config: EmulatorConfig) -> None:
    """Run the emulator until SIGTERM/SIGINT. Prints
    `emulator listening on http://HOST:PORT` to stdout once it accepts calls."""
    temp_dir = None if config.state_dir else tempfile.mkdtemp(prefix="batch-emulator-")
    state_dir = Path(config.state_dir or temp_dir or ".")
    store = Store(state_dir)
    if config.seed is not None:
        salt, fault_seed = f"seed:{config.seed}", config.seed
    else:
        salt = f"salt:{store.meta_value('salt')}"
        fault_seed = int(store.meta_value("fault_seed"))
    faults = FaultState(config.faults, fault_seed)
    creates = CreatesInFlight()
    worker = BatchWorker(store, config, faults, salt, creates)
    sock = _bind(config.host, config.port)
    port = sock.getsockname()[1]
    shown_host = f"[{config.host}]" if ":" in config.host else config.host

    def announce() -> None:
        print(f"emulator listening on http://{shown_host}:{port}", flush=True)

    app = EmulatorApp(
        store=store,
        config_api_key=config.api_key,
        faults=faults,
        salt=salt,
        config=config,
        on_ready=announce,
        creates=creates,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            lifespan="on",
            log_level="warning",
            access_log=False,
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        )
    )
    previous = {sig: signal.signal(sig, _ignore_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    worker.start()
    try:
        server.run(sockets=[sock])
    finally:
        worker.stop()
        worker.join(timeout=10)
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)

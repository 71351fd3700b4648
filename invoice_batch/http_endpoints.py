"""``/metrics``, ``/healthz`` and ``/readyz`` on the service's metrics port.

A threading WSGI server in a daemon thread: scrapes never wait on the service loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

# (ready, reason): reason says what is not reachable when not ready.
Readiness = Callable[[], tuple[bool, str]]


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class EndpointServer:
    def __init__(
        self, port: int, registry: CollectorRegistry, readiness: Readiness, host: str = "0.0.0.0"
    ) -> None:
        metrics_app = make_wsgi_app(registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if path == "/healthz":
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [b"ok\n"]
            if path == "/readyz":
                ready, reason = readiness()
                status = "200 OK" if ready else "503 Service Unavailable"
                start_response(status, [("Content-Type", "text/plain")])
                return [(("ready" if ready else "not ready: " + reason) + "\n").encode()]
            return metrics_app(environ, start_response)  # type: ignore[no-any-return]

        self._server = make_server(host, port, app, _ThreadingWSGIServer, _QuietHandler)
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, daemon=True, name="metrics-http"
        )

    def start(self) -> EndpointServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

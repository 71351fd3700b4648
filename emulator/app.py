"""The ASGI application: routing, auth, faults and the endpoint handlers.

Written against raw ASGI (not a framework router) because three behaviours need
the bare protocol: streaming a 256 MB body into a parser thread, streaming
results out of SQLite, and dropping a connection without any response.
Every SQLite call runs in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qs

import anyio.to_thread

from .config import ConfigError, EmulatorConfig, FaultSettings, HttpFault
from .faults import FaultState
from .ingest import MAX_BODY_BYTES, BodyAborted, BodyPipe, CreateRejected, ingest_create
from .outcomes import terminal_line
from .progress import CreatesInFlight
from .store import Store
from .wire import STATUS_BY_ERROR, BatchRow, ErrorType, error_body, new_request_id, rfc3339

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
T = TypeVar("T")

KNOWN_VERSIONS = frozenset({"2023-01-01", "2023-06-01", "2026-10-21"})
BATCH_PATH = re.compile(r"^/v1/messages/batches/([^/]+)$")
CANCEL_PATH = re.compile(r"^/v1/messages/batches/([^/]+)/cancel$")
RESULTS_PATH = re.compile(r"^/v1/messages/batches/([^/]+)/results$")


class ApiError(Exception):
    def __init__(
        self, error_type: ErrorType, message: str, headers: Mapping[str, str] | None = None
    ):
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.headers = dict(headers or {})


@dataclass
class Call:
    """One HTTP call as the handlers see it."""

    scope: Scope
    receive: Receive
    send: Send
    request_id: str
    headers: dict[str, str]
    query: dict[str, list[str]]

    @property
    def base_url(self) -> str:
        host = self.headers.get("host")
        if not host:
            server = self.scope.get("server") or ("127.0.0.1", 80)
            host = f"{server[0]}:{server[1]}"
        return f"http://{host}"

    async def body_chunks(self) -> AsyncIterator[bytes]:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return

    async def read_body(self, limit: int = 10 * 1024 * 1024) -> bytes:
        parts: list[bytes] = []
        size = 0
        async for chunk in self.body_chunks():
            size += len(chunk)
            if size > limit:
                raise ApiError("request_too_large", "Request body too large")
            parts.append(chunk)
        return b"".join(parts)

    async def drain(self) -> None:
        async for _ in self.body_chunks():
            pass

    def _base_headers(self, content_type: bytes) -> list[tuple[bytes, bytes]]:
        return [(b"content-type", content_type), (b"request-id", self.request_id.encode())]

    async def send_json(
        self, status: int, body: Any, headers: Mapping[str, str] | None = None
    ) -> None:
        data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        raw = self._base_headers(b"application/json")
        raw.append((b"content-length", str(len(data)).encode()))
        raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        await self.send({"type": "http.response.start", "status": status, "headers": raw})
        await self.send({"type": "http.response.body", "body": data})

    async def send_error(self, error: ApiError) -> None:
        status = STATUS_BY_ERROR[error.error_type]
        if error.error_type == "request_too_large":
            # This one comes from the edge in front of the API, with a bare body.
            body: dict[str, Any] = {"error": {"type": error.error_type, "message": error.message}}
        else:
            body = error_body(error.error_type, error.message, self.request_id)
        await self.send_json(status, body, error.headers)

    async def send_stream(self, content_type: bytes, chunks: Iterator[bytes]) -> None:
        """Stream chunks produced by a blocking iterator (SQLite reads) in a thread."""
        await self.send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": self._base_headers(content_type),
            }
        )
        gone = asyncio.Event()

        async def watch_disconnect() -> None:
            while True:
                message = await self.receive()
                if message["type"] == "http.disconnect":
                    gone.set()
                    return

        watcher = asyncio.create_task(watch_disconnect())
        try:
            step = functools.partial(next, chunks, None)
            while not gone.is_set():
                chunk = await anyio.to_thread.run_sync(step)
                if chunk is None:
                    break
                await self.send({"type": "http.response.body", "body": chunk, "more_body": True})
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            close = getattr(chunks, "close", None)
            if close is not None:
                await anyio.to_thread.run_sync(close)

    def drop_connection(self) -> None:
        """Close the socket with no response at all (what a dead load balancer does).

        Reaches uvicorn's per-request cycle through the bound `send`; the cycle is
        marked disconnected so uvicorn does not try to answer with a 500.
        """
        cycle = getattr(self.send, "__self__", None)
        transport = getattr(cycle, "transport", None)
        if transport is None:
            raise RuntimeError("cannot drop the connection with this ASGI server")
        transport.abort()
        cycle.disconnected = True  # type: ignore[union-attr]


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    return await anyio.to_thread.run_sync(functools.partial(fn, *args))


class EmulatorApp:
    """The ASGI callable. `on_ready` runs once at lifespan startup."""

    def __init__(
        self,
        *,
        store: Store,
        config_api_key: str | None,
        faults: FaultState,
        salt: str,
        config: EmulatorConfig,
        on_ready: Callable[[], None] | None = None,
        creates: CreatesInFlight | None = None,
    ) -> None:
        self.store = store
        self.creates = creates or CreatesInFlight()
        self.api_key = config_api_key
        self.faults = faults
        self.salt = salt
        self.config = config
        self.on_ready = on_ready

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = parse_qs(scope.get("query_string", b"").decode(), keep_blank_values=True)
        call = Call(scope, receive, send, new_request_id(), headers, query)
        try:
            await self._dispatch(call)
        except ApiError as error:
            await call.send_error(error)
        except Exception:
            log.exception("unexpected failure serving %s %s", scope["method"], scope["path"])
            await call.send_error(ApiError("api_error", "Internal server error"))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.on_ready is not None:
                    self.on_ready()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    # --- routing ------------------------------------------------------------------

    async def _dispatch(self, call: Call) -> None:
        method: str = call.scope["method"]
        path: str = call.scope["path"].rstrip("/") or "/"
        if path.startswith("/_emulator/"):
            await self._admin(call, method, path)
            return
        route = self._route(method, path)
        if route is None:
            raise ApiError("not_found_error", "Not found")
        endpoint, handler, batch_id = route
        self._authenticate(call)
        api_version = self._api_version(call)
        rule = self.faults.pick_http_fault(endpoint)
        if rule is not None and rule.kind != "lost_create":
            if endpoint == "create":
                await call.drain()
            if await self._apply_fault(call, rule):
                return
        await handler(call, batch_id, api_version, rule)

    def _route(
        self, method: str, path: str
    ) -> tuple[str, Callable[[Call, str, str, HttpFault | None], Awaitable[None]], str] | None:
        if path == "/v1/messages/batches":
            if method == "POST":
                return "create", self._create, ""
            if method == "GET":
                return "list", self._list, ""
            raise ApiError("not_found_error", f"Method {method} not allowed")
        for pattern, verb, endpoint, handler in (
            (RESULTS_PATH, "GET", "results", self._results),
            (CANCEL_PATH, "POST", "cancel", self._cancel),
        ):
            match = pattern.match(path)
            if match:
                if method != verb:
                    raise ApiError("not_found_error", f"Method {method} not allowed")
                return endpoint, handler, match.group(1)
        match = BATCH_PATH.match(path)
        if match:
            if method == "GET":
                return "retrieve", self._retrieve, match.group(1)
            if method == "DELETE":
                return "delete", self._delete, match.group(1)
            raise ApiError("not_found_error", f"Method {method} not allowed")
        return None

    def _authenticate(self, call: Call) -> None:
        authorization = call.headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            key, style = authorization[7:].strip(), "authorization"
        else:
            key, style = call.headers.get("x-api-key", "").strip(), "x-api-key"
        if not key:
            raise ApiError("authentication_error", "x-api-key header is required")
        if self.api_key is not None and key != self.api_key:
            raise ApiError("authentication_error", f"invalid {style}")

    def _api_version(self, call: Call) -> str:
        version = call.headers.get("anthropic-version")
        if not version:
            raise ApiError("invalid_request_error", "anthropic-version: header is required")
        if version not in KNOWN_VERSIONS:
            raise ApiError(
                "invalid_request_error",
                f"anthropic-version: {version!r} is not a valid version",
            )
        return version

    async def _apply_fault(self, call: Call, rule: HttpFault) -> bool:
        """Serve the fault; True when the call is finished (False: go on, e.g. slow)."""
        match rule.kind:
            case "slow":
                await asyncio.sleep(rule.delay_seconds)
                return False
            case "drop":
                call.drop_connection()
                return True
            case "rate_limit":
                retry_after = rule.retry_after_seconds
                shown = (
                    str(int(retry_after)) if retry_after == int(retry_after) else str(retry_after)
                )
                raise ApiError(
                    "rate_limit_error",
                    "Number of requests has exceeded your rate limit. Please try again later.",
                    {"retry-after": shown},
                )
            case "api_error":
                raise ApiError("api_error", "Internal server error")
            case "overloaded":
                raise ApiError("overloaded_error", "Overloaded")
            case "lost_create":
                return False
        return False

    # --- endpoints ------------------------------------------------------------------

    async def _get_batch(self, batch_id: str) -> BatchRow:
        def read() -> BatchRow | None:
            return Store.get_batch(self.store.local(), batch_id)

        batch = await in_thread(read)
        if batch is None:
            raise ApiError("not_found_error", f"message_batch_id: {batch_id} not found")
        return batch

    async def _create(self, call: Call, _: str, api_version: str, rule: HttpFault | None) -> None:
        with self.creates.running():
            await self._receive_create(call, api_version, rule)

    async def _receive_create(self, call: Call, api_version: str, rule: HttpFault | None) -> None:
        declared = call.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            await call.drain()
            raise ApiError("request_too_large", _too_large_message())
        pipe = BodyPipe()
        settings = self.faults.settings
        loop = asyncio.get_running_loop()
        parser = loop.run_in_executor(
            None,
            functools.partial(
                ingest_create,
                self.store,
                pipe,
                config=self.config,
                salt=self.salt,
                api_version=api_version,
                expire_batch_rate=settings.expire_batch_rate,
                expire_done_fraction=settings.expire_done_fraction,
            ),
        )
        size = 0
        too_large = False
        async for chunk in call.body_chunks():
            size += len(chunk)
            if too_large:
                continue
            if size > MAX_BODY_BYTES:
                too_large = True
                await pipe.abort()
                continue
            await pipe.feed(chunk)
        if not too_large:
            await pipe.finish()
        try:
            batch = await parser
        except BodyAborted:
            raise ApiError("request_too_large", _too_large_message()) from None
        except CreateRejected as exc:
            raise ApiError("invalid_request_error", str(exc)) from None
        if too_large:  # the parser finished before the extra bytes arrived
            await in_thread(self._forget_batch, batch.seq)
            raise ApiError("request_too_large", _too_large_message())
        if rule is not None and rule.kind == "lost_create":
            # Stored and logged; the client never learns the id.
            if rule.lost_as == "drop":
                call.drop_connection()
                return
            raise ApiError("api_error", "Internal server error")
        await call.send_json(200, batch.as_wire(call.base_url, time.time()))

    def _forget_batch(self, seq: int) -> None:
        conn = self.store.connect()
        try:
            conn.execute("DELETE FROM requests WHERE batch_seq = ?", (seq,))
            conn.execute("DELETE FROM batches WHERE seq = ?", (seq,))
            conn.commit()
        finally:
            conn.close()

    async def _retrieve(self, call: Call, batch_id: str, _v: str, _r: HttpFault | None) -> None:
        batch = await self._get_batch(batch_id)
        await call.send_json(200, batch.as_wire(call.base_url, time.time()))

    async def _list(self, call: Call, _id: str, _v: str, _r: HttpFault | None) -> None:
        limit_raw = call.query.get("limit", ["20"])[-1]
        try:
            limit = int(limit_raw)
        except ValueError:
            raise ApiError(
                "invalid_request_error", "limit: Input should be a valid integer"
            ) from None
        if not 1 <= limit <= 1000:
            raise ApiError(
                "invalid_request_error",
                "limit: Input should be greater than or equal to 1 and less than or equal to 1000",
            )
        after_id = (call.query.get("after_id") or [""])[-1] or None
        before_id = (call.query.get("before_id") or [""])[-1] or None
        if after_id and before_id:
            raise ApiError("invalid_request_error", "Cannot specify both before_id and after_id")

        def read() -> tuple[list[BatchRow], bool]:
            conn = self.store.local()
            after_seq = before_seq = None
            for name, value in (("after_id", after_id), ("before_id", before_id)):
                if value is None:
                    continue
                seq = Store.cursor_seq(conn, value)
                if seq is None:
                    raise ApiError("invalid_request_error", f"{name}: unknown id {value}")
                if name == "after_id":
                    after_seq = seq
                else:
                    before_seq = seq
            return Store.list_page(conn, limit, after_seq, before_seq)

        page, has_more = await in_thread(read)
        now = time.time()
        await call.send_json(
            200,
            {
                "data": [b.as_wire(call.base_url, now) for b in page],
                "has_more": has_more,
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
            },
        )

    async def _cancel(self, call: Call, batch_id: str, _v: str, _r: HttpFault | None) -> None:
        await self._get_batch(batch_id)

        def mark() -> BatchRow | None:
            conn = self.store.local()
            conn.execute(
                "UPDATE batches SET cancel_initiated_at = ? WHERE id = ? "
                "AND ended_at IS NULL AND cancel_initiated_at IS NULL",
                (time.time(), batch_id),
            )
            conn.commit()
            return Store.get_batch(conn, batch_id)

        batch = await in_thread(mark)
        if batch is None:
            raise ApiError("not_found_error", f"message_batch_id: {batch_id} not found")
        await call.send_json(200, batch.as_wire(call.base_url, time.time()))

    async def _delete(self, call: Call, batch_id: str, _v: str, _r: HttpFault | None) -> None:
        batch = await self._get_batch(batch_id)
        if batch.status != "ended":
            raise ApiError(
                "invalid_request_error",
                f"Message Batch {batch_id} cannot be deleted while it is {batch.status}; "
                "cancel it and wait until it has ended.",
            )

        def mark() -> None:
            conn = self.store.local()
            conn.execute("UPDATE batches SET deleted = 1 WHERE id = ?", (batch_id,))
            conn.commit()

        await in_thread(mark)
        await call.send_json(200, {"id": batch_id, "type": "message_batch_deleted"})

    async def _results(self, call: Call, batch_id: str, _v: str, _r: HttpFault | None) -> None:
        batch = await self._get_batch(batch_id)
        if batch.status != "ended":
            raise ApiError(
                "invalid_request_error",
                f"Message Batch {batch_id} has not finished processing; results are available "
                "once processing_status is ended.",
            )
        if batch.archived_at(time.time()) is not None:
            raise ApiError("not_found_error", f"Results of Message Batch {batch_id} were archived")
        await call.send_stream(b"application/x-jsonl", self._result_chunks(batch.seq))

    def _result_chunks(self, batch_seq: int) -> Iterator[bytes]:
        conn = self.store.connect()
        try:
            for rows in Store.iter_result_rows(conn, batch_seq):
                lines: list[bytes] = []
                for custom_id, state, line_fault, stored in rows:
                    if line_fault == "missing":
                        continue
                    if state in ("canceled", "expired"):
                        line = terminal_line(custom_id, state)  # type: ignore[arg-type]
                    elif stored is not None:
                        line = stored
                    else:
                        continue
                    lines.append(line)
                    if line_fault == "duplicate":
                        lines.append(line)
                if lines:
                    yield b"\n".join(lines) + b"\n"
        finally:
            conn.close()

    # --- admin ----------------------------------------------------------------------

    async def _admin(self, call: Call, method: str, path: str) -> None:
        if path == "/_emulator/health" and method == "GET":
            await call.send_json(200, {"status": "ok"})
        elif path == "/_emulator/requests" and method == "GET":
            await call.send_stream(b"application/x-jsonl", self._request_log_chunks())
        elif path == "/_emulator/faults" and method == "GET":
            await call.send_json(200, self.faults.settings.to_dict())
        elif path == "/_emulator/faults" and method == "POST":
            raw = await call.read_body()
            try:
                data = json.loads(raw or b"{}")
                if not isinstance(data, dict):
                    raise ConfigError("fault settings must be a JSON object")
                settings = FaultSettings.from_mapping(data, self.faults.settings)
            except (ValueError, ConfigError) as exc:
                raise ApiError("invalid_request_error", str(exc)) from None
            self.faults.replace(settings)
            await call.send_json(200, settings.to_dict())
        elif path == "/_emulator/reset" and method == "POST":
            await call.drain()
            self.faults.replace(FaultSettings())
            await call.send_json(200, FaultSettings().to_dict())
        else:
            raise ApiError("not_found_error", "Not found")

    def _request_log_chunks(self) -> Iterator[bytes]:
        conn = self.store.connect()
        try:
            for rows in Store.iter_request_log(conn):
                yield b"".join(
                    json.dumps(
                        {
                            "batch_id": batch_id,
                            "custom_id": custom_id,
                            "created_at": rfc3339(created_at),
                            "create_seq": seq,
                        },
                        separators=(",", ":"),
                    ).encode()
                    + b"\n"
                    for batch_id, custom_id, created_at, seq in rows
                )
        finally:
            conn.close()


def _too_large_message() -> str:
    return f"Request exceeds the maximum allowed size of {MAX_BODY_BYTES} bytes."

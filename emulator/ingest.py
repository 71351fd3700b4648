"""Accepting a create: stream-parse the request body into SQLite rows.

The body (up to 256 MB) is never held whole: the event loop feeds received
chunks into a small bounded queue, a worker thread parses them with ijson and
inserts request rows in chunks. The synchronous rules (1..100,000 requests,
custom_id pattern and uniqueness, params an object) are checked while parsing;
the first broken one rejects the whole create and its rows are deleted.
"""

from __future__ import annotations

import asyncio
import json
import queue
import re
import threading
import time
from typing import Any

import ijson

from .config import EmulatorConfig
from .outcomes import roll
from .store import Store
from .wire import BatchRow, derived_id

MAX_REQUESTS = 100_000
MAX_BODY_BYTES = 256 * 1024 * 1024
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
CUSTOM_ID_PATTERN = "^[a-zA-Z0-9_-]{1,64}$"
# Rows per INSERT transaction: small enough that the background worker gets the
# write lock between chunks of a 100,000-request create.
INSERT_CHUNK = 2000
# Chunks buffered between the event loop and the parser: 32 x ~64 KB.
QUEUE_CHUNKS = 32
HEAD_BYTES = 1 << 20

DAY_SECONDS = 86_400.0
ARCHIVE_DAYS = 29


class CreateRejected(Exception):
    """The create breaks a synchronous rule: 400 invalid_request_error with this message."""


class BodyAborted(Exception):
    """The feeder stopped (body too large or client gone): discard the create."""


_EOF = b""
_ABORT = None


class BodyPipe:
    """A file-like `read()` for the parser thread, fed from the event loop."""

    def __init__(self) -> None:
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=QUEUE_CHUNKS)
        self._eof = False
        # The first HEAD_BYTES read, kept to explain a body that has no requests.
        self.head = bytearray()
        self.bytes_read = 0
        self.consumer_done = threading.Event()

    # --- event loop side ---

    async def _put(self, item: bytes | None) -> None:
        while not self.consumer_done.is_set():
            try:
                self._queue.put_nowait(item)
                return
            except queue.Full:
                await asyncio.sleep(0.0005)

    async def feed(self, chunk: bytes) -> None:
        """Hand one chunk to the parser; returns at once if the parser has stopped."""
        if chunk:
            await self._put(chunk)

    async def finish(self) -> None:
        await self._put(_EOF)

    async def abort(self) -> None:
        await self._put(_ABORT)

    # --- parser thread side ---

    def read(self, size: int = -1) -> bytes:
        if size == 0:  # ijson probes read(0) to learn whether the file gives bytes
            return b""
        if self._eof:
            return b""
        item = self._queue.get()
        if item is _ABORT:
            raise BodyAborted()
        if item == _EOF:
            self._eof = True
        self.bytes_read += len(item)
        if len(self.head) < HEAD_BYTES:
            self.head += item[: HEAD_BYTES - len(self.head)]
        return item

    @property
    def whole_body_in_head(self) -> bool:
        return self._eof and self.bytes_read <= HEAD_BYTES


def _explain_no_requests(body: BodyPipe) -> str:
    """Why a body yielded no requests: the message for a missing, mistyped or
    empty `requests` (or for extra top-level keys), read from the kept head."""
    default = "requests: List should have at least 1 item after validation, not 0"
    if not body.whole_body_in_head:
        return default
    try:
        document = json.loads(bytes(body.head))
    except ValueError:
        return default
    if not isinstance(document, dict):
        return "Input should be a valid dictionary"
    for key in document:
        if key != "requests":
            return f"{key}: Extra inputs are not permitted"
    if "requests" not in document:
        return "requests: Field required"
    if not isinstance(document["requests"], list):
        return "requests: Input should be a valid list"
    return default


def _check_request(index: int, item: Any, seen: set[str]) -> tuple[str, dict[str, Any]]:
    where = f"requests.{index}"
    if not isinstance(item, dict):
        raise CreateRejected(f"{where}: Input should be a valid dictionary")
    for key in item:
        if key not in ("custom_id", "params"):
            raise CreateRejected(f"{where}.{key}: Extra inputs are not permitted")
    if "custom_id" not in item:
        raise CreateRejected(f"{where}.custom_id: Field required")
    custom_id = item["custom_id"]
    if not isinstance(custom_id, str):
        raise CreateRejected(f"{where}.custom_id: Input should be a valid string")
    if not custom_id:
        raise CreateRejected(f"{where}.custom_id: String should have at least 1 character")
    if len(custom_id) > 64:
        raise CreateRejected(f"{where}.custom_id: String should have at most 64 characters")
    if not CUSTOM_ID.match(custom_id):
        raise CreateRejected(
            f"{where}.custom_id: String should match pattern '{CUSTOM_ID_PATTERN}'"
        )
    if custom_id in seen:
        raise CreateRejected(
            f"{where}.custom_id: Duplicate custom_id {custom_id!r}; "
            "custom_id values must be unique within a batch"
        )
    seen.add(custom_id)
    if "params" not in item:
        raise CreateRejected(f"{where}.params: Field required")
    params = item["params"]
    if not isinstance(params, dict):
        raise CreateRejected(f"{where}.params: Input should be a valid dictionary")
    return custom_id, params


def ingest_create(
    store: Store,
    body: BodyPipe,
    *,
    config: EmulatorConfig,
    salt: str,
    api_version: str,
    expire_batch_rate: float,
    expire_done_fraction: float,
) -> BatchRow:
    """Parse the body into a new batch and make it visible; runs in a worker thread.

    Raises CreateRejected (nothing stored), BodyAborted (nothing stored) or
    CreateRejected for malformed JSON.
    """
    conn = store.connect()
    try:
        cursor = conn.execute("INSERT INTO batches (created_at) VALUES (?)", (time.time(),))
        seq = int(cursor.lastrowid or 0)
        conn.commit()
        try:
            count = _insert_requests(conn, seq, body)
            return _publish(
                conn,
                seq,
                count,
                config=config,
                salt=salt,
                api_version=api_version,
                expire_batch_rate=expire_batch_rate,
                expire_done_fraction=expire_done_fraction,
                created_at=time.time(),
            )
        except BaseException:
            conn.rollback()
            conn.execute("DELETE FROM requests WHERE batch_seq = ?", (seq,))
            conn.execute("DELETE FROM batches WHERE seq = ?", (seq,))
            conn.commit()
            raise
    finally:
        body.consumer_done.set()
        conn.close()


def _insert_requests(conn: Any, seq: int, body: BodyPipe) -> int:
    seen: set[str] = set()
    rows: list[tuple[int, int, str, bytes]] = []
    count = 0
    insert = "INSERT INTO requests (batch_seq, idx, custom_id, params) VALUES (?, ?, ?, ?)"
    try:
        # ijson's C backend straight on the pipe: wrapping its events in Python
        # would double the parse time of a 256 MB body.
        for item in ijson.items(body, "requests.item", use_float=True):
            if count < MAX_REQUESTS:
                custom_id, params = _check_request(count, item, seen)
                encoded = json.dumps(params, separators=(",", ":"), ensure_ascii=False).encode()
                rows.append((seq, count, custom_id, encoded))
                if len(rows) >= INSERT_CHUNK:
                    conn.executemany(insert, rows)
                    conn.commit()
                    rows.clear()
            count += 1
    except ijson.JSONError as exc:
        raise CreateRejected(f"Request body is not valid JSON: {exc}") from exc
    if count == 0:
        raise CreateRejected(_explain_no_requests(body))
    if count > MAX_REQUESTS:
        raise CreateRejected(
            f"requests: List should have at most {MAX_REQUESTS} items after validation, not {count}"
        )
    if rows:
        conn.executemany(insert, rows)
        conn.commit()
    return count


def _publish(
    conn: Any,
    seq: int,
    count: int,
    *,
    config: EmulatorConfig,
    salt: str,
    api_version: str,
    expire_batch_rate: float,
    expire_done_fraction: float,
    created_at: float,
) -> BatchRow:
    batch_id = derived_id("msgbatch_", salt, seq)
    day = DAY_SECONDS / config.time_scale
    stall = expire_done_fraction if roll(salt, seq, "expire") < expire_batch_rate else None
    duration = config.processing_seconds + config.per_request_seconds * count
    conn.execute(
        "UPDATE batches SET id = ?, visible = 1, api_version = ?, created_at = ?, "
        "expires_at = ?, archives_at = ?, duration = ?, stall_fraction = ?, request_count = ? "
        "WHERE seq = ?",
        (
            batch_id,
            api_version,
            created_at,
            created_at + day,
            created_at + ARCHIVE_DAYS * day,
            duration,
            stall,
            count,
            seq,
        ),
    )
    conn.commit()
    row = Store.get_batch(conn, batch_id)
    assert row is not None
    return row

"""Accepting a create: stream-parse the request body into SQLite rows.

The body (up to 256 MB) is never held whole: the event loop feeds received
chunks into a small bounded queue, a worker thread parses them and inserts
request rows in chunks. The synchronous rules (1..100,000 requests, custom_id
pattern and uniqueness, params an object) are checked while parsing; the first
broken one rejects the whole create and its rows are deleted.

A body laid out as clients write it (``{"requests": [{"custom_id": ..,
"params": {..}}, ..]}``, any JSON whitespace) is cut into requests by the json
module's C scanner, one value at a time, and each request's ``params`` is
stored as the exact text the client sent: every byte is still parsed once (so
malformed JSON is refused as before), but nothing is parsed twice or
re-serialized. Any other layout goes through ijson.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import queue
import re
import threading
import time
from collections.abc import Iterator
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
# Text the scanner reads ahead before it cuts requests out of it, and the least it
# keeps ahead of the request it parses next: a request cut off by the end of the
# text read so far is parsed again once more is read (its error costs a scan of
# the text), so this is larger than any usual request.
SCAN_BYTES = 1 << 20
LOOKAHEAD_CHARS = 64 * 1024

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


# JSON whitespace only (str.isspace and regex \s also take Unicode spaces).
_WS = "[ \t\n\r]*"
_BODY_HEAD = re.compile(rf'{_WS}\{{{_WS}"requests"{_WS}:{_WS}\[{_WS}')
_ITEM_HEAD = re.compile(rf'\{{{_WS}"custom_id"{_WS}:{_WS}')
_ITEM_MIDDLE = re.compile(rf'{_WS},{_WS}"params"{_WS}:{_WS}')
_ITEM_END = re.compile(rf"{_WS}\}}")
_AFTER_ITEM = re.compile(rf"{_WS}([^ \t\n\r])")
_SPACE = " \t\n\r"


def _no_constants(name: str) -> Any:
    raise CreateRejected(f"Request body is not valid JSON: {name} is not allowed")


# Strict JSON: the json module would otherwise take NaN and Infinity.
_DECODER = json.JSONDecoder(parse_constant=_no_constants)


class _NeedMore(Exception):
    """The text read so far ends inside the value being parsed."""


def _maybe_truncated(exc: json.JSONDecodeError, length: int) -> bool:
    """Whether the error may only mean that the text ends too early. The C scanner
    reports a value cut off by the end of the text at the cut (a literal or an
    escape a few characters before it), except an unterminated string, which it
    reports where the string began."""
    return exc.pos >= length - 16 or exc.msg.startswith("Unterminated string")


class _BodyText:
    """The body as text, read from the pipe as the scanner asks for it."""

    def __init__(self, body: BodyPipe, first: bytes) -> None:
        self._body = body
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self.eof = False
        self.text = ""
        self.pos = 0
        # Characters of the body dropped from the front of `text`.
        self.dropped = 0
        self._add([first])

    def _add(self, chunks: list[bytes]) -> None:
        try:
            added = [self._decoder.decode(chunk) for chunk in chunks]
            if self.eof:
                added.append(self._decoder.decode(b"", final=True))
        except UnicodeDecodeError as exc:
            raise CreateRejected(f"Request body is not valid JSON: {exc}") from exc
        self.dropped += self.pos
        self.text = self.text[self.pos :] + "".join(added)
        self.pos = 0

    def read_more(self) -> None:
        """At least SCAN_BYTES more (twice what is unparsed, for a large value), or
        everything up to the end of the body."""
        if self.eof:
            return
        wanted = max(SCAN_BYTES, 2 * (len(self.text) - self.pos))
        chunks: list[bytes] = []
        got = 0
        while got < wanted:
            chunk = self._body.read()
            if not chunk:
                self.eof = True
                break
            chunks.append(chunk)
            got += len(chunk)
        self._add(chunks)

    def decode(self, start: int) -> tuple[Any, int]:
        """The JSON value at ``start`` and where it ends; _NeedMore when the text
        read so far ends inside it."""
        try:
            return _DECODER.raw_decode(self.text, start)
        except json.JSONDecodeError as exc:
            if not self.eof and _maybe_truncated(exc, len(self.text)):
                raise _NeedMore() from None
            raise CreateRejected(
                f"Request body is not valid JSON: {exc.msg} at character {self.dropped + exc.pos}"
            ) from None


def _read_request(text: _BodyText) -> tuple[Any, str | None]:
    """The request at ``text.pos`` and, in the usual layout (custom_id first, then
    params, nothing else), the exact text of its params; moves past it."""
    start = text.pos
    body = text.text
    head = _ITEM_HEAD.match(body, start)
    if head is not None:
        custom_id, end = text.decode(head.end())
        middle = _ITEM_MIDDLE.match(body, end)
        if isinstance(custom_id, str) and middle is not None:
            params, params_end = text.decode(middle.end())
            close = _ITEM_END.match(body, params_end)
            if close is not None:
                text.pos = close.end()
                return {"custom_id": custom_id, "params": params}, body[middle.end() : params_end]
    item, end = text.decode(start)
    text.pos = end
    return item, None


def _after_item(text: _BodyText) -> re.Match[str]:
    """What follows the list's opening or an item (whitespace, then ``,``, ``]`` or
    the next item), reading on until it is there; rejects a body that ends first."""
    while True:
        following = _AFTER_ITEM.match(text.text, text.pos)
        if following is not None:
            return following
        if text.eof:
            raise CreateRejected("Request body is not valid JSON: the body ends too early")
        text.read_more()


def _scan_requests(body: BodyPipe) -> Iterator[tuple[Any, str | None]]:
    """Each request of the body with its params text (None: re-serialize params)."""
    first = bytearray()
    while len(first) < 4096:
        chunk = body.read()
        if not chunk:
            break
        first += chunk
    head_text = bytes(first[:4096]).decode("utf-8", "ignore")
    if _BODY_HEAD.match(head_text) is None:
        yield from _ijson_requests(_Replay(bytes(first), body))
        return
    text = _BodyText(body, bytes(first))
    match = _BODY_HEAD.match(text.text)
    assert match is not None
    text.pos = match.end()
    count = 0
    while True:
        # Next: a request, or the end of an empty list.
        following = _after_item(text)
        if count == 0 and following.group(1) == "]":
            text.pos = following.end()
            break
        text.pos = following.start(1)
        if len(text.text) - text.pos < LOOKAHEAD_CHARS:
            text.read_more()
        while True:
            try:
                yield _read_request(text)
                break
            except _NeedMore:
                text.read_more()
        count += 1
        # Then a comma, or the end of the list.
        following = _after_item(text)
        text.pos = following.end()
        if following.group(1) == "]":
            break
        if following.group(1) != ",":
            raise CreateRejected(
                f"Request body is not valid JSON: expected ',' or ']' after requests.{count - 1}"
            )
    _check_rest(text, count)


def _check_rest(text: _BodyText, count: int) -> None:
    """What follows the request list: the closing brace, maybe other keys."""
    while not text.eof and len(text.text) - text.pos <= HEAD_BYTES:
        text.read_more()
    rest = text.text[text.pos :]
    if rest.strip(_SPACE) == "}" or count == 0:
        return  # an empty list is explained by the caller
    if not text.eof:
        raise CreateRejected("Request body is not valid JSON: unexpected data after requests")
    try:
        document = json.loads('{"requests": []' + rest)
    except ValueError as exc:
        raise CreateRejected(f"Request body is not valid JSON: {exc}") from None
    for key in document:
        if key != "requests":
            raise CreateRejected(f"{key}: Extra inputs are not permitted")


class _Replay:
    """A file-like ``read()`` giving the bytes already taken from the pipe first."""

    def __init__(self, first: bytes, body: BodyPipe) -> None:
        self._first: bytes | None = first
        self._body = body

    def read(self, size: int = -1) -> bytes:
        if size == 0:
            return b""
        if self._first:
            first, self._first = self._first, None
            return first
        return self._body.read(size)


def _ijson_requests(source: Any) -> Iterator[tuple[Any, str | None]]:
    # ijson's C backend straight on the pipe: wrapping its events in Python
    # would double the parse time of a 256 MB body.
    try:
        for item in ijson.items(source, "requests.item", use_float=True):
            yield item, None
    except ijson.JSONError as exc:
        raise CreateRejected(f"Request body is not valid JSON: {exc}") from exc


def _insert_requests(conn: Any, seq: int, body: BodyPipe) -> int:
    seen: set[str] = set()
    rows: list[tuple[int, int, str, bytes]] = []
    count = 0
    insert = "INSERT INTO requests (batch_seq, idx, custom_id, params) VALUES (?, ?, ?, ?)"
    for item, params_text in _scan_requests(body):
        if count < MAX_REQUESTS:
            custom_id, params = _check_request(count, item, seen)
            encoded = (
                params_text.encode()
                if params_text is not None
                else json.dumps(params, separators=(",", ":"), ensure_ascii=False).encode()
            )
            rows.append((seq, count, custom_id, encoded))
            if len(rows) >= INSERT_CHUNK:
                conn.executemany(insert, rows)
                conn.commit()
                rows.clear()
        count += 1
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
    # Whole microseconds, as the API writes its times: expires_at is then exactly a
    # day after created_at on the wire too, not a microsecond short when the two
    # round apart.
    created_at = round(created_at, 6)
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

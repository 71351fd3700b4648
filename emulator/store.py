"""SQLite state: batches, their requests (params and results) and the request log.

Contract:
- One file `emulator.sqlite3` in the state directory, WAL mode, so readers
  (retrieve, list, results streams) never wait for the writer.
- Every thread opens its own connection with `connect()`; writers serialise
  through SQLite's lock (busy timeout 5 min, long enough for a 256 MB create).
- A batch row is written with `visible = 0` while its create is still being
  parsed and becomes visible in one update when the create is accepted; a
  restart deletes invisible batches (creates that never got an answer).
- Nothing is ever read whole into memory: request rows are inserted and read
  back in chunks.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from .wire import BatchRow

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE,
    visible INTEGER NOT NULL DEFAULT 0,
    deleted INTEGER NOT NULL DEFAULT 0,
    api_version TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL DEFAULT 0,
    archives_at REAL NOT NULL DEFAULT 0,
    duration REAL NOT NULL DEFAULT 0,
    stall_fraction REAL,
    cancel_initiated_at REAL,
    ended_at REAL,
    request_count INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0,
    succeeded INTEGER NOT NULL DEFAULT 0,
    errored INTEGER NOT NULL DEFAULT 0,
    canceled INTEGER NOT NULL DEFAULT 0,
    expired INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS batches_open ON batches (ended_at, visible);
CREATE TABLE IF NOT EXISTS requests (
    batch_seq INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    custom_id TEXT NOT NULL,
    params BLOB,
    state TEXT NOT NULL DEFAULT 'processing',
    line_fault TEXT,
    result BLOB,
    PRIMARY KEY (batch_seq, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cache_prefixes (
    batch_seq INTEGER NOT NULL,
    prefix_hash TEXT NOT NULL,
    PRIMARY KEY (batch_seq, prefix_hash)
) WITHOUT ROWID;
"""

BATCH_COLUMNS = (
    "seq, id, created_at, expires_at, archives_at, cancel_initiated_at, ended_at, "
    "request_count, succeeded, errored, canceled, expired"
)


def batch_from_row(row: tuple[object, ...]) -> BatchRow:
    return BatchRow(*row)  # type: ignore[arg-type]


class Store:
    """Opens connections to the state file and answers the queries the endpoints need."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / "emulator.sqlite3"
        self._local = threading.local()
        with self.connect() as conn:
            conn.executescript(SCHEMA)
            # Creates that were being parsed when the process died never got an
            # answer: the client saw a dropped connection, as with the real API.
            stale = [r[0] for r in conn.execute("SELECT seq FROM batches WHERE visible = 0")]
            for seq in stale:
                conn.execute("DELETE FROM requests WHERE batch_seq = ?", (seq,))
                conn.execute("DELETE FROM batches WHERE seq = ?", (seq,))

    def connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=300.0, check_same_thread=False)
        # Only takes effect when the file is created. Requests are 1–5 KB of params
        # plus a result line: with 4 KB pages nearly every one spilled into overflow
        # pages, and storing a 256 MB create took twice as long.
        conn.execute("PRAGMA page_size=65536")
        conn.execute("PRAGMA journal_mode=WAL")
        # OFF is still safe when the process is killed (the OS keeps the writes);
        # only an OS crash could lose them, which an emulator can afford. It
        # halves the time to store a 256 MB create.
        conn.execute("PRAGMA synchronous=OFF")
        return conn

    def local(self) -> sqlite3.Connection:
        """This thread's connection for short calls (the HTTP worker threads are
        reused, so a connection per call would mostly measure connect time)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self.connect()
            self._local.conn = conn
        return conn

    def meta_value(self, key: str, default_factory: object = None) -> str:
        """Read a meta value, storing a new random one on first use."""
        with self.connect() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            if row is not None:
                return str(row[0])
            value = str(secrets.randbits(63)) if default_factory is None else str(default_factory)
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return str(row[0])

    # --- reads -----------------------------------------------------------------

    @staticmethod
    def get_batch(conn: sqlite3.Connection, batch_id: str) -> BatchRow | None:
        row = conn.execute(
            f"SELECT {BATCH_COLUMNS} FROM batches WHERE id = ? AND visible = 1 AND deleted = 0",
            (batch_id,),
        ).fetchone()
        return None if row is None else batch_from_row(row)

    @staticmethod
    def cursor_seq(conn: sqlite3.Connection, batch_id: str) -> int | None:
        """The position of a batch in the list, deleted ones included, so a cursor
        taken before a delete still pages on."""
        row = conn.execute(
            "SELECT seq FROM batches WHERE id = ? AND visible = 1", (batch_id,)
        ).fetchone()
        return None if row is None else int(row[0])

    @staticmethod
    def list_page(
        conn: sqlite3.Connection,
        limit: int,
        after_seq: int | None,
        before_seq: int | None,
    ) -> tuple[list[BatchRow], bool]:
        """Newest first. `after` pages towards older batches, `before` towards newer."""
        live = "visible = 1 AND deleted = 0"
        if before_seq is not None:
            rows = conn.execute(
                f"SELECT {BATCH_COLUMNS} FROM batches WHERE {live} AND seq > ? "
                "ORDER BY seq ASC LIMIT ?",
                (before_seq, limit + 1),
            ).fetchall()
            has_more = len(rows) > limit
            page = [batch_from_row(r) for r in rows[:limit]]
            page.reverse()
            return page, has_more
        if after_seq is not None:
            rows = conn.execute(
                f"SELECT {BATCH_COLUMNS} FROM batches WHERE {live} AND seq < ? "
                "ORDER BY seq DESC LIMIT ?",
                (after_seq, limit + 1),
            ).fetchall()
        else:
            rows = conn.execute(
                f"SELECT {BATCH_COLUMNS} FROM batches WHERE {live} ORDER BY seq DESC LIMIT ?",
                (limit + 1,),
            ).fetchall()
        return [batch_from_row(r) for r in rows[:limit]], len(rows) > limit

    @staticmethod
    def iter_result_rows(
        conn: sqlite3.Connection, batch_seq: int, chunk: int = 500
    ) -> Iterator[list[tuple[str, str, str | None, bytes | None]]]:
        """(custom_id, state, line_fault, stored line) in chunks, by request index."""
        last = -1
        while True:
            rows = conn.execute(
                "SELECT idx, custom_id, state, line_fault, result FROM requests "
                "WHERE batch_seq = ? AND idx > ? ORDER BY idx LIMIT ?",
                (batch_seq, last, chunk),
            ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield [(r[1], r[2], r[3], r[4]) for r in rows]

    @staticmethod
    def iter_request_log(
        conn: sqlite3.Connection, chunk: int = 2000
    ) -> Iterator[list[tuple[str, str, float, int]]]:
        """(batch_id, custom_id, created_at, create_seq) for every accepted request,
        deleted batches included, in create order."""
        last = (-1, -1)
        while True:
            rows = conn.execute(
                "SELECT b.seq, r.idx, b.id, r.custom_id, b.created_at FROM requests r "
                "JOIN batches b ON b.seq = r.batch_seq "
                "WHERE b.visible = 1 AND (r.batch_seq, r.idx) > (?, ?) "
                "ORDER BY r.batch_seq, r.idx LIMIT ?",
                (last[0], last[1], chunk),
            ).fetchall()
            if not rows:
                return
            last = (rows[-1][0], rows[-1][1])
            yield [(r[2], r[3], r[4], r[0]) for r in rows]

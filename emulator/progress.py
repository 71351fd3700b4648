"""The background worker that moves batches forward in time.

Schedule: a batch of n requests created at t0 with processing time D has
floor(n * (t - t0) / D) requests done at time t, in request order, so
`request_counts` show mixed counts while `in_progress`. The schedule is a
function of wall time and stored state only, so a restarted emulator picks a
batch up mid-way (and catches up on the time it was down).

Ending, checked once the scheduled requests are done:
1. all n done → `ended`;
2. canceled and `cancel_seconds` passed → the rest `canceled`, `ended`
   (requests done inside the canceling window stay done);
3. expires_at passed → the rest `expired`, `ended`.

Each step is one SQLite transaction; a crash between steps repeats nothing
because `done` and the request states are committed together.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .config import EmulatorConfig
from .faults import FaultState
from .outcomes import decide_outcome
from .store import Store

log = logging.getLogger(__name__)

# Requests processed per batch per pass: bounds one transaction's length so
# HTTP writers (cancel, delete, create) never wait long for the lock.
PROCESS_CHUNK = 2000
# Longest the worker waits, before each chunk, for creates being received to end.
CREATE_PRIORITY_SECONDS = 5.0


class CreatesInFlight:
    """Creates being received and parsed right now.

    The real API answers a create at the pace of its own validation, however many
    batches it is processing elsewhere. Here processing runs in the same process
    and shares one interpreter lock with the create's parser: processing a
    70,000-request batch that was just accepted slowed the next create of the same
    client by half. So the worker lets creates go first, waiting before each chunk
    while one is in flight, but never longer than CREATE_PRIORITY_SECONDS, so a
    stream of creates cannot stop processing.
    """

    def __init__(self) -> None:
        self._count = 0
        self._idle = threading.Condition()

    @contextmanager
    def running(self) -> Iterator[None]:
        with self._idle:
            self._count += 1
        try:
            yield
        finally:
            with self._idle:
                self._count -= 1
                if self._count == 0:
                    self._idle.notify_all()

    def wait_idle(self, timeout: float) -> None:
        with self._idle:
            self._idle.wait_for(lambda: self._count == 0, timeout)


@dataclass(frozen=True)
class _OpenBatch:
    seq: int
    request_count: int
    done: int
    created_at: float
    expires_at: float
    duration: float
    stall_fraction: float | None
    cancel_initiated_at: float | None
    api_version: str


class BatchWorker(threading.Thread):
    def __init__(
        self,
        store: Store,
        config: EmulatorConfig,
        faults: FaultState,
        salt: str,
        creates: CreatesInFlight | None = None,
    ) -> None:
        super().__init__(name="batch-worker", daemon=True)
        self._store = store
        self._config = config
        self._faults = faults
        self._salt = salt
        self._creates = creates or CreatesInFlight()
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        conn = self._store.connect()
        try:
            while not self._stopping.is_set():
                try:
                    busy = self.advance_all(conn, time.time())
                except sqlite3.Error:
                    log.exception("batch worker pass failed; retrying")
                    conn.rollback()
                    busy = False
                if not busy:
                    self._stopping.wait(self._config.tick_seconds)
        finally:
            conn.close()

    def advance_all(self, conn: sqlite3.Connection, now: float) -> bool:
        """One pass over open batches; True when some batch is behind schedule."""
        rows = conn.execute(
            "SELECT seq, request_count, done, created_at, expires_at, duration, stall_fraction, "
            "cancel_initiated_at, api_version FROM batches "
            "WHERE visible = 1 AND deleted = 0 AND ended_at IS NULL ORDER BY seq"
        ).fetchall()
        busy = False
        for row in rows:
            busy |= self._advance(conn, _OpenBatch(*row), now)
        return busy

    def _scheduled(self, batch: _OpenBatch, now: float) -> int:
        n = batch.request_count
        horizon = min(now, batch.expires_at)
        if batch.duration <= 0:
            target = n
        else:
            target = min(n, math.floor(n * max(0.0, horizon - batch.created_at) / batch.duration))
        if batch.stall_fraction is not None:
            target = min(target, math.floor(n * batch.stall_fraction))
        return target

    def _advance(self, conn: sqlite3.Connection, batch: _OpenBatch, now: float) -> bool:
        target = self._scheduled(batch, now)
        done = batch.done
        if done < target:
            self._creates.wait_idle(CREATE_PRIORITY_SECONDS)
            upto = min(target, done + PROCESS_CHUNK)
            self._process(conn, batch, done, upto)
            done = upto
            if done < target:
                return True
        n = batch.request_count
        if done >= n:
            self._end(conn, batch.seq, now, None, 0)
        elif batch.cancel_initiated_at is not None and (
            now >= batch.cancel_initiated_at + self._config.cancel_seconds
        ):
            self._end(conn, batch.seq, now, "canceled", done)
        elif now >= batch.expires_at:
            self._end(conn, batch.seq, now, "expired", done)
        return False

    def _process(self, conn: sqlite3.Connection, batch: _OpenBatch, lo: int, hi: int) -> None:
        faults = self._faults.settings
        rows = conn.execute(
            "SELECT idx, custom_id, params FROM requests "
            "WHERE batch_seq = ? AND idx >= ? AND idx < ? ORDER BY idx",
            (batch.seq, lo, hi),
        ).fetchall()
        seen = {
            r[0]
            for r in conn.execute(
                "SELECT prefix_hash FROM cache_prefixes WHERE batch_seq = ?", (batch.seq,)
            )
        }
        new_prefixes: list[tuple[int, str]] = []

        def cache_seen(prefix_hash: str) -> bool:
            if prefix_hash in seen:
                return True
            seen.add(prefix_hash)
            new_prefixes.append((batch.seq, prefix_hash))
            return False

        updates: list[tuple[str, bytes, str | None, int, int]] = []
        succeeded = errored = 0
        for idx, custom_id, params in rows:
            outcome = decide_outcome(
                salt=self._salt,
                batch_seq=batch.seq,
                idx=idx,
                custom_id=custom_id,
                params_json=params,
                api_version=batch.api_version,
                faults=faults,
                cache_seen=cache_seen,
            )
            updates.append((outcome.state, outcome.line, outcome.line_fault, batch.seq, idx))
            if outcome.state == "succeeded":
                succeeded += 1
            else:
                errored += 1
        conn.executemany(
            "UPDATE requests SET state = ?, result = ?, line_fault = ? "
            "WHERE batch_seq = ? AND idx = ?",
            updates,
        )
        conn.executemany(
            "INSERT OR IGNORE INTO cache_prefixes (batch_seq, prefix_hash) VALUES (?, ?)",
            new_prefixes,
        )
        conn.execute(
            "UPDATE batches SET done = ?, succeeded = succeeded + ?, errored = errored + ? "
            "WHERE seq = ? AND done = ?",
            (hi, succeeded, errored, batch.seq, lo),
        )
        conn.commit()

    def _end(
        self, conn: sqlite3.Connection, seq: int, now: float, rest: str | None, done: int
    ) -> None:
        if rest is None:
            conn.execute("UPDATE batches SET ended_at = ? WHERE seq = ?", (now, seq))
        else:
            conn.execute(
                "UPDATE requests SET state = ? WHERE batch_seq = ? AND idx >= ?",
                (rest, seq, done),
            )
            conn.execute(
                f"UPDATE batches SET {rest} = {rest} + (request_count - done), "
                "done = request_count, ended_at = ? WHERE seq = ?",
                (now, seq),
            )
        conn.commit()

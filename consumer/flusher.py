"""Pending invoices → Message Batches, without ever sending an invoice twice.

The submit protocol (``_prepare`` for steps 1–2, ``_finish`` for 3–4):

1. Claim pending rows and write the batch row as ``submitting`` with our own key,
   in one transaction.
2. Build one request per row (custom_id ``i<row>-a<attempt>``).
3. Call ``messages.batches.create`` once, with the SDK's automatic retries off:
   a retried create after a lost response would create a second batch.
4. Record the API's batch id; the batch is ``open`` and the collector takes it.

When several batches are due, steps 1 and 2 of the next one run while the create
of the one before is in flight (``_submit_in_turn``); creates still go one at a
time, in claim order.

What a restart does after a crash at each step:

- during 1: the transaction rolled back; the rows are still pending.
- after 1, before 3 reached the API: the row is ``submitting``; reconciliation
  finds no such batch on the API and releases the rows to pending.
- after 3 reached the API, before 4: reconciliation lists the API's batches,
  finds the one created within the window with our request count, adopts it.
- after 4: nothing to do; the collector polls the batch.

Reconciliation waits CREATE_TIMEOUT_SECONDS plus a minute after the claim before it decides that a
create did not happen, longer than a create call can take, so a request still in
flight is never mistaken for a lost one.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any

import anthropic
from anthropic.types.messages import MessageBatch
from invoice_batch.consumer.flush_policy import (
    FlushDecision,
    FlushPolicy,
    Trigger,
    decide_flush,
    next_cutoff,
)

from invoice_batch.batch_requests import custom_id_for, encode_request_from_payload
from invoice_batch.crash_points import crash_point
from invoice_batch.logs import get_logger
from invoice_batch.metrics import Metrics
from invoice_batch.settings import Settings
from invoice_batch.store.repository import Store

log = get_logger("invoice_batch.flusher")

# A create's outcome is decided by reconciliation only a minute after the create
# could have timed out (CREATE_TIMEOUT_SECONDS, default 10 min: a 256 MB body over
# a slow link takes minutes).
RECONCILE_MARGIN = timedelta(minutes=1)
# API clocks and ours may differ; look this much either side of our claim time.
CLOCK_SKEW = timedelta(minutes=5)
# First poll of a new batch: small batches often end within a minute.
FIRST_POLL_DELAY = timedelta(seconds=5)

# HTTP statuses after which the API certainly did not create the batch: the request
# was refused before processing.
NOT_CREATED_STATUSES = frozenset({400, 401, 402, 403, 404, 413, 422, 429, 529})


def flush_policy_from(settings: Settings) -> FlushPolicy:
    explicit_wait = "batch_max_wait_seconds" in settings.model_fields_set
    max_wait = (
        timedelta(seconds=settings.batch_max_wait_seconds)
        if settings.batch_cutoff is None or explicit_wait
        else None
    )
    return FlushPolicy(
        max_requests=settings.batch_max_requests,
        max_bytes=settings.batch_max_bytes,
        max_wait=max_wait,
        cutoff=settings.batch_cutoff,
        zone=settings.zone,
        retry_delay=timedelta(seconds=settings.retry_delay_seconds),
    )


class Flusher:
    def __init__(
        self,
        store: Store,
        client: anthropic.Anthropic,
        settings: Settings,
        metrics: Metrics,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        # Step 3 of the protocol: no automatic retries of create.
        self.client = client.with_options(max_retries=0, timeout=settings.create_timeout_seconds)
        create_timeout = timedelta(seconds=settings.create_timeout_seconds)
        self.reconcile_grace = create_timeout + min(RECONCILE_MARGIN, create_timeout)
        self.reader = client
        self.settings = settings
        self.metrics = metrics
        self.policy = flush_policy_from(settings)
        self.clock = clock
        self.last_decision: FlushDecision | None = None

    def flush_due(self) -> list[str]:
        """Submit batches while the policy says so. Returns the API batch ids created."""
        rounds = iter(range(1_000))  # bound: each round claims at least one row or stops

        def next_batch() -> _Prepared | None:
            if next(rounds, None) is None:
                return None
            now = self.clock()
            state = self.store.buffer_state()
            self._observe(state.pending_count, state.pending_bytes, state.oldest_received_at, now)
            decision = decide_flush(state, now, self.policy)
            self.last_decision = decision
            if not decision.flush or decision.trigger is None:
                return None
            return self._prepare(
                decision.trigger,
                received_before=decision.received_before,
                retries_only=decision.trigger == "retry",
            )

        return self._submit_in_turn(next_batch)

    def flush_all(self, trigger: Trigger = "manual") -> list[str]:
        """Submit everything pending now (``invoice-batch flush --now``)."""
        return self._submit_in_turn(lambda: self._prepare(trigger))

    def _submit_in_turn(self, next_batch: Callable[[], _Prepared | None]) -> list[str]:
        """Steps 1–4 for batch after batch, the next one claimed and built while the
        create of the one before is being sent and validated (the API's time, spent
        waiting on the socket): a create body takes seconds to build and as long to
        upload. Creates still go one at a time and in claim order; the first that
        fails stops the run, and a batch already claimed after it goes back to
        pending unsent."""
        created: list[str] = []
        in_flight: tuple[_Prepared, Future[MessageBatch]] | None = None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-create") as sender:
            try:
                while True:
                    prepared = next_batch()
                    if in_flight is not None:
                        previous, in_flight = in_flight, None
                        batch_id = self._finish(*previous)
                        if batch_id is None:
                            if prepared is not None:
                                self._release_unsent(prepared)
                            break
                        created.append(batch_id)
                    if prepared is None:
                        break
                    in_flight = (prepared, sender.submit(self._create, prepared.body))
            finally:
                # Building the next batch failed: the create already sent still gets
                # its outcome recorded.
                if in_flight is not None:
                    self._finish(*in_flight)
        return created

    def _observe(self, count: int, size: int, oldest: datetime | None, now: datetime) -> None:
        self.metrics.buffer_pending.set(count)
        self.metrics.buffer_pending_bytes.set(size)
        self.metrics.buffer_oldest_age.set((now - oldest).total_seconds() if oldest else 0)
        if self.policy.cutoff is not None:
            self.metrics.next_cutoff.set(
                next_cutoff(now, self.policy.cutoff, self.policy.zone).timestamp()
            )

    def _prepare(
        self,
        trigger: Trigger,
        *,
        received_before: datetime | None = None,
        retries_only: bool = False,
    ) -> _Prepared | None:
        """Steps 1 and 2: claim rows into a ``submitting`` batch and write its body.
        None when there was nothing to claim."""
        batch_key = "b" + uuid.uuid4().hex
        now = self.clock()
        claimed = self.store.claim_batch(
            batch_key=batch_key,
            trigger=trigger,
            model=self.settings.claude_model,
            max_requests=self.settings.batch_max_requests,
            max_bytes=self.settings.batch_max_bytes,
            now=now,
            received_before=received_before,
            retries_only=retries_only,
        )
        if not claimed:
            return None
        crash_point("submit.after_claim")
        return _Prepared(batch_key, trigger, claimed, self._write_body(batch_key))

    def _finish(self, prepared: _Prepared, create: Future[MessageBatch]) -> str | None:
        """Steps 3 (its outcome) and 4: record the created batch, or release or leave
        the rows to reconciliation, as the failure says."""
        batch_key, trigger, claimed = prepared.batch_key, prepared.trigger, prepared.rows
        try:
            batch = create.result()
        except anthropic.APIStatusError as exc:
            self.metrics.api_errors.labels("create", _error_type(exc)).inc()
            if exc.status_code in NOT_CREATED_STATUSES:
                released = self.store.release_batch(batch_key, f"create refused: {exc.status_code}")
                log.warning(
                    "batch create refused; rows back to pending",
                    status=exc.status_code,
                    error=_error_type(exc),
                    rows=released,
                    batch_key=batch_key,
                )
            else:
                log.warning(
                    "batch create failed; will reconcile",
                    status=exc.status_code,
                    batch_key=batch_key,
                    rows=claimed,
                )
            return None
        except anthropic.APIError as exc:
            # Connection error or timeout: the batch may exist. Reconcile later.
            self.metrics.api_errors.labels("create", type(exc).__name__).inc()
            log.warning(
                "batch create outcome unknown; will reconcile",
                error=type(exc).__name__,
                batch_key=batch_key,
                rows=claimed,
            )
            return None
        finally:
            prepared.body.close()
        crash_point("submit.after_create")
        self.store.record_created(
            batch_key, batch.id, self.clock(), self.clock() + FIRST_POLL_DELAY
        )
        self.metrics.batches_submitted.labels(trigger).inc()
        self.metrics.batch_requests.observe(claimed)
        log.info(
            "batch submitted",
            batch_id=batch.id,
            batch_key=batch_key,
            trigger=trigger,
            requests=claimed,
        )
        return batch.id

    def _release_unsent(self, prepared: _Prepared) -> None:
        """A batch claimed while the create before it was in flight, not sent because
        that create failed: its rows go back to pending, the attempt undone."""
        prepared.body.close()
        released = self.store.release_batch(
            prepared.batch_key, "not sent: the create before it failed"
        )
        log.info(
            "claimed batch not sent after a failed create; rows back to pending",
            batch_key=prepared.batch_key,
            rows=released,
        )

    def _write_body(self, batch_key: str) -> IO[bytes]:
        """Step 2: the create body, one request per claimed row, in a temporary file.

        Rows stream from the store and each request is serialized as it is built, so
        memory stays flat whatever the batch size (a list of 100,000 request dicts
        and its 400 MB JSON text took gigabytes). The bytes are exactly what the SDK
        would send for ``create(requests=[build_request(...), ...])``.
        """
        # Closed by the caller once the create returned (or here, on a failure).
        body = tempfile.TemporaryFile(prefix="invoice-batch-create-", buffering=1 << 20)  # noqa: SIM115
        model, max_tokens = self.settings.claude_model, self.settings.claude_max_tokens
        write, encode = body.write, encode_request_from_payload
        try:
            write(b'{"requests": [')
            separator = b""
            for row_id, attempts, payload in self.store.iter_batch_payloads(batch_key):
                write(separator)
                write(
                    encode(
                        payload,
                        custom_id=custom_id_for(row_id, attempts),
                        model=model,
                        max_tokens=max_tokens,
                    )
                )
                separator = b", "
            write(b"]}")
            body.seek(0)
        except BaseException:
            body.close()
            raise
        return body

    def _create(self, body: IO[bytes]) -> MessageBatch:
        """Step 3 through the SDK's client (its auth, headers, timeout and error types):
        the same POST that ``messages.batches.create`` makes, with the body streamed
        from the file and its Content-Length from the file's size."""
        return self.client.post(
            "/v1/messages/batches",
            cast_to=MessageBatch,
            content=body,
            options={"headers": {"Content-Type": "application/json"}},
        )

    def reconcile(self) -> None:
        """Resolve ``submitting`` batches older than the grace: adopt or release."""
        now = self.clock()
        stale = [
            b for b in self.store.submitting_batches() if now - b.created_at >= self.reconcile_grace
        ]
        if not stale:
            return
        earliest = min(b.created_at for b in stale) - CLOCK_SKEW
        candidates: list[Any] = []
        for api_batch in self.reader.messages.batches.list(limit=100):
            if api_batch.created_at < earliest:
                break
            candidates.append(api_batch)
        known = self.store.known_api_batch_ids(b.id for b in candidates)
        for row in stale:
            window_end = row.created_at + self.reconcile_grace + CLOCK_SKEW
            match = next(
                (
                    b
                    for b in sorted(candidates, key=lambda b: abs(b.created_at - row.created_at))
                    if b.id not in known
                    and row.created_at - CLOCK_SKEW <= b.created_at <= window_end
                    and _total(b.request_counts) == row.request_count
                ),
                None,
            )
            if match is not None:
                self.store.record_created(row.key, match.id, match.created_at, now)
                known.add(match.id)
                log.info(
                    "adopted batch created before a lost response",
                    batch_id=match.id,
                    batch_key=row.key,
                    requests=row.request_count,
                )
            else:
                released = self.store.release_batch(row.key, "create never reached the API")
                log.info(
                    "released rows of a batch that was never created",
                    batch_key=row.key,
                    rows=released,
                )


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A claimed batch and its create body, ready to send."""

    batch_key: str
    trigger: Trigger
    rows: int
    body: IO[bytes]


def _total(counts: Any) -> int:
    return int(
        counts.processing + counts.succeeded + counts.errored + counts.canceled + counts.expired
    )


def _error_type(exc: anthropic.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("type"), str):
            return str(error["type"])[:40]
    return f"http_{exc.status_code}"

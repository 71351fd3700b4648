"""The collector: open batches → poll → results → publish → mark done.

The collect protocol (``collect_batch``), per ended batch:

1. Lease the batch (a lease with an expiry: a dead collector's batch is taken over).
2. Publish intent: if the batch row has none, store the output topic's end offsets
   on it (``publish_from``) before anything is produced. If it has one, an earlier
   pass may have published records it never marked done: read the output topic
   from those offsets to its end and keep the event ids of this batch found there.
3. Stream the results file; take them ``COLLECT_CHUNK_SIZE`` at a time. Before each chunk,
   check the lease is still ours (a collector that lost it stops publishing).
4. For each chunk, load the rows still ``submitted`` (rows already done are skipped)
   and decide each result's outcome.
5. Publish the classified invoices (idempotent producer, key = invoice_id, a stable
   event_id), except those whose event id step 2 found, and wait for the broker's
   acknowledgements.
6. Mark the acknowledged and the found rows done, failed rows pending again or
   DLQ'd, in one store transaction per chunk; the same transaction moves the
   intent past the records just acknowledged (held while found rows are unmarked).
   A second thread runs this step while the next chunk goes through 4 and 5; each
   mark waits for the one before, and step 7 for the last.
7. After the last line, rows of the batch with no result line at all are retried
   (counted as ``missing``); then the batch is done and its intent cleared.

What a restart does after a crash at each step:

- before 5: the lease expires, another pass re-reads the results; nothing new was
  published, and whatever an earlier pass published is found in step 2.
- after 5, before 6: the next pass finds that chunk's records on the output topic
  from the intent on, and marks those rows done without publishing them again.
- after 6: only the rows not yet marked are processed again.

A publish that the broker does not acknowledge in time aborts the pass before
step 6; the producer's queue is drained (every record delivered or failed for good)
before the lease is given back, so the next pass's read-back sees all of them. A
result is never lost and never retried with the API (no double spend).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import anthropic
import httpx2
import orjson
from confluent_kafka import KafkaError, Message, Producer
from invoice_batch.collector.published import OutputLog, ReadBackFailed
from invoice_batch.schemas.codec import classified_codec_for
from sqlalchemy.exc import SQLAlchemyError

from invoice_batch.approval import decide_approval
from invoice_batch.batch_requests import row_id_from
from invoice_batch.crash_points import crash_point
from invoice_batch.kafka import DeadLetters, DeliveryFailed
from invoice_batch.logs import get_logger
from invoice_batch.metrics import Metrics
from invoice_batch.pricing import Usage, cost_usd, price_for
from invoice_batch.results import (
    Canceled,
    Classified,
    Errored,
    Expired,
    Reject,
    ResultBody,
    Retry,
    Succeeded,
    classified_record,
    decide_outcome,
)
from invoice_batch.settings import Settings
from invoice_batch.store.models import BatchRow
from invoice_batch.store.repository import (
    BatchCounts,
    ClaimedInvoice,
    DoneResult,
    Store,
    decode_offsets,
)

log = get_logger("invoice_batch.collector")

IDLE_WAIT_SECONDS = 1.0


class Stopping(Exception):
    """Shutdown was requested while a batch was being collected."""


class PublishFailed(Exception):
    """The broker did not acknowledge every record of a chunk."""


class ResultsStreamBroken(Exception):
    """The connection carrying the results file failed part-way."""


class LeaseLost(Exception):
    """Another collector holds the batch's lease now: this one must not publish."""


def result_body(result: Mapping[str, Any]) -> ResultBody:
    """A results line's ``result`` object, as the API sends it, → our plain values.

    The collector parses the results file itself (orjson, per line) rather than
    through the SDK's models: building a pydantic model per line was the largest
    single cost of collecting. Malformed shapes raise ``ValueError``/``TypeError``.
    """
    match result.get("type"):
        case "succeeded":
            message = result["message"]
            tool_input = next(
                (
                    block.get("input")
                    for block in message.get("content") or ()
                    if isinstance(block, dict) and block.get("type") == "tool_use"
                ),
                None,
            )
            usage = message.get("usage") or {}
            return Succeeded(
                tool_input=tool_input,
                model=str(message.get("model") or ""),
                usage=Usage(
                    input_tokens=int(usage.get("input_tokens") or 0),
                    output_tokens=int(usage.get("output_tokens") or 0),
                    cache_read_tokens=int(usage.get("cache_read_input_tokens") or 0),
                    cache_creation_tokens=int(usage.get("cache_creation_input_tokens") or 0),
                ),
            )
        case "errored":
            error = (result.get("error") or {}).get("error") or {}
            return Errored(
                error_type=str(error.get("type") or "unknown_error"),
                message=str(error.get("message") or ""),
            )
        case "canceled":
            return Canceled()
        case "expired":
            return Expired()
    return Errored(error_type="unknown_result", message=f"result type {result.get('type')!r}")


def read_results(client: anthropic.Anthropic, batch_id: str) -> Iterator[tuple[str, ResultBody]]:
    """(custom_id, result) per line of the batch's results file, streamed.

    A line that is not a well-formed result is logged and skipped (its request then
    counts as missing and is retried). A connection broken mid-file raises
    ``ResultsStreamBroken``; HTTP errors raise the SDK's ``APIError``s."""
    with client.messages.batches.with_streaming_response.results(batch_id) as response:
        try:
            for line in response.iter_lines():
                if not line.strip():
                    continue
                try:
                    item = orjson.loads(line)
                    yield str(item["custom_id"]), result_body(item["result"])
                except (
                    orjson.JSONDecodeError,
                    ValueError,
                    TypeError,
                    KeyError,
                    AttributeError,
                ) as exc:
                    log.warning(
                        "malformed results line skipped",
                        batch_id=batch_id,
                        error=f"{type(exc).__name__}: {exc}"[:200],
                    )
        except httpx2.HTTPError as exc:
            raise ResultsStreamBroken(f"results stream broke: {type(exc).__name__}") from exc


def default_owner() -> str:
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class CollectorService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        client: anthropic.Anthropic,
        producer: Producer,
        dead_letters: DeadLetters,
        metrics: Metrics,
        owner: str | None = None,
        output_log: OutputLog | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        daily_tasks: Callable[[datetime], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.client = client
        self.producer = producer
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.owner = owner or default_owner()
        self.clock = clock
        self.codec = classified_codec_for(settings)
        self.lease = timedelta(seconds=settings.lease_seconds)
        self._delivery_errors: list[str] = []
        # Highest acknowledged offset per output partition since the last mark_done.
        self._delivered: dict[int, int] = {}
        self.output_log = output_log or OutputLog(settings, self.codec.decode)
        # The pass in progress: its publish intent, and the event ids an earlier pass
        # published whose rows are not marked done yet.
        self._intent: dict[int, int] = {}
        self._found: set[str] = set()
        # Step 6 runs in this thread while the next chunk is read, decided and
        # published: one mark_done at a time, waited for before the next is handed over.
        self._marker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mark-done")
        self._marking: Future[int] | None = None
        self._lease_renewed = 0.0
        # Retention and the morning summary (invoice_batch.daily): called once per loop
        # pass; it returns at once unless something is due, and never raises.
        self.daily_tasks = daily_tasks

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                worked = self.collect_once(stop)
                self._observe_open()
                if self.daily_tasks is not None:
                    self.daily_tasks(self.clock())
            except SQLAlchemyError as exc:
                log.warning("store unavailable", error=type(exc).__name__)
                worked = False
            if not worked:
                stop.wait(IDLE_WAIT_SECONDS)
        self.producer.flush(self.settings.shutdown_timeout_seconds)
        self.output_log.close()
        self._marker.shutdown()

    def _observe_open(self) -> None:
        count, oldest_age = self.store.open_batch_ages(self.clock())
        self.metrics.batches_open.set(count)
        self.metrics.oldest_open_age.set(oldest_age)

    def _poll_delay(self, polls: int) -> timedelta:
        seconds = min(self.settings.poll_max_seconds, self.settings.poll_min_seconds * 1.5**polls)
        return timedelta(seconds=seconds)

    def collect_once(self, stop: threading.Event | None = None) -> bool:
        """Poll one due batch, and collect it if it ended. False when none was due."""
        batch = self.store.lease_due_batch(self.owner, self.clock(), self.lease)
        if batch is None:
            return False
        assert batch.api_batch_id is not None
        try:
            api_batch = self.client.messages.batches.retrieve(batch.api_batch_id)
        except anthropic.APIError as exc:
            self.metrics.api_errors.labels("retrieve", type(exc).__name__).inc()
            log.warning("batch poll failed", batch_id=batch.api_batch_id, error=type(exc).__name__)
            self.store.release_lease(
                batch.key,
                self.owner,
                self.clock() + self._poll_delay(batch.polls),
                error=type(exc).__name__,
            )
            return True
        c = api_batch.request_counts
        counts = BatchCounts(c.processing, c.succeeded, c.errored, c.canceled, c.expired)
        if api_batch.processing_status != "ended":
            self.store.record_poll(
                batch.key,
                self.owner,
                processing_status=api_batch.processing_status,
                counts=counts,
                next_poll_at=self.clock() + self._poll_delay(batch.polls),
            )
            log.debug(
                "batch still running",
                batch_id=batch.api_batch_id,
                done=counts.succeeded + counts.errored + counts.canceled + counts.expired,
                processing=counts.processing,
            )
            return True
        try:
            self.collect_batch(batch, api_batch, counts, stop)
        except (
            PublishFailed,
            DeliveryFailed,
            Stopping,
            LeaseLost,
            ReadBackFailed,
            ResultsStreamBroken,
            anthropic.APIError,
        ) as exc:
            log.warning(
                "collecting the batch failed; will try again",
                batch_id=batch.api_batch_id,
                error=f"{type(exc).__name__}: {exc}"[:300],
            )
            if isinstance(exc, anthropic.APIError):
                self.metrics.api_errors.labels("results", type(exc).__name__).inc()
            if isinstance(exc, PublishFailed):
                self._drain(batch, stop)
            self.store.release_lease(
                batch.key,
                self.owner,
                self.clock() + timedelta(seconds=self.settings.poll_min_seconds),
                error=type(exc).__name__,
            )
        return True

    def collect_batch(
        self,
        batch: BatchRow,
        api_batch: Any,
        counts: BatchCounts,
        stop: threading.Event | None = None,
    ) -> None:
        """Steps 2–7 of the collect protocol."""
        assert batch.api_batch_id is not None
        started = time.monotonic()
        self._begin_publishing(batch)
        seen: set[int] = set()
        try:
            usage, cost = self._collect_results(batch, stop, seen)
        except BaseException:
            with contextlib.suppress(Exception):
                self._wait_marked()
            raise
        # The last chunk's rows are marked (or its error raised) before anything else.
        self._wait_marked()

        missing = [
            row_id for row_id in self.store.unresolved_row_ids(batch.key) if row_id not in seen
        ]
        if missing:
            log.warning(
                "results file lacks some requests; retrying them",
                batch_id=batch.api_batch_id,
                missing=len(missing),
            )
            rows = self.store.invoices_by_id(batch.key, missing)
            self._retry_or_dlq(
                batch,
                [
                    (rows[i], "missing", "no result line for the request")
                    for i in missing
                    if i in rows
                ],
            )
        now = self.clock()
        self.store.finish_batch(
            batch.key, self.owner, usage, cost, now, counts=counts, ended_at=api_batch.ended_at
        )
        if api_batch.ended_at is not None:
            self.metrics.batch_latency.observe(
                (api_batch.ended_at - api_batch.created_at).total_seconds()
            )
        self.metrics.results_last.set(time.time())
        log.info(
            "batch collected",
            batch_id=batch.api_batch_id,
            succeeded=counts.succeeded,
            errored=counts.errored,
            canceled=counts.canceled,
            expired=counts.expired,
            missing=len(missing),
            cost_usd=float(cost),
            seconds=round(time.monotonic() - started, 3),
        )

    def _collect_results(
        self, batch: BatchRow, stop: threading.Event | None, seen: set[int]
    ) -> tuple[Usage, Decimal]:
        """Steps 3–6 over the whole results file: (usage, cost) of the rows handled."""
        assert batch.api_batch_id is not None
        chunk: list[tuple[int, ResultBody]] = []
        usage = Usage()
        cost = Decimal(0)
        self._lease_renewed = time.monotonic()
        for custom_id, body in read_results(self.client, batch.api_batch_id):
            row_id = row_id_from(custom_id)
            if row_id is None or row_id in seen:
                log.warning(
                    "unexpected or repeated result line",
                    batch_id=batch.api_batch_id,
                    custom_id=custom_id[:64],
                )
                continue
            seen.add(row_id)
            chunk.append((row_id, body))
            if len(chunk) >= self.settings.collect_chunk_size:
                if stop is not None and stop.is_set():
                    raise Stopping("stop requested mid-results; the lease is handed back")
                crash_point("collect.mid_results")
                chunk_usage, chunk_cost = self._process_chunk(batch, chunk)
                usage, cost, chunk = usage + chunk_usage, cost + chunk_cost, []
        if chunk:
            chunk_usage, chunk_cost = self._process_chunk(batch, chunk)
            usage, cost = usage + chunk_usage, cost + chunk_cost
        return usage, cost

    # -- the publish intent and the lease

    def _begin_publishing(self, batch: BatchRow) -> None:
        """Step 2: store the publish intent, or find what an earlier pass published."""
        assert batch.api_batch_id is not None
        self._delivered = {}
        self._found = set()
        intent = decode_offsets(batch.publish_from)
        if intent is None:
            intent = self.output_log.end_offsets()
            if not self.store.set_publish_from(batch.key, self.owner, intent):
                raise LeaseLost("the lease expired before publishing began")
        else:
            self._found = self.output_log.event_ids_since(intent, batch.api_batch_id)
            if self._found:
                log.info(
                    "an earlier pass published results it did not mark done; "
                    "marking them done without publishing again",
                    batch_id=batch.api_batch_id,
                    found=len(self._found),
                )
        self._intent = intent

    def _wait_marked(self) -> None:
        """Until the chunk handed to the marking thread is marked; raises its error."""
        marking, self._marking = self._marking, None
        if marking is not None:
            marking.result()

    def _keep_lease(self, batch: BatchRow) -> None:
        """Before a chunk is published: renew the lease once a third of it has
        passed; a collector that lost it to another must not publish."""
        if time.monotonic() - self._lease_renewed <= self.lease.total_seconds() / 3:
            return
        if not self.store.renew_lease(batch.key, self.owner, self.clock() + self.lease):
            raise LeaseLost("another collector took the batch over")
        self._lease_renewed = time.monotonic()

    def _drain(self, batch: BatchRow, stop: threading.Event | None) -> None:
        """Wait until every queued record is delivered or failed for good, keeping the
        lease meanwhile, so that the next pass's read-back sees all that landed."""
        while len(self.producer) > 0 and not (stop is not None and stop.is_set()):
            self.producer.flush(1.0)
            self.store.renew_lease(batch.key, self.owner, self.clock() + self.lease)
        self._delivery_errors = []
        self._delivered = {}

    def _next_intent(self) -> dict[int, int] | None:
        """Step 6: the intent moved past the records just acknowledged. None (keep it)
        while rows an earlier pass published are still unmarked: they lie before."""
        delivered, self._delivered = self._delivered, {}
        if self._found or not delivered:
            return None
        for partition, offset in delivered.items():
            self._intent[partition] = max(self._intent.get(partition, 0), offset + 1)
        return dict(self._intent)

    # -- one chunk

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._delivery_errors.append(str(error))
            return
        partition, offset = message.partition(), message.offset()
        if partition is not None and offset is not None and offset >= 0:
            self._delivered[partition] = max(offset, self._delivered.get(partition, -1))

    def _process_chunk(
        self, batch: BatchRow, chunk: list[tuple[int, ResultBody]]
    ) -> tuple[Usage, Decimal]:
        assert batch.api_batch_id is not None
        self._keep_lease(batch)
        rows = self.store.invoices_by_id(batch.key, (row_id for row_id, _ in chunk), sources=False)
        now = self.clock()
        done: list[DoneResult] = []
        failed: list[tuple[ClaimedInvoice, str, str]] = []
        rejected: list[tuple[ClaimedInvoice, str]] = []
        usage = Usage()
        cost = Decimal(0)
        result_types: Counter[str] = Counter()
        found: list[str] = []
        for row_id, body in chunk:
            row = rows.get(row_id)
            if row is None:
                continue  # already final: a previous pass handled it
            result_types[_result_type(body)] += 1
            outcome = decide_outcome(body)
            row_usage = getattr(outcome, "usage", Usage())
            price = price_for(body.model) if isinstance(body, Succeeded) else None
            row_cost = cost_usd(row_usage, price) if price else Decimal(0)
            usage, cost = usage + row_usage, cost + row_cost
            match outcome:
                case Classified(classification=classification, model=model):
                    approval = decide_approval(
                        amount=row.invoice.amount
                        if row.invoice.amount is not None
                        else classification.amount,
                        currency=row.invoice.currency or classification.currency,
                        needs_review=classification.needs_review,
                        review_reason=classification.reason,
                        thresholds=self.settings.approval_thresholds,
                        model_amount=classification.amount
                        if row.invoice.amount is not None
                        else None,
                    )
                    record = classified_record(
                        invoice=row.invoice,
                        classification=classification,
                        approval=approval,
                        model=model,
                        batch_id=batch.api_batch_id,
                        classified_at=now,
                        content_hash=row.content_hash,
                    )
                    event_id = str(record["event_id"])
                    if event_id in self._found:
                        found.append(event_id)
                    else:
                        self._produce(row.invoice.invoice_id, self.codec.encode(record))
                    done.append(DoneResult(row.row_id, event_id, record, row_usage, row_cost))
                case Retry(reason=reason, detail=detail):
                    failed.append((row, reason, detail))
                case Reject(detail=detail):
                    rejected.append((row, detail))
        # Counters once per chunk and label, not once per row.
        for result_type, count in result_types.items():
            self.metrics.batch_results.labels(result_type).inc(count)
        # Step 5: every record of the chunk acknowledged, or nothing is marked.
        remaining = self.producer.flush(self.settings.shutdown_timeout_seconds * 3)
        errors, self._delivery_errors = self._delivery_errors, []
        if remaining or errors:
            self.metrics.published.labels("failed").inc(len(errors) or remaining)
            raise PublishFailed(
                f"{remaining} unacknowledged, {len(errors)} failed: "
                f"{errors[0] if errors else 'timeout'}"
            )
        crash_point("collect.after_publish")
        # Step 6.
        self._found.difference_update(found)
        self._wait_marked()
        self._marking = self._marker.submit(
            self.store.mark_done,
            batch.key,
            done,
            self.clock(),
            publish_from=self._next_intent(),
        )
        self.metrics.published.labels("published").inc(len(done) - len(found))
        if found:
            self.metrics.published.labels("found_published").inc(len(found))
        classified: Counter[tuple[str, str]] = Counter()
        observe_end_to_end = self.metrics.end_to_end.observe
        for result in done:
            record = result.record
            classified[
                str(record["department"]), "true" if record["approval_required"] else "false"
            ] += 1
            event_time = rows[result.row_id].event_time
            if event_time is not None:
                observe_end_to_end((now - event_time).total_seconds())
        for (department, needs_approval), count in classified.items():
            self.metrics.classified.labels(department, needs_approval).inc(count)
        self._dead_letter_all(batch, rejected, "model_rejected")
        self._retry_or_dlq(batch, failed)
        self.metrics.tokens.labels("input").inc(usage.input_tokens)
        self.metrics.tokens.labels("output").inc(usage.output_tokens)
        self.metrics.tokens.labels("cache_read").inc(usage.cache_read_tokens)
        self.metrics.tokens.labels("cache_creation").inc(usage.cache_creation_tokens)
        self.metrics.cost.inc(float(cost))
        return usage, cost

    def _produce(self, key: str, value: bytes) -> None:
        while True:
            try:
                self.producer.produce(
                    self.settings.output_topic,
                    key=key.encode(),
                    value=value,
                    on_delivery=self._on_delivery,
                )
                return
            except BufferError:
                self.producer.poll(0.1)

    def _dead_letter_all(
        self, batch: BatchRow, rows: list[tuple[ClaimedInvoice, str]], code: str
    ) -> None:
        """The original records of ``rows`` to the DLQ (acknowledged), then the rows
        marked ``dlq``."""
        if not rows:
            return
        originals = self.store.invoices_by_id(batch.key, [row.row_id for row, _ in rows])
        for row, reason in rows:
            original = originals.get(row.row_id)
            if original is None:
                continue  # already final: another pass handled it
            self.dead_letters.send(
                key=original.source_key,
                value=original.source_value,
                code=code,
                reason=reason,
                topic=original.source_topic,
                partition=original.source_partition,
                offset=original.source_offset,
            )
            self.metrics.dlq.labels(code).inc()
        self.dead_letters.flush()
        self.store.mark_dlq(batch.key, [row.row_id for row, _ in rows], code, rows[0][1])

    def _retry_or_dlq(self, batch: BatchRow, failed: list[tuple[ClaimedInvoice, str, str]]) -> None:
        """Failed requests go back to pending, or to the DLQ past MAX_ATTEMPTS."""
        retry: dict[str, list[int]] = {}
        give_up: list[tuple[ClaimedInvoice, str]] = []
        for row, reason, detail in failed:
            if row.attempts >= self.settings.max_attempts:
                give_up.append((row, f"{row.attempts} attempts failed; last: {detail}"))
            else:
                retry.setdefault(reason, []).append(row.row_id)
                self.metrics.retries.labels(reason).inc()
        self._dead_letter_all(batch, give_up, "max_attempts")
        for reason, row_ids in retry.items():
            self.store.mark_retry(batch.key, row_ids, reason, self.clock())


def _result_type(body: ResultBody) -> str:
    match body:
        case Succeeded():
            return "succeeded"
        case Errored():
            return "errored"
        case Canceled():
            return "canceled"
        case Expired():
            return "expired"
    return "errored"

"""Every Prometheus metric of both services, in one place.

Names and labels of the first block are public (CONTRACT.md): dashboards and
alert rules read them. Label values are bounded sets; never an invoice id or text.
Each service registers all of them, so a dashboard query never fails for a
metric that only the other service moves.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from invoice_batch.batch_requests import DEPARTMENTS

# Batch latency runs from seconds (the emulator, small batches) to the API's 24 h
# expiry; most real batches end within an hour.
LATENCY_BUCKETS = (10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800, 43200, 86400)
# Event time → published spans the buffer wait (up to a day with a nightly cut-off)
# plus batch latency.
END_TO_END_BUCKETS = (5, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 43200, 86400, 172800)
REQUEST_COUNT_BUCKETS = (1, 10, 100, 1_000, 5_000, 10_000, 25_000, 50_000, 100_000)

EVENT_OUTCOMES = ("accepted", "duplicate", "invalid")
TRIGGERS = ("count", "bytes", "age", "cutoff", "retry", "manual")
RESULT_TYPES = ("succeeded", "errored", "canceled", "expired")
TOKEN_TYPES = ("input", "output", "cache_read", "cache_creation")
RETRY_REASONS = ("errored", "expired", "canceled", "missing")


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        # --- contract (CONTRACT.md)
        self.events = Counter(
            "invoice_events", "Input records by outcome.", ["outcome"], registry=r
        )
        self.buffer_pending = Gauge(
            "invoice_buffer_pending", "Invoices waiting in the buffer.", registry=r
        )
        self.buffer_oldest_age = Gauge(
            "invoice_buffer_oldest_age_seconds", "Age of the oldest pending invoice.", registry=r
        )
        self.batches_submitted = Counter(
            "claude_batches_submitted",
            "Batches created, by what triggered them.",
            ["trigger"],
            registry=r,
        )
        self.batch_requests = Histogram(
            "claude_batch_requests",
            "Requests per submitted batch.",
            buckets=REQUEST_COUNT_BUCKETS,
            registry=r,
        )
        self.batches_open = Gauge(
            "claude_batches_open", "Batches submitted and not yet collected.", registry=r
        )
        self.batch_latency = Histogram(
            "claude_batch_latency_seconds",
            "Submit to ended, per batch.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_results = Counter(
            "claude_batch_results", "Results by type.", ["type"], registry=r
        )
        self.classified = Counter(
            "invoices_classified",
            "Classified invoices published.",
            ["department", "approval_required"],
            registry=r,
        )
        self.end_to_end = Histogram(
            "invoice_end_to_end_seconds",
            "Event time to published.",
            buckets=END_TO_END_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("claude_tokens", "Tokens billed, by type.", ["type"], registry=r)
        self.cost = Counter("claude_cost_usd", "Estimated spend at batch prices, USD.", registry=r)
        self.dlq = Counter(
            "invoice_dlq", "Records sent to the DLQ, by reason.", ["reason"], registry=r
        )
        # --- operator extras
        self.retries = Counter(
            "invoice_retries", "Invoices sent back to pending, by reason.", ["reason"], registry=r
        )
        self.api_errors = Counter(
            "claude_api_errors", "Failed API calls.", ["operation", "error_type"], registry=r
        )
        self.oldest_open_age = Gauge(
            "claude_batch_oldest_open_age_seconds", "Age of the oldest open batch.", registry=r
        )
        self.results_last = Gauge(
            "invoice_results_last_timestamp_seconds",
            "Unix time of the last result processed (0 before any).",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "invoice_consumer_lag",
            "Records behind the partition's high watermark.",
            ["topic", "partition"],
            registry=r,
        )
        self.last_poll = Gauge(
            "invoice_consumer_last_poll_timestamp_seconds",
            "Unix time of the consumer's last poll of the broker.",
            registry=r,
        )
        self.next_cutoff = Gauge(
            "invoice_flush_next_cutoff_timestamp_seconds",
            "Unix time of the next wall-clock cut-off (0 without one).",
            registry=r,
        )
        self.published = Counter(
            "invoice_publish",
            "Output events by outcome: published, failed, or found_published (published "
            "by a pass that crashed before marking them done; not published again).",
            ["outcome"],
            registry=r,
        )
        self.buffer_pending_bytes = Gauge(
            "invoice_buffer_pending_bytes", "Serialized request bytes pending.", registry=r
        )
        # Label values known up front appear at 0, so rate() works from the first scrape.
        for outcome in EVENT_OUTCOMES:
            self.events.labels(outcome)
        for trigger in TRIGGERS:
            self.batches_submitted.labels(trigger)
        for result_type in RESULT_TYPES:
            self.batch_results.labels(result_type)
        for token_type in TOKEN_TYPES:
            self.tokens.labels(token_type)
        for reason in RETRY_REASONS:
            self.retries.labels(reason)
        for outcome in ("published", "failed", "found_published"):
            self.published.labels(outcome)
        for department in DEPARTMENTS:
            for flag in ("true", "false"):
                self.classified.labels(department, flag)

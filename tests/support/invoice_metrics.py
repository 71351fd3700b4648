"""The metric names the two services expose, as Prometheus stores them.

This is the list that the dashboard and the rules in deploy/ may read; a name
that is not here is a typo or a metric the services do not have. The contract
names come from CONTRACT.md, the rest are the documented additions. Names are
the sample names on /metrics: prometheus_client adds ``_total`` to counters and
exposes a histogram as ``_bucket``, ``_sum`` and ``_count``.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

# counter sample name -> its labels
COUNTERS: Final = MappingProxyType(
    {
        "invoice_events_total": ("outcome",),
        "claude_batches_submitted_total": ("trigger",),
        "claude_batch_results_total": ("type",),
        "invoices_classified_total": ("department", "approval_required"),
        "claude_tokens_total": ("type",),
        "claude_cost_usd_total": (),
        "invoice_dlq_total": ("reason",),
        "invoice_retries_total": ("reason",),
        "claude_api_errors_total": ("operation", "error_type"),
        "invoice_publish_total": ("outcome",),
    }
)

# gauge name -> its labels
GAUGES: Final = MappingProxyType(
    {
        "invoice_buffer_pending": (),
        "invoice_buffer_pending_bytes": (),
        "invoice_buffer_oldest_age_seconds": (),
        "claude_batches_open": (),
        "claude_batch_oldest_open_age_seconds": (),
        "invoice_results_last_timestamp_seconds": (),
        "invoice_consumer_lag": ("topic", "partition"),
        "invoice_consumer_last_poll_timestamp_seconds": (),
        "invoice_flush_next_cutoff_timestamp_seconds": (),
    }
)

# histogram base name -> its labels (besides ``le`` on the buckets)
HISTOGRAMS: Final = MappingProxyType(
    {
        "claude_batch_requests": (),
        "claude_batch_latency_seconds": (),
        "invoice_end_to_end_seconds": (),
    }
)

# prometheus_client's process collector, present in both services.
PROCESS_METRICS: Final = frozenset(
    {
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_start_time_seconds",
        "process_open_fds",
        "process_max_fds",
    }
)

# Series Prometheus itself writes for every target.
SCRAPE_METRICS: Final = frozenset({"up"})

# Labels Prometheus or our scrape config attach to every series.
TARGET_LABELS: Final = frozenset({"job", "instance", "service"})

# Series a healthy run may never create: these count events that need not happen
# (a DLQ record, a retry, an API error) or describe a setting that may be off
# (no cut-off configured). Everything else must be on /metrics from the start.
MAY_BE_ABSENT: Final = frozenset(
    {
        "invoice_dlq_total",
        "invoice_retries_total",
        "claude_api_errors_total",
        "invoice_flush_next_cutoff_timestamp_seconds",
    }
)


def service_sample_names() -> frozenset[str]:
    """Every sample name the services put on /metrics, histograms expanded."""
    histogram_samples = {
        f"{name}{suffix}" for name in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")
    }
    return frozenset({*COUNTERS, *GAUGES, *histogram_samples})


def known_series_names() -> frozenset[str]:
    """Every name the dashboard and the rules may read besides recording rules."""
    return service_sample_names() | PROCESS_METRICS | SCRAPE_METRICS


def known_label_names() -> frozenset[str]:
    """Every label a selector, matcher or grouping clause may name."""
    labels = {
        label for table in (COUNTERS, GAUGES, HISTOGRAMS) for name in table for label in table[name]
    }
    return frozenset(labels | {"le"} | TARGET_LABELS)

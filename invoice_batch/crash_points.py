"""Named places where the chaos tests kill a service with SIGKILL.

``INVOICE_BATCH_CRASH_AT=name`` (optionally ``name@N``: the Nth time the point is
reached, default the first) makes that process kill itself there, as ``kill -9``
from outside would, but at an exact step of a protocol. Unset, each point costs
one dictionary lookup. The names and the step each one stands for:

- ``consume.before_db_commit``: rows inserted, store transaction not committed
- ``consume.after_db_commit``: rows committed, offsets not stored or committed
- ``consume.on_revoke``: partitions being revoked (during a rebalance)
- ``submit.after_claim``: batch row ``submitting`` committed, create not called
- ``submit.after_create``: the API created the batch, its id not recorded
- ``collect.mid_results``: part of a results file processed
- ``collect.after_publish``: a chunk acknowledged by the broker, rows not marked done
"""

from __future__ import annotations

import os
import signal

_target, _, _nth = os.environ.get("INVOICE_BATCH_CRASH_AT", "").partition("@")
_remaining = int(_nth) if _nth.isdigit() else 1

CRASH_POINTS = (
    "consume.before_db_commit",
    "consume.after_db_commit",
    "consume.on_revoke",
    "submit.after_claim",
    "submit.after_create",
    "collect.mid_results",
    "collect.after_publish",
)


def crash_point(name: str) -> None:
    """Kill this process here if INVOICE_BATCH_CRASH_AT names this point."""
    global _remaining
    if name != _target:
        return
    _remaining -= 1
    if _remaining <= 0:
        os.kill(os.getpid(), signal.SIGKILL)

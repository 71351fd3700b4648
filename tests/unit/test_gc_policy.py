"""gc_policy.settle: start-up's objects frozen, the young generation larger, and a
cycle made afterwards still collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from invoice_batch import gc_policy


@pytest.fixture()
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_settle_freezes_start_up_and_still_collects_later_cycles(restored_gc: None) -> None:
    kept = [{"start-up": True}]
    gc_policy.settle()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (gc_policy.YOUNG_THRESHOLD, *gc_policy.OLDER_THRESHOLDS)
    # The frozen objects are out of every collection's reach: no collection lists them.
    assert not any(obj is kept for obj in gc.get_objects())

    a, b = _Node(), _Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    gc.collect()
    assert gone() is None

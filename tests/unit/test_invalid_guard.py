"""The invalid-ratio guard: it stops the consumer once a share of the last records was
invalid, and hearing of valid records a run at a time changes nothing it does."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from invoice_batch.consumer.service import InvalidRatioGuard, TooManyInvalid


def test_it_stops_once_the_share_of_invalid_records_is_reached() -> None:
    guard = InvalidRatioGuard(window=4, max_share=0.75)
    for invalid in (True, False, True):
        guard.record(invalid)  # the window is not full yet
    with pytest.raises(TooManyInvalid, match="3 of the last 4 records were invalid"):
        guard.record(True)
    never = InvalidRatioGuard(window=0, max_share=0.1)
    for _ in range(10):
        never.record(True)


def _per_record(guard: InvalidRatioGuard, records: list[bool]) -> int | None:
    """Where ``record`` raises, one record at a time (None: never)."""
    for index, invalid in enumerate(records):
        try:
            guard.record(invalid)
        except TooManyInvalid:
            return index
    return None


def _in_runs(guard: InvalidRatioGuard, records: list[bool]) -> range | None:
    """The same records as the consumer gives them, each run of valid ones at once:
    the records of the call that raised (None: none did)."""
    index = 0
    for invalid, run in itertools.groupby(records):
        count = len(list(run))
        if invalid:
            for _ in range(count):
                try:
                    guard.record(True)
                except TooManyInvalid:
                    return range(index, index + 1)
                index += 1
        else:
            try:
                guard.record_valid(count)
            except TooManyInvalid:
                return range(index, index + count)
            index += count
    return None


@given(
    window=st.integers(min_value=0, max_value=12),
    max_share=st.sampled_from([0.25, 0.5, 0.75, 1.0]),
    records=st.lists(st.booleans(), max_size=60),
)
def test_runs_of_valid_records_at_once_raise_where_one_at_a_time_does(
    window: int, max_share: float, records: list[bool]
) -> None:
    one, runs = InvalidRatioGuard(window, max_share), InvalidRatioGuard(window, max_share)
    raised = _per_record(one, records)
    raised_in = _in_runs(runs, records)
    if raised is None:
        assert raised_in is None
    else:
        assert raised_in is not None and raised in raised_in
    # Raising or not, both heard the same records up to there.
    assert list(runs._recent) == list(one._recent)
    assert runs._invalid == one._invalid == sum(one._recent)

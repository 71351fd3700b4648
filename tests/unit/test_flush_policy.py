from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from invoice_batch.consumer.flush_policy import (
    BufferState,
    FlushPolicy,
    decide_flush,
    last_cutoff,
    next_cutoff,
)

KOLKATA = ZoneInfo("Asia/Kolkata")


def policy(**overrides: object) -> FlushPolicy:
    values: dict[str, object] = {
        "max_requests": 100,
        "max_bytes": 1_000_000,
        "max_wait": timedelta(hours=1),
        "cutoff": None,
        "zone": ZoneInfo("UTC"),
    }
    values.update(overrides)
    return FlushPolicy(**values)  # type: ignore[arg-type]


NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def state(
    count: int, size: int = 1000, age: timedelta = timedelta(0), retry_age: timedelta | None = None
) -> BufferState:
    return BufferState(count, size, NOW - age, None if retry_age is None else NOW - retry_age)


def test_nothing_pending_never_flushes() -> None:
    decision = decide_flush(BufferState(0, 0, None), NOW, policy())
    assert not decision.flush and decision.trigger is None


def test_count_reaching_the_limit_flushes_with_count_trigger() -> None:
    assert decide_flush(state(99), NOW, policy()).flush is False
    decision = decide_flush(state(100), NOW, policy())
    assert decision.flush and decision.trigger == "count"


def test_bytes_reaching_the_limit_flushes_with_bytes_trigger() -> None:
    decision = decide_flush(state(5, size=1_000_000), NOW, policy())
    assert decision.flush and decision.trigger == "bytes"


def test_oldest_row_waiting_max_wait_flushes_with_age_trigger() -> None:
    assert not decide_flush(state(5, age=timedelta(minutes=59)), NOW, policy()).flush
    decision = decide_flush(state(5, age=timedelta(minutes=60)), NOW, policy())
    assert decision.trigger == "age"


def test_waiting_decision_says_when_the_next_time_trigger_fires() -> None:
    decision = decide_flush(state(5, age=timedelta(minutes=20)), NOW, policy())
    assert decision.next_due == NOW + timedelta(minutes=40)


def test_last_cutoff_before_the_time_of_day_is_yesterdays() -> None:
    # 12:00 UTC is 17:30 in Kolkata: the last 23:00 cut-off was the day before.
    assert last_cutoff(NOW, time(23, 0), KOLKATA) == datetime(2026, 11, 26, 23, 0, tzinfo=KOLKATA)
    assert next_cutoff(NOW, time(23, 0), KOLKATA) == datetime(2026, 11, 27, 23, 0, tzinfo=KOLKATA)


def test_cutoff_flushes_rows_received_before_it_across_midnight_in_another_zone() -> None:
    cutoff_policy = policy(cutoff=time(23, 0), zone=KOLKATA, max_wait=None)
    # 23:00 in Kolkata is 17:30 UTC. A row received at 17:00 UTC, checked at 17:29 UTC: wait.
    received = datetime(2026, 11, 27, 17, 0, tzinfo=UTC)
    before = decide_flush(
        BufferState(3, 100, received), datetime(2026, 11, 27, 17, 29, tzinfo=UTC), cutoff_policy
    )
    assert not before.flush
    assert before.next_due == datetime(2026, 11, 27, 23, 0, tzinfo=KOLKATA)
    # Checked at 17:31 UTC (23:01 Kolkata): the cut-off has passed.
    after = decide_flush(
        BufferState(3, 100, received), datetime(2026, 11, 27, 17, 31, tzinfo=UTC), cutoff_policy
    )
    assert after.flush and after.trigger == "cutoff"
    assert after.received_before == datetime(2026, 11, 27, 23, 0, tzinfo=KOLKATA)
    # Just after local midnight (18:40 UTC = 00:10 Kolkata next day) it is still due.
    late = decide_flush(
        BufferState(3, 100, received), datetime(2026, 11, 27, 18, 40, tzinfo=UTC), cutoff_policy
    )
    assert late.trigger == "cutoff"


def test_rows_received_after_the_cutoff_wait_for_the_next_one() -> None:
    cutoff_policy = policy(cutoff=time(23, 0), zone=KOLKATA, max_wait=None)
    received = datetime(2026, 11, 27, 17, 45, tzinfo=UTC)  # 23:15 Kolkata
    decision = decide_flush(
        BufferState(3, 100, received), datetime(2026, 11, 27, 20, 0, tzinfo=UTC), cutoff_policy
    )
    assert not decision.flush
    assert decision.next_due == datetime(2026, 11, 28, 23, 0, tzinfo=KOLKATA)


def test_cutoff_in_a_zone_with_daylight_saving_uses_local_wall_clock() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    cutoff_policy = policy(cutoff=time(23, 0), zone=berlin, max_wait=None)
    # 2026-10-25: clocks go back; 23:00 local is 22:00 UTC that day.
    received = datetime(2026, 10, 25, 21, 0, tzinfo=UTC)
    assert not decide_flush(
        BufferState(1, 1, received), datetime(2026, 10, 25, 21, 59, tzinfo=UTC), cutoff_policy
    ).flush
    assert decide_flush(
        BufferState(1, 1, received), datetime(2026, 10, 25, 22, 1, tzinfo=UTC), cutoff_policy
    ).flush


def test_retried_rows_go_out_after_the_retry_delay_even_with_a_cutoff() -> None:
    cutoff_policy = policy(
        cutoff=time(23, 0), zone=KOLKATA, max_wait=None, retry_delay=timedelta(seconds=60)
    )
    fresh = BufferState(2, 10, NOW, NOW - timedelta(seconds=30))
    assert not decide_flush(fresh, NOW, cutoff_policy).flush
    due = BufferState(2, 10, NOW, NOW - timedelta(seconds=61))
    assert decide_flush(due, NOW, cutoff_policy).trigger == "retry"

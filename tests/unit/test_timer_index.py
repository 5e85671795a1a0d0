"""The due-time index: soonest first, rescheduling supersedes, stale entries never fire."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.timer_index import COMPACT_SLACK, KEEP, TimerIndex


def test_due_customers_come_out_once_in_time_order() -> None:
    index = TimerIndex()
    index.schedule("a", 30.0)
    index.schedule("b", 10.0)
    index.schedule("c", 20.0)
    assert index.pop_due(5.0) == []
    assert index.pop_due(25.0) == ["b", "c"]
    assert index.pop_due(25.0) == []
    assert index.pop_due(100.0) == ["a"]


def test_rescheduling_replaces_the_earlier_due_time() -> None:
    index = TimerIndex()
    index.schedule("a", 10.0)
    index.schedule("a", 50.0)
    assert index.pop_due(20.0) == []
    assert index.pop_due(50.0) == ["a"]


def test_scheduling_none_cancels() -> None:
    index = TimerIndex()
    index.schedule("a", 10.0)
    index.schedule("a", None)
    assert index.pop_due(100.0) == []


@given(st.lists(st.tuples(st.sampled_from("abcdef"), st.floats(0, 100)), max_size=60))
def test_each_customer_fires_at_most_once_at_its_last_scheduled_time(
    schedule: list[tuple[str, float]],
) -> None:
    index = TimerIndex()
    last: dict[str, float] = {}
    for customer, due in schedule:
        index.schedule(customer, due)
        last[customer] = due
    assert index.customers == len(last)
    fired = index.pop_due(100.0)
    assert sorted(fired) == sorted(last)
    assert index.customers == 0
    assert fired == sorted(fired, key=lambda c: last[c]) or len(set(last.values())) < len(last)


def test_a_timer_and_a_deadline_are_kept_apart_and_the_soonest_fires() -> None:
    index = TimerIndex()
    index.schedule("a", 50.0, 20.0)
    assert index.due("a") == 20.0
    # An event without a trigger reads only the state: the deadline stays as indexed.
    index.schedule("a", 30.0, KEEP)
    assert index.pop_due(25.0) == ["a"]
    # What fired has nothing left: the tick that follows schedules both again.
    assert index.timer_at == {} and index.deadline_at == {}


def test_keeping_one_due_time_while_the_other_changes() -> None:
    index = TimerIndex()
    index.schedule("a", 40.0, 60.0)
    index.schedule("a", None, KEEP)  # the state's timers are gone, the open decision stays
    assert index.pop_due(50.0) == []
    assert index.pop_due(60.0) == ["a"]
    index.schedule("b", KEEP, KEEP)  # nothing read, nothing indexed: nothing due
    assert index.due("b") is None and index.customers == 0
    index.schedule("c", 10.0, 5.0)
    assert index.customers == 1
    index.cancel("c")
    assert index.customers == 0
    assert index.pop_due(100.0) == []


def test_stale_entries_are_dropped_once_they_outnumber_the_live_ones() -> None:
    """A timer moved by every event (a lapse, 60 days out) must not grow the heap per event."""
    index = TimerIndex()
    for event in range(50_000):
        customer = f"c{event % 100}"
        index.schedule(customer, 1_000_000.0 + event)  # each event moves its customer's timer
    assert index.customers == 100
    assert len(index.heap) <= 2 * 100 + COMPACT_SLACK
    fired = index.pop_due(2_000_000.0)
    assert sorted(fired) == sorted(f"c{n}" for n in range(100))  # each once, at its last time
    assert index.customers == 0

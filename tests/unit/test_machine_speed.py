"""The latency bench's machine-speed probe times the path the bench measures: triggers decided."""

from __future__ import annotations

from bench._machine_speed import measure_in_process
from streams.settings import Settings


def test_the_timed_triggers_are_decided_and_cost_more_than_a_mixed_event() -> None:
    cost = measure_in_process(Settings(), records=300, repeats=1)
    # Customers drawn from 100,000: nearly every trigger is a customer's first, so the policy
    # decides it (holdouts aside), not a frequency cap.
    assert cost.policy_share > 0.9
    assert cost.trigger_us > 0 and cost.mixed_us > 0 and cost.trigger_after_idle_us > 0
    # Deciding is the expensive part: a stream where 1 event in 5 triggers costs less an event.
    assert cost.trigger_us > cost.mixed_us


def test_repeated_customers_meet_the_caps_and_are_reported_as_such() -> None:
    cost = measure_in_process(Settings(), customers=20, records=300, repeats=1)
    assert cost.policy_share < 0.5

"""The latency benchmark's verdict on the mixed-stream goal, per generator linger series."""

from __future__ import annotations

import argparse
import math
from datetime import UTC, datetime

from bench._measure_steps import StepResult, percentile
from bench._paced_load import LoadReport
from bench.latency import Run, _goals, _paired_table, paired_verdict


def _step(rate: float, linger_ms: int, keeps_up: bool) -> StepResult:
    """A mixed step that kept up (every decision back, low p99) or fell behind (p99 of seconds)."""
    load = LoadReport(
        sent=int(rate * 10), measured_triggers=100, started_ns=0, finished_ns=10 * 10**9
    )
    return StepResult(
        "Kairos worker",
        "mixed",
        rate,
        load,
        count=100,
        p99_ms=50.0 if keeps_up else 3_000.0,
        linger_ms=linger_ms,
    )


def test_the_first_linger_series_is_the_headline_and_the_other_is_reported_beside_it() -> None:
    run = Run(started=datetime(2026, 12, 2, tzinfo=UTC))
    run.mixed = [
        _step(4000, 5, True),
        _step(5000, 5, True),
        _step(6000, 5, False),
        _step(3000, 0, True),
        _step(4000, 0, False),
    ]
    lines = _goals(run)
    assert any(
        "generator linger 5 ms): **5,000 events/s**; falls behind at 6,000/s" in x and "met" in x
        for x in lines
    )
    assert any(
        "generator linger 0 ms" in x and "3,000 events/s; falls behind at 4,000/s" in x
        for x in lines
    )


def test_a_headline_series_below_the_goal_is_missed() -> None:
    run = Run(started=datetime(2026, 12, 2, tzinfo=UTC))
    run.mixed = [_step(3000, 5, True), _step(4000, 5, False)]
    (line,) = _goals(run)
    assert "**3,000 events/s**" in line and "**missed**" in line
    assert "rate of one worker" in line


def test_a_run_of_several_workers_says_how_many_ran() -> None:
    run = Run(started=datetime(2026, 12, 2, tzinfo=UTC), kairos_workers=2)
    run.mixed = [_step(5000, 5, True), _step(6000, 5, False)]
    (line,) = _goals(run)
    assert "rate of 2 workers (Kairos worker" in line and "one worker" not in line


def _trigger_step(system: str, rate: float, round_: int, latencies: list[float]) -> StepResult:
    """A measured trigger step with these latencies (p99 as summarise would take it)."""
    lat = sorted(latencies)
    load = LoadReport(
        sent=len(lat), measured_triggers=len(lat), started_ns=0, finished_ns=10 * 10**9
    )
    return StepResult(
        system,
        "triggers",
        rate,
        load,
        count=len(lat),
        p50_ms=percentile(lat, 50),
        p99_ms=percentile(lat, 99),
        latencies_ms=lat,
        round=round_,
    )


def test_the_side_by_side_rounds_pool_their_latencies_for_the_2x_verdict() -> None:
    run = Run(started=datetime(2026, 12, 6, tzinfo=UTC))
    # Round 1: a quiet minute (bare 1 ms, Kairos 1.5 ms); round 2: a busy one (2 ms, 5 ms).
    run.paired = [
        _trigger_step("bare confluent-kafka loop", 1000, 1, [1.0] * 100),
        _trigger_step("Kairos worker", 1000, 1, [1.5] * 100),
        _trigger_step("Kairos worker", 1000, 2, [5.0] * 100),
        _trigger_step("bare confluent-kafka loop", 1000, 2, [2.0] * 100),
    ]
    side = paired_verdict(run)
    assert side is not None
    assert side.rounds == 2
    assert side.ratios == [1.5, 2.5]
    assert side.rounds_met == 1
    assert (side.floor_p99, side.kairos_p99) == (2.0, 5.0)  # pooled over 200 triggers each
    assert side.ratio == 2.5
    run.latency = [
        _trigger_step("bare confluent-kafka loop", 1000, 0, [1.0] * 100),
        _trigger_step("Kairos worker", 1000, 0, [1.9] * 100),
    ]
    lines = _goals(run)
    verdict = next(x for x in lines if "side by side" in x)
    assert "**2.5x** (goal ≤ 2x): **missed**" in verdict and "≤ 2x in 1 of 2" in verdict
    # The separate step's ratio is reported beside it, without a verdict of its own.
    separate = next(x for x in lines if "its own step" in x)
    assert "1.9x" in separate and "goal" not in separate


def test_without_side_by_side_rounds_the_separate_steps_decide() -> None:
    run = Run(started=datetime(2026, 12, 6, tzinfo=UTC))
    run.latency = [
        _trigger_step("bare confluent-kafka loop", 1000, 0, [2.0] * 100),
        _trigger_step("Kairos worker", 1000, 0, [3.0] * 100),
    ]
    assert paired_verdict(run) is None
    assert any("**1.5x** (goal ≤ 2x): met" in x for x in _goals(run))


def test_the_pooled_ratio_clear_of_broker_gc_is_reported_beside_the_verdict() -> None:
    run = Run(started=datetime(2026, 12, 6, tzinfo=UTC))
    steps = [
        _trigger_step("bare confluent-kafka loop", 1000, 1, [1.0] * 98 + [4.0] * 2),
        _trigger_step("Kairos worker", 1000, 1, [2.0] * 98 + [9.0] * 2),
    ]
    # Without a GC log (an external broker) there is nothing to attribute.
    run.paired = steps
    side = paired_verdict(run)
    assert side is not None and math.isnan(side.ratio_clear)
    # The slow triggers ran beside a broker GC cycle: clear of them the ratio is 2.0, the verdict
    # still counts everything (9.0 / 4.0).
    for step in steps:
        step.gc_pauses, step.gc_cycles = [], []
        step.clear_latencies_ms = [x for x in step.latencies_ms if x < 4.0]
    side = paired_verdict(run)
    assert side is not None
    assert side.ratio == 2.25
    assert (side.floor_p99_clear, side.kairos_p99_clear, side.ratio_clear) == (1.0, 2.0, 2.0)
    table = "\n".join(_paired_table(run, argparse.Namespace(warmup_s=3.0, paired_step_s=8.0)))
    assert "bare loop p99 1.00 ms, Kairos p99 2.00 ms, 2.0x" in table
    assert "**2.2x**" in table


def test_the_polling_rounds_get_a_table_of_their_own_and_do_not_change_the_verdict() -> None:
    run = Run(started=datetime(2026, 12, 6, tzinfo=UTC))
    run.paired = [
        _trigger_step("bare confluent-kafka loop", 1000, 1, [4.0] * 100),
        _trigger_step("Kairos worker", 1000, 1, [10.0] * 100),
    ]
    run.paired_polling = [
        _trigger_step("bare confluent-kafka loop", 1000, 1, [2.0] * 100),
        _trigger_step("Kairos worker", 1000, 1, [6.0] * 100),
    ]
    run.latency = [_trigger_step("Kairos worker", 1000, 0, [9.0] * 100)]
    polling = paired_verdict(run, run.paired_polling)
    assert polling is not None and polling.ratio == 3.0
    default = paired_verdict(run)
    assert default is not None and default.ratio == 2.5  # the verdict stays the default rounds'
    lines = _goals(run)
    assert any("**2.5x** (goal ≤ 2x): **missed**" in x for x in lines)
    with_polling = next(x for x in lines if "idle CPUs polling" in x)
    assert "p99 6.00 against 2.00 ms: 3.0x" in with_polling and "meets the 10 ms" in with_polling
    table = "\n".join(_paired_table(run, argparse.Namespace(warmup_s=3.0, paired_step_s=8.0)))
    assert "#### The same with idle CPUs polling" in table
    assert "| **pooled** | 2.00 | 2.00 | 6.00 | 6.00 | **3.0x** |" in table
    assert "bare loop 2.00 against 4.00 ms (0.50x), Kairos 6.00 against 10.00 ms (0.60x)" in table


def test_polling_rounds_that_could_not_be_measured_say_why() -> None:
    run = Run(started=datetime(2026, 12, 6, tzinfo=UTC))
    run.paired = [
        _trigger_step("bare confluent-kafka loop", 1000, 1, [1.0] * 100),
        _trigger_step("Kairos worker", 1000, 1, [2.0] * 100),
    ]
    run.polling_skipped = "/dev/cpu_dma_latency could not be opened for writing"
    table = "\n".join(_paired_table(run, argparse.Namespace(warmup_s=3.0, paired_step_s=8.0)))
    assert "with idle CPUs polling: not measured (/dev/cpu_dma_latency could not be" in table
    assert not any("idle CPUs polling" in x for x in _goals(run))

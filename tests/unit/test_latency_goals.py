"""The latency benchmark's verdict on the mixed-stream goal, per generator linger series."""

from __future__ import annotations

from datetime import UTC, datetime

from bench._measure_steps import StepResult
from bench._paced_load import LoadReport
from bench.latency import Run, _goals


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

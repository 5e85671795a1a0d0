"""The soak's readings: histogram counts above a bucket, and which stalls had a likely cause."""

from __future__ import annotations

from dataclasses import replace
from math import nan

from bench.soak import Sample, over, stall_causes, summary

SCRAPE = """# HELP kairos_gc_pause_seconds Garbage-collector pauses
# TYPE kairos_gc_pause_seconds histogram
kairos_gc_pause_seconds_bucket{generation="0",le="0.01"} 90.0
kairos_gc_pause_seconds_bucket{generation="0",le="0.02"} 99.0
kairos_gc_pause_seconds_bucket{generation="0",le="+Inf"} 100.0
kairos_gc_pause_seconds_count{generation="0"} 100.0
kairos_gc_pause_seconds_sum{generation="0"} 0.5
kairos_gc_pause_seconds_bucket{generation="2",le="0.02"} 1.0
kairos_gc_pause_seconds_bucket{generation="2",le="+Inf"} 4.0
kairos_gc_pause_seconds_count{generation="2"} 4.0
kairos_event_loop_lag_seconds_bucket{le="0.02"} 7.0
kairos_event_loop_lag_seconds_count 7.0
""".splitlines()


def test_over_counts_observations_above_the_bucket_across_label_sets() -> None:
    assert over(SCRAPE, "kairos_gc_pause_seconds") == 1.0 + 3.0
    assert over(SCRAPE, "kairos_gc_pause_seconds", le="0.01") == 10.0 + 4.0  # no 0.01 bucket: all 4
    assert over(SCRAPE, "kairos_event_loop_lag_seconds") == 0.0
    assert over(SCRAPE, "kairos_missing_seconds") == 0.0


def _sample(t: float, stalls: float, gc: float, steal_max: float) -> Sample:
    return replace(
        Sample(t, 0.0, 0, nan, nan, nan, nan, 0, 0.0, 0.0, 0.0, 0.0),
        stalls=stalls,
        gc_pauses=gc,
        steal_max_pct=steal_max,
    )


def test_stall_causes_attributes_each_stalled_window_once() -> None:
    samples = [
        _sample(10, 2, 0, 1.0),  # stalls, no GC, no steal: neither
        _sample(20, 2, 0, 9.0),  # no new stall: not counted, steal or not
        _sample(30, 5, 1, 0.5),  # stalls with a GC pause
        _sample(40, 6, 1, 7.0),  # stalls with steal
        _sample(50, 8, 3, 6.0),  # stalls with both
    ]
    text = stall_causes(samples, steal_pct=5.0)
    assert "stalls over 20 ms: 8 in the run, in 4 of 5 windows" in text
    assert "2 had a worker GC pause over 20 ms, 2 a second with 5% or more" in text
    assert "1 neither" in text
    assert "GC pauses over 20 ms in the run: 3" in text


def test_summary_says_dash_for_a_kind_of_decision_the_run_never_made() -> None:
    # A short run where no inactivity timer fell due: its p99 is nan in every window.
    samples = [
        replace(_sample(10.0 * i, 0, 0, 0.0), p50_ms=2.0, p99_ms=6.0, p99_explicit_ms=6.0)
        for i in range(1, 4)
    ]
    (latency,) = [line for line in summary(samples, start_rss=80.0) if "**Latency**" in line]
    assert "explicit events median 6.0 ms (max 6.0)" in latency
    assert "timer median - ms (max -)" in latency
    assert "nan" not in latency

"""The latency benchmark's reading of the broker's GC log and its attribution of the tail."""

from __future__ import annotations

from datetime import UTC, datetime

from bench._broker_gc import overlaps_pause, parse_pauses, pauses_between
from bench._measure_steps import Arrival, StepResult, attribute_broker_pauses
from bench._paced_load import LoadReport

LOG = """\
[2026-12-02T02:27:26.746+0000][0.004s] Using G1
[2026-12-02T02:27:27.256+0000][0.514s] GC(0) Pause Young (Normal) (G1 Evacuation Pause) 26M->6M(512M) 10.719ms
[2026-12-02T02:27:27.959+0000][1.216s] GC(3) Concurrent Mark Cycle
[2026-12-02T02:27:28.100+0000][1.357s] GC(3) Pause Remark 30M->30M(512M) 2.500ms
[2026-12-02T02:27:28.200+0000][1.457s] GC(3) Concurrent Mark Cycle 240.1ms
"""


def _ns(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1e9)


def test_pause_lines_are_read_with_their_wall_clock_end_and_duration() -> None:
    pauses = parse_pauses(LOG)
    # Only stop-the-world pauses: the concurrent cycle runs beside the application.
    assert [p.kind for p in pauses] == ["Pause Young", "Pause Remark"]
    young = pauses[0]
    assert young.end_ns == _ns("2026-12-02T02:27:27.256+00:00")
    assert young.duration_ns == 10_719_000
    assert young.start_ns == young.end_ns - 10_719_000
    assert datetime.fromtimestamp(young.end_ns / 1e9, UTC).minute == 27


def test_a_record_overlapping_a_pause_is_told_apart_from_one_clear_of_it() -> None:
    pause = parse_pauses(LOG)[0]
    before = pause.start_ns - 5_000_000
    assert overlaps_pause(before, pause.start_ns + 1, [pause])  # waited through the pause
    assert not overlaps_pause(before, pause.start_ns - 1, [pause])  # read before it began
    assert not overlaps_pause(pause.end_ns + 1, pause.end_ns + 2_000_000, [pause])
    assert pauses_between([pause], pause.end_ns + 1, pause.end_ns + 10) == []
    assert pauses_between([pause], pause.start_ns - 10, pause.start_ns) == [pause]


def test_the_clear_p99_leaves_out_only_the_triggers_caught_by_a_pause() -> None:
    pause = parse_pauses(LOG)[0]
    start = pause.start_ns - 500_000_000
    # 200 triggers 5 ms apart, each read 1 ms after it was sent; the ones in flight during the
    # pause are read only when it ends.
    arrivals = []
    for n in range(200):
        sent = start + n * 5_000_000
        recv = sent + 1_000_000
        if pause.start_ns <= recv and sent <= pause.end_ns:
            recv = pause.end_ns + 500_000
        arrivals.append(Arrival(sent, recv, "policy", sent + 400_000))
    report = LoadReport(started_ns=start, finished_ns=start + 200 * 5_000_000)
    result = StepResult("kairos", "triggers", 200.0, report)
    result = attribute_broker_pauses(result, arrivals, start, report.finished_ns, [pause])
    assert result.gc_pauses == [pause]
    assert round(result.gc_pause_ms, 3) == 10.719
    assert result.p99_clear_ms == 1.0
    assert result.p99_decided_ms == 0.4
    # Without a GC log (an external broker) nothing is attributed.
    bare = attribute_broker_pauses(
        StepResult("kairos", "triggers", 200.0, report), arrivals, start, report.finished_ns, None
    )
    assert bare.gc_pauses is None


ZGC_LOG = """\
[2026-12-06T03:09:04.300+0000][1.300s] GC(0) Garbage Collection (Warmup) 210M(10%)->42M(2%)
[2026-12-06T03:09:04.328+0000][1.367s] GC(0) Pause Mark Start 0.009ms
[2026-12-06T03:09:04.350+0000][1.390s] GC(0) Concurrent Mark 21.004ms
[2026-12-06T03:09:04.361+0000][1.400s] GC(0) Pause Mark End 0.014ms
[2026-12-06T03:09:04.383+0000][1.422s] GC(0) Pause Relocate Start 0.012ms
"""


def test_zgc_pauses_are_read_and_its_concurrent_phases_are_not() -> None:
    pauses = parse_pauses(ZGC_LOG)
    assert [p.kind for p in pauses] == [
        "Pause Mark Start",
        "Pause Mark End",
        "Pause Relocate Start",
    ]
    assert [p.duration_ns for p in pauses] == [9_000, 14_000, 12_000]

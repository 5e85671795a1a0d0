"""The latency benchmark's reading of the broker's GC log and its attribution of the tail."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from bench._broker_gc import overlaps_any, parse_cycles, parse_pauses, spans_between
from bench._measure_steps import Arrival, StepResult, attribute_broker_gc
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


def _paced(
    start: int, count: int, read_at: Callable[[int], int], decided_after_ns: int | None = None
) -> tuple[list[Arrival], LoadReport]:
    """`count` triggers sent 5 ms apart from `start`, each read when read_at(sent) says."""
    sent_at = [start + n * 5_000_000 for n in range(count)]
    arrivals = [
        Arrival(
            sent,
            read_at(sent),
            "policy",
            None if decided_after_ns is None else sent + decided_after_ns,
        )
        for sent in sent_at
    ]
    return arrivals, LoadReport(started_ns=start, finished_ns=start + count * 5_000_000)


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
    assert overlaps_any(before, pause.start_ns + 1, [pause])  # waited through the pause
    assert not overlaps_any(before, pause.start_ns - 1, [pause])  # read before it began
    assert not overlaps_any(pause.end_ns + 1, pause.end_ns + 2_000_000, [pause])
    assert spans_between([pause], pause.end_ns + 1, pause.end_ns + 10) == []
    assert spans_between([pause], pause.start_ns - 10, pause.start_ns) == [pause]


def test_the_clear_p99_leaves_out_only_the_triggers_caught_by_a_pause() -> None:
    pause = parse_pauses(LOG)[0]
    start = pause.start_ns - 500_000_000

    # Each trigger is read 1 ms after it was sent; the ones in flight during the pause are read
    # only when it ends.
    def read_at(sent: int) -> int:
        caught = pause.start_ns <= sent + 1_000_000 and sent <= pause.end_ns
        return pause.end_ns + 500_000 if caught else sent + 1_000_000

    arrivals, report = _paced(start, 200, read_at, decided_after_ns=400_000)
    result = StepResult("kairos", "triggers", 200.0, report)
    result = attribute_broker_gc(result, arrivals, start, report.finished_ns, ([pause], []))
    assert result.gc_pauses == [pause]
    assert round(result.gc_pause_ms, 3) == 10.719
    assert result.p99_clear_ms == 1.0
    assert result.p99_decided_ms == 0.4
    # Without a GC log (an external broker) nothing is attributed.
    bare = attribute_broker_gc(
        StepResult("kairos", "triggers", 200.0, report), arrivals, start, report.finished_ns, None
    )
    assert bare.gc_pauses is None


# From the broker's log of 2026-12-06 (ZGC, gc,gc+phases): a cycle opens with its first pause
# and its summary line is written when it is over; a summary without an opening (the log began
# mid-cycle) is no cycle.
ZGC_CYCLE_LOG = """\
[2026-12-06T10:08:30.100+0000][292.100s] GC(29) Garbage Collection (Proactive) 1066M(52%)->244M(12%)
[2026-12-06T10:08:44.196+0000][306.203s] GC(30) Pause Mark Start 0.008ms
[2026-12-06T10:08:44.329+0000][306.335s] GC(30) Concurrent Mark 132.213ms
[2026-12-06T10:08:44.329+0000][306.335s] GC(30) Pause Mark End 0.020ms
[2026-12-06T10:08:44.361+0000][306.368s] GC(30) Pause Relocate Start 0.015ms
[2026-12-06T10:08:44.392+0000][306.398s] GC(30) Concurrent Relocate 30.674ms
[2026-12-06T10:08:44.392+0000][306.398s] GC(30) Garbage Collection (Proactive) 1582M(77%)->246M(12%)
"""


def test_zgc_pauses_are_read_and_its_concurrent_phases_are_not() -> None:
    pauses = parse_pauses(ZGC_CYCLE_LOG)
    assert [p.kind for p in pauses] == [
        "Pause Mark Start",
        "Pause Mark End",
        "Pause Relocate Start",
    ]
    assert [p.duration_ns for p in pauses] == [8_000, 20_000, 15_000]


def test_a_zgc_cycle_spans_its_first_pause_to_its_summary_line() -> None:
    cycles = parse_cycles(ZGC_CYCLE_LOG)
    assert len(cycles) == 1
    cycle = cycles[0]
    assert cycle.cause == "Proactive"
    assert cycle.start_ns == _ns("2026-12-06T10:08:44.196+00:00") - 8_000
    assert cycle.end_ns == _ns("2026-12-06T10:08:44.392+00:00")
    assert round(cycle.duration_ns / 1e6, 3) == 196.008
    # Its pauses are still read as pauses, inside the cycle.
    assert all(cycle.start_ns <= p.start_ns <= cycle.end_ns for p in parse_pauses(ZGC_CYCLE_LOG))


def test_g1s_concurrent_marking_is_a_cycle_and_its_young_pauses_are_not() -> None:
    cycles = parse_cycles(LOG)
    assert [(c.cause, c.duration_ns) for c in cycles] == [("G1 marking", 240_100_000)]
    assert cycles[0].end_ns == _ns("2026-12-02T02:27:28.200+00:00")


def test_the_clear_p99_also_leaves_out_the_triggers_that_ran_beside_a_cycle() -> None:
    cycle = parse_cycles(ZGC_CYCLE_LOG)[0]

    # 1 ms each, but 4 ms while the cycle holds a core.
    def read_at(sent: int) -> int:
        slow = cycle.start_ns <= sent + 1_000_000 and sent <= cycle.end_ns
        return sent + (4_000_000 if slow else 1_000_000)

    arrivals, report = _paced(cycle.start_ns - 1_000_000_000, 400, read_at)
    start = report.started_ns
    result = attribute_broker_gc(
        StepResult("kairos", "triggers", 200.0, report),
        arrivals,
        start,
        report.finished_ns,
        (parse_pauses(ZGC_CYCLE_LOG), [cycle]),
    )
    assert result.gc_cycles == [cycle]
    assert round(result.gc_cycle_ms) == 196
    assert len(result.gc_pauses or []) == 3
    assert result.p99_clear_ms == 1.0
    assert len(result.clear_latencies_ms) == 400 - 40  # the ~196 ms of the cycle, 5 ms apart
    # Counted with everything, the 40 slow triggers are the tail.
    assert max(a.recv_ns - a.sent_ns for a in arrivals) == 4_000_000

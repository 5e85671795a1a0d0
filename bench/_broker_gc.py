"""The local broker's GC (deploy/kafka/kafka.sh logs it), lined up with latency.

A JVM pause stops the broker: every record in flight waits for it, whichever system is measured.
A concurrent cycle (ZGC's whole collection, G1's marking) stops nothing but keeps a GC thread
busy for 100-200 ms, a core of the 2 this machine shares: in a run of 2026-12-06 the largest
slow episodes of the Kairos worker began within a millisecond of a ZGC cycle. The latency
benchmark reports both inside each step and the p99 of the triggers whose path overlapped
neither, so that a tail caused by the broker is told apart from one caused by the system under
test. The all-in p99 stays the headline figure.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol, TypeVar

from bench._proc_stats import broker_run_dir

# One line of the log: its wall-clock end, GC number and text, for pauses and cycles alike.
_LINE = re.compile(r"^\[(?P<time>[^\]]+)\]\[[^\]]*\] GC\((?P<gc>\d+)\) (?P<text>.*)$")
# A pause, e.g. G1 "Pause Young (Normal) (G1 Evacuation Pause) 26M->6M(512M) 10.719ms" or ZGC
# (gc+phases) "Pause Mark Start 0.009ms".
_PAUSE = re.compile(r"^(?P<kind>Pause(?: [A-Z][a-z]+)+) (?:.*? )?(?P<ms>[\d.]+)ms$")
# ZGC: a cycle opens with this pause and ends with its summary line ("Garbage Collection (Proactive)
# 1582M(77%)->246M(12%)"), logged once the cycle is over.
_ZGC_OPENS = re.compile(r"^Pause Mark Start (?P<ms>[\d.]+)ms$")
_ZGC_ENDS = re.compile(r"^Garbage Collection \((?P<cause>[^)]*)\)")
# G1: the concurrent marking, logged when it ends with its length.
_G1_MARKING = re.compile(r"^Concurrent Mark Cycle (?P<ms>[\d.]+)ms$")


class Span(Protocol):
    """Anything with a start and an end in epoch ns: a pause or a cycle."""

    @property
    def start_ns(self) -> int: ...

    @property
    def end_ns(self) -> int: ...


SpanT = TypeVar("SpanT", bound=Span)


@dataclass(frozen=True)
class Pause:
    """One stop-the-world pause: when it ended (epoch ns) and how long it took."""

    end_ns: int
    duration_ns: int
    kind: str

    @property
    def start_ns(self) -> int:
        """When the pause began (the log line is written as it ends)."""
        return self.end_ns - self.duration_ns


@dataclass(frozen=True)
class Cycle:
    """One concurrent collection (epoch ns): it stops nothing, but a GC thread holds a core."""

    start_ns: int
    end_ns: int
    cause: str

    @property
    def duration_ns(self) -> int:
        """How long the cycle ran."""
        return self.end_ns - self.start_ns


def gc_log_path(repo: Path) -> Path:
    """Where deploy/kafka/kafka.sh has the local broker log its GC pauses."""
    return broker_run_dir(repo) / "gc.log"


def _epoch_ns(stamp: str) -> int:
    return int(datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp() * 1e9)


def parse_gc(text: str) -> tuple[list[Pause], list[Cycle]]:
    """Every pause and concurrent cycle of a JDK unified GC log (decorations `time,uptime`).

    One pass over the log, in log order; cycles are ZGC's collections and G1's marking.
    """
    pauses: list[Pause] = []
    cycles: list[Cycle] = []
    opened: dict[str, int] = {}  # ZGC cycle number -> when its first pause began
    for line in text.splitlines():
        match = _LINE.match(line.strip())
        if match is None:
            continue
        at_ns, said = _epoch_ns(match["time"]), match["text"]
        if (pause := _PAUSE.match(said)) is not None:
            pauses.append(Pause(at_ns, int(float(pause["ms"]) * 1e6), pause["kind"].strip()))
        if (first := _ZGC_OPENS.match(said)) is not None:
            opened[match["gc"]] = at_ns - int(float(first["ms"]) * 1e6)
        elif (end := _ZGC_ENDS.match(said)) is not None and match["gc"] in opened:
            cycles.append(Cycle(opened.pop(match["gc"]), at_ns, end["cause"]))
        elif (marking := _G1_MARKING.match(said)) is not None:
            cycles.append(Cycle(at_ns - int(float(marking["ms"]) * 1e6), at_ns, "G1 marking"))
    return pauses, cycles


def parse_pauses(text: str) -> list[Pause]:
    """Every stop-the-world pause of a GC log, in log order."""
    return parse_gc(text)[0]


def parse_cycles(text: str) -> list[Cycle]:
    """Every concurrent cycle of a GC log, in log order."""
    return parse_gc(text)[1]


def read_gc(path: Path) -> tuple[list[Pause], list[Cycle]]:
    """The pauses and cycles in the broker's GC log, or none if there is no log (an external broker)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return [], []
    return parse_gc(text)


def spans_between(spans: Sequence[SpanT], start_ns: int, end_ns: int) -> list[SpanT]:
    """The pauses (or cycles) that overlap [start_ns, end_ns]."""
    return [p for p in spans if p.end_ns >= start_ns and p.start_ns <= end_ns]


def overlaps_any(sent_ns: int, recv_ns: int, spans: Sequence[Span]) -> bool:
    """True if a record's path (sent to received) overlapped a broker pause (or cycle)."""
    return any(p.start_ns <= recv_ns and p.end_ns >= sent_ns for p in spans)

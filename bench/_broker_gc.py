"""The local broker's GC pauses (deploy/kafka/kafka.sh logs one line per pause), lined up with latency.

A JVM pause stops the broker: every record in flight waits for it, whichever system is measured.
The latency benchmark reports the pauses inside each step and the p99 of the triggers whose path
did not overlap one, so that a tail caused by the broker is told apart from one caused by the
system under test. The all-in p99 stays the headline figure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bench._proc_stats import broker_run_dir

# G1: [2026-12-02T02:27:27.256+0000][0.514s] GC(0) Pause Young (Normal) (G1 Evacuation Pause) 26M->6M(512M) 10.719ms
# ZGC (gc+phases): [2026-12-06T03:09:04.328+0000][1.367s] GC(0) Pause Mark Start 0.009ms
_PAUSE = re.compile(
    r"^\[(?P<time>[^\]]+)\]\[[^\]]*\] GC\(\d+\) (?P<kind>Pause(?: [A-Z][a-z]+)+) (?:.*? )?(?P<ms>[\d.]+)ms$"
)


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


def gc_log_path(repo: Path) -> Path:
    """Where deploy/kafka/kafka.sh has the local broker log its GC pauses."""
    return broker_run_dir(repo) / "gc.log"


def parse_pauses(text: str) -> list[Pause]:
    """Every pause line of a JDK unified GC log (decorations `time,uptime`), in log order."""
    pauses = []
    for line in text.splitlines():
        match = _PAUSE.match(line.strip())
        if match is None:
            continue
        ended = datetime.strptime(match["time"], "%Y-%m-%dT%H:%M:%S.%f%z")
        end_ns = int(ended.timestamp() * 1e9)
        pauses.append(Pause(end_ns, int(float(match["ms"]) * 1e6), match["kind"].strip()))
    return pauses


def read_pauses(path: Path) -> list[Pause]:
    """The pauses in the broker's GC log, or none if there is no log (an external broker)."""
    try:
        return parse_pauses(path.read_text(errors="replace"))
    except OSError:
        return []


def pauses_between(pauses: list[Pause], start_ns: int, end_ns: int) -> list[Pause]:
    """The pauses that overlap [start_ns, end_ns]."""
    return [p for p in pauses if p.end_ns >= start_ns and p.start_ns <= end_ns]


def overlaps_pause(sent_ns: int, recv_ns: int, pauses: list[Pause]) -> bool:
    """True if a record's path (sent to received) overlapped a broker pause."""
    return any(p.start_ns <= recv_ns and p.end_ns >= sent_ns for p in pauses)

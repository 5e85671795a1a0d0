"""Sample a running worker with py-spy and say where its CPU time goes, by package and by function."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# A sample belongs to the innermost frame that matches one of these (first match in this order);
# frames of other code (stdlib helpers, unlisted packages) count for the layer that called them.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("RocksDB (rocksdict, Faust store)", ("rocksdict", "faust/stores/")),
    ("Faust tables (changelog, table API)", ("faust/tables/",)),
    ("JSON / msgpack (msgspec, orjson, schemas)", ("msgspec", "orjson", "schemas/", "json/")),
    (
        "bandit (engine.bandit/models/policies, River, numpy)",
        ("engine/bandit", "engine/models", "engine/policies", "river/", "numpy/"),
    ),
    ("engine: state, triggers, features, guardrails, decide", ("engine/",)),
    ("Kairos stream layer (streams/)", ("streams/",)),
    ("metrics (prometheus_client)", ("prometheus_client",)),
    ("aiokafka client (fetch, send, protocol)", ("aiokafka/", "kafka/")),
    ("Faust/mode stream machinery", ("faust/", "mode/")),
    ("asyncio event loop, selectors, sockets", ("asyncio/", "selectors", "socket", "ssl")),
)


@dataclass
class Profile:
    """Samples by category (innermost matching frame) and by innermost function."""

    samples: int = 0
    seconds: float = 0.0
    rate: int = 0
    by_category: Counter[str] = field(default_factory=Counter)
    by_function: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)
    error: str = ""

    @property
    def busy_share(self) -> float:
        """Fraction of wall time the sampled threads were on CPU (non-idle samples / possible)."""
        possible = self.seconds * self.rate
        return self.samples / possible if possible else 0.0


# Frames whose inclusive share is worth reporting (substring of the py-spy frame text).
INCLUSIVE = {
    "Processor.on_event": "on_event ",
    "decide (engine)": "decide (engine/decide.py",
    "bandit choose/scores": "(engine/bandit.py",
    "features": "(engine/features.py",
    "table writes (__setitem__)": "__setitem__ (faust/tables",
    "sends (_apply -> topic.send)": "_apply (streams/app.py",
}


def py_spy() -> str | None:
    """The py-spy executable next to this interpreter, or on PATH."""
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


def start_sampling(
    pid: int, seconds: float, out: Path, rate: int = 250
) -> subprocess.Popen[bytes] | None:
    """Start py-spy (non-blocking sampling, raw collapsed stacks) on pid; None if unavailable."""
    exe = py_spy()
    if exe is None:
        return None
    return subprocess.Popen(
        [
            exe,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            str(rate),
            "--nonblocking",
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def summarise(path: Path, seconds: float, rate: int = 250) -> Profile:
    """Read py-spy's raw output (``frame;frame;... count`` lines, outermost first)."""
    profile = Profile(seconds=seconds, rate=rate)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        profile.error = str(exc)
        return profile
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        profile.samples += count
        profile.by_category[_category(frames)] += count
        leaf = frames[-1] if frames else "?"
        profile.by_function[_short(leaf)] += count
        for name, needle in INCLUSIVE.items():
            if any(needle in f for f in frames):
                profile.inclusive[name] += count
    return profile


def _category(frames: list[str]) -> str:
    for frame in reversed(frames):
        location = frame[frame.find("(") :] if "(" in frame else frame
        for name, needles in CATEGORIES:
            if any(n in location for n in needles):
                return name
    return "other (unattributed)"


def _short(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func (file.py)`` for a readable table."""
    name, _, location = frame.partition(" (")
    file = location.split(":")[0].rstrip(")")
    parts = file.split("/")
    return f"{name} ({'/'.join(parts[-2:])})" if file else name

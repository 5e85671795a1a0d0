"""CPU use of processes and of the machine from /proc (Linux), and a description of the machine."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

from bench.report import memory_gib

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_s(pid: int) -> float | None:
    """User plus system CPU seconds of a process (all its threads), or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After the command name: state is field 3; utime and stime are fields 14 and 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / _TICK


def _group_cpu_s(pids: tuple[int, ...]) -> float | None:
    """CPU seconds of several processes together, or None if any of them is gone."""
    total = 0.0
    for pid in pids:
        used = process_cpu_s(pid)
        if used is None:
            return None
        total += used
    return total


def machine_busy_ticks() -> tuple[int, int]:
    """Busy and total jiffies of all CPUs since boot (the first line of /proc/stat)."""
    busy, total, _ = machine_ticks()
    return busy, total


def machine_ticks(stat: Path = Path("/proc/stat")) -> tuple[int, int, int]:
    """Busy, total and stolen jiffies of all CPUs since boot (the first line of /proc/stat).

    Stolen (steal) is time a vCPU wanted to run while the hypervisor ran something else; it
    counts as busy, since the guest's work waited through it.
    """
    try:
        values = [int(v) for v in stat.read_text().splitlines()[0].split()[1:]]
    except OSError:
        return 0, 0, 0
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    steal = values[7] if len(values) > 7 else 0
    return total - idle, total, steal


class CpuMeter:
    """CPU use of named processes over an interval, in percent of one core."""

    def __init__(self, pids: Mapping[str, int | tuple[int, ...]]) -> None:
        """`pids`: a process per name, or several whose CPU adds up (a system of processes)."""
        self.pids: dict[str, tuple[int, ...]] = {}
        for name, given in pids.items():
            group = tuple(p for p in ((given,) if isinstance(given, int) else given) if p > 0)
            if group:
                self.pids[name] = group
        self._start: dict[str, float | None] = {}
        self._wall = 0.0
        self._machine = (0, 0, 0)

    def start(self) -> None:
        """Take the first reading."""
        self._wall = time.monotonic()
        self._start = {name: _group_cpu_s(group) for name, group in self.pids.items()}
        self._machine = machine_ticks()

    def stop(self) -> dict[str, float]:
        """Percent of one core used by each process since start, plus 'machine' (all cores, %),
        'stolen' (% of one core the hypervisor took) and 'others' (the rest, % of one core)."""
        wall = max(time.monotonic() - self._wall, 1e-9)
        out: dict[str, float] = {}
        for name, group in self.pids.items():
            before, after = self._start.get(name), _group_cpu_s(group)
            if before is not None and after is not None:
                out[name] = 100.0 * (after - before) / wall
        busy0, total0, steal0 = self._machine
        busy1, total1, steal1 = machine_ticks()
        if total1 > total0:
            ours = sum(out.values())
            cores = os.cpu_count() or 1
            out["machine"] = 100.0 * (busy1 - busy0) / (total1 - total0)
            out["stolen"] = 100.0 * cores * (steal1 - steal0) / (total1 - total0)
            # Everything else on the machine (other users' jobs, the kernel), in % of one core.
            out["others"] = max(0.0, out["machine"] * cores - ours - out["stolen"])
        return out


def ram_gib() -> float:
    """Total memory in GiB."""
    return memory_gib()


def kafka_version(repo: Path) -> str:
    """The Apache Kafka version the local broker script runs (from deploy/kafka/pom.xml)."""
    try:
        found = re.search(
            r"<kafka.version>(.*?)</kafka.version>", (repo / "deploy/kafka/pom.xml").read_text()
        )
    except OSError:
        return "unknown"
    return found.group(1) if found else "unknown"


def package_version(name: str) -> str:
    """An installed distribution's version, or '?'."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


def broker_run_dir(repo: Path) -> Path:
    """Where deploy/kafka/kafka.sh keeps the local broker's PID, port, logs and data."""
    return Path(os.environ.get("KAIROS_KAFKA_RUN_DIR", repo / ".run/kafka"))


def broker_pid(repo: Path) -> int:
    """The PID of the local broker started by deploy/kafka/kafka.sh, or 0 when there is none."""
    run_dir = broker_run_dir(repo)
    try:
        pid = int((run_dir / "kafka.pid").read_text().strip())
    except (OSError, ValueError):
        return 0
    return pid if process_cpu_s(pid) is not None else 0


def broker_jvm(pid: int) -> str:
    """The broker JVM's collector and heap, from its command line ('' if it cannot be read)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except (OSError, ValueError):
        return ""
    collectors = {"-XX:+UseZGC": "ZGC", "-XX:+UseG1GC": "G1", "-XX:+UseParallelGC": "Parallel GC"}
    found = [collectors[a] for a in args if a in collectors]
    heap = [a.removeprefix("-Xmx") for a in args if a.startswith("-Xmx")]
    parts = ([found[-1]] if found else []) + ([f"{heap[-1]} heap"] if heap else [])
    return ", ".join(parts)


def wait_quiet(max_busy_pct: float = 25.0, timeout_s: float = 180.0) -> float:
    """Wait until the machine is mostly idle (other jobs skew latency); return the last busy %."""
    deadline = time.monotonic() + timeout_s
    busy = 100.0
    while time.monotonic() < deadline:
        b0, t0 = machine_busy_ticks()
        time.sleep(2.0)
        b1, t1 = machine_busy_ticks()
        busy = 100.0 * (b1 - b0) / max(t1 - t0, 1)
        if busy <= max_busy_pct:
            break
    return busy

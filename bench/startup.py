"""Start-up benchmark: broker start, worker ready time (fresh, after a clean stop, after SIGKILL).

One command: `python bench/startup.py` (needs KAIROS_KAFKA_BOOTSTRAP, as `make bench-startup`
sets it). Writes the "Start-up" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import machine_line, replace_section
from streams.demo import free_port
from streams.settings import Settings
from streams.topics import ensure_topics
from streams.worker_process import WorkerProcess

ROOT = Path(__file__).resolve().parent.parent


def worker_settings(bootstrap: str, run_dir: Path, instance_id: str | None) -> Settings:
    """An isolated worker configuration (own topics and group)."""
    prefix = f"kairos-startup-{uuid.uuid4().hex[:8]}"
    names = ("events", "outcomes", "decisions", "rewards", "models", "dlq", "ticks")
    settings = Settings(
        kafka_bootstrap=bootstrap,
        app_id=prefix,
        topics={n: f"{prefix}.{n}.v1" for n in names},  # type: ignore[arg-type]
        data_dir=run_dir / "tables",
        web_port=free_port(),
        group_instance_id=instance_id,
    )
    ensure_topics(settings)
    return settings


def measure(bootstrap: str, rounds: int, instance_id: str | None) -> dict[str, list[float]]:
    """Ready times of a fresh worker, a restart after SIGTERM and a restart after SIGKILL."""
    results: dict[str, list[float]] = {"fresh": [], "after clean stop": [], "after SIGKILL": []}
    for _ in range(rounds):
        run_dir = Path(tempfile.mkdtemp(prefix="kairos-startup-"))
        settings = worker_settings(bootstrap, run_dir, instance_id)
        worker = WorkerProcess(settings, run_dir / "w1.log").start()
        results["fresh"].append(worker.wait_ready(120))
        worker.stop()
        worker = WorkerProcess(settings, run_dir / "w2.log").start()
        results["after clean stop"].append(worker.wait_ready(120))
        worker.kill()
        worker = WorkerProcess(settings, run_dir / "w3.log").start()
        results["after SIGKILL"].append(worker.wait_ready(120))
        worker.stop()
    return results


def main() -> None:
    """Measure and write the start-up section of BENCHMARKS.md."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    bootstrap = os.environ.get("KAIROS_KAFKA_BOOTSTRAP")
    if not bootstrap:
        sys.exit("KAIROS_KAFKA_BOOTSTRAP is not set: run `make bench-startup`")
    dynamic = measure(bootstrap, args.rounds, None)
    static = measure(bootstrap, args.rounds, "kairos-0")
    lines = [
        machine_line(),
        "",
        "Command: `make bench-startup` (`python bench/startup.py`). Ready = `/readyz` answers 200 "
        "(partitions assigned, tables recovered), measured from process launch, so it includes "
        "Python imports (~1 s).",
        "",
        "The local broker's own start (JVM + KRaft format + until a topic can be created) is "
        "printed by `deploy/kafka/kafka.sh start`: 2-4 s on this machine.",
        "",
        "| worker start | dynamic membership (median, max) | static membership `KAIROS_GROUP_INSTANCE_ID` |",
        "|---|---|---|",
    ]
    for case in dynamic:
        d, s = dynamic[case], static[case]
        lines.append(
            f"| {case} | {statistics.median(d):.2f} s, {max(d):.2f} s | "
            f"{statistics.median(s):.2f} s, {max(s):.2f} s |"
        )
    lines += [
        "",
        "A worker killed without leaving its group stays a member until its session times out "
        "(`KAIROS_SESSION_TIMEOUT_S`, 10 s here, Faust's default is 60 s): with dynamic "
        "membership the next start waits for that. A stable `KAIROS_GROUP_INSTANCE_ID` (the pod "
        "name in the StatefulSet) lets the restarted worker take its place at once.",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        replace_section(ROOT / "BENCHMARKS.md", "Start-up (bench/startup.py)", text)


if __name__ == "__main__":
    main()

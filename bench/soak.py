"""Soak: one worker at a steady mixed rate for a while; RSS, latency and open decisions over time.

One command: `python bench/soak.py [--rate 400] [--minutes 3] [--runtime faust]` (needs
KAIROS_KAFKA_BOOTSTRAP, as `make bench-soak` sets it). The cart campaign runs with a 20 s attribution window, every message sent
"now" and no quiet hours, so that windows close (default rewards) during the run at any hour: the pending-decision table must stay bounded. Customers
come and go (new ones arrive at a steady rate, each active for a while), and the state TTL is
short, so the customers table must plateau too. Writes the "Soak (bench/soak.py)" section of
BENCHMARKS.md, or "Soak on the Faust runtime (bench/soak.py)" for that runtime.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import queue
import random
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
from confluent_kafka import Consumer, Producer

from bench._measure_steps import percentile
from bench._proc_stats import CpuMeter, machine_ticks
from bench.report import machine_line, replace_section
from engine.campaign import load_campaign
from streams.demo import demo_settings
from streams.settings import Settings
from streams.topics import consumer_config, ensure_topics, producer_config
from streams.worker_process import WorkerProcess

ROOT = Path(__file__).resolve().parent.parent
WINDOW_S = 20
#: Event ids of explicit cart_abandoned events start with this, so the reader tells a decision on
#: an explicit trigger (its trigger_event_id is that event) from one on the inactivity timer.
EXPLICIT_PREFIX = "abandon-"
_SPAWN = multiprocessing.get_context("spawn")
#: A second with this much of the machine's CPU stolen counts as a likely cause of a stall
#: (on 2 vCPUs, 5% is 100 ms of one vCPU not running in that second).
STEAL_NOTABLE_PCT = 5.0


@dataclass
class Sample:
    """One reading of the worker during the soak."""

    elapsed_s: float
    rss_mib: float
    decisions: int
    p50_ms: float
    p99_ms: float
    #: p99 of decisions on explicit cart_abandoned events, and on the inactivity timer (their
    #: trigger time is the timer's due time), with how many of the latter.
    p99_explicit_ms: float
    p99_timer_ms: float
    timer_decisions: int
    open_decisions: float
    timers: float
    customer_rows: float
    expired: float
    stalls: float = 0.0  # event-loop stalls over 20 ms so far (kairos_event_loop_lag_seconds)
    gc_pauses: float = 0.0  # the worker's garbage-collector pauses over 20 ms so far
    #: CPU time the hypervisor took from this VM (steal): over the window, and in its worst second,
    #: as % of all the machine's CPU time.
    steal_pct: float = 0.0
    steal_max_pct: float = 0.0
    #: The worker process's CPU over the window (all its threads), % of one core.
    cpu_pct: float = 0.0


def rss_mib(pid: int) -> float:
    """Resident memory of a process in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def short_window_campaign(run_dir: Path) -> Path:
    """The shipped cart campaign with a 20 s attribution window that starts at once, so windows
    close in the run at any hour.

    The shipped campaign may schedule a message for the evening, and its quiet hours (21-8 UTC
    for customers without a timezone) allow nothing else at night; the window then counts from
    the evening send, hours away, and a run of an hour would see open decisions (and the
    customers holding them) only grow. Here every message goes "now" and there are no quiet
    hours; the rest of the campaign (channels, offers, caps, holdout, exploration) is shipped.
    """
    shipped = resources.files("engine") / "campaigns" / "cart_abandonment.toml"
    text = shipped.read_text()
    replacements = {
        "attribution_window_s = 7200": f"attribution_window_s = {WINDOW_S}",
        'slot = ["now", "evening"]': 'slot = ["now"]',
        '[[actions.exclude]]\nchannel = "sms"\nslot = "evening"\n': "",
        "evening = 19 ": "# evening = 19 ",
        "quiet_hours = { start = 21, end = 8 }": "# quiet_hours = { start = 21, end = 8 }",
    }
    for old, replacement in replacements.items():
        if old not in text:
            raise RuntimeError(f"the shipped cart campaign changed; soak cannot adapt {old!r}")
        text = text.replace(old, replacement)
    path = run_dir / "cart_soak.toml"
    path.write_text(text)
    campaign = load_campaign(path)  # must parse, and must not delay any message
    assert campaign.reward.attribution_window_s == WINDOW_S
    return path


def scrape(url: str) -> list[str]:
    """The worker's /metrics, once: the metrics of one sample must come from the same reading.

    (Two readings of a counter and of its bucket a moment apart differ by what happened in
    between: a stall count taken as count minus a bucket read later went negative.)
    """
    import urllib.request

    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        body: bytes = response.read()
    return body.decode().splitlines()


class StealMeter:
    """The machine's CPU steal (time the hypervisor ran something else) from /proc/stat.

    A loop turn of the worker can stall because its vCPU was not running at all; the guest sees
    that only as steal time, so the soak records it beside the stalls it may explain.
    """

    def __init__(self) -> None:
        self._last = self._read()
        self._window_start = self._last
        self.worst_second = 0.0

    @staticmethod
    def _read() -> tuple[int, int]:
        """(steal, total) jiffies of all CPUs since boot."""
        _, total, steal = machine_ticks()
        return steal, total

    @staticmethod
    def _pct(start: tuple[int, int], end: tuple[int, int]) -> float:
        total = end[1] - start[1]
        return 100.0 * (end[0] - start[0]) / total if total > 0 else 0.0

    def tick(self) -> None:
        """Call about once a second: keeps the window's worst second."""
        now = self._read()
        if now[1] - self._last[1] > 0:
            self.worst_second = max(self.worst_second, self._pct(self._last, now))
            self._last = now

    def window(self) -> tuple[float, float]:
        """(steal % over the window, steal % in its worst second); starts the next window."""
        self.tick()
        result = self._pct(self._window_start, self._last), self.worst_second
        self._window_start = self._last
        self.worst_second = 0.0
        return result


def over(lines: list[str], histogram: str, le: str = "0.02") -> float:
    """Observations of a histogram (all its label sets) above the bucket `le`, from one scrape."""
    bucket = f'le="{le}"'
    above = 0.0
    for line in lines:
        if line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        if name.startswith(f"{histogram}_count"):
            above += float(value)
        elif name.startswith(f"{histogram}_bucket") and bucket in name:
            above -= float(value)
    return above


def metric(lines: list[str], name: str) -> float:
    """Sum of a metric's samples in a scrape (lines starting with `name`)."""
    return sum(
        float(x.rsplit(" ", 1)[1]) for x in lines if x.startswith(name) and not x.startswith("#")
    )


def produce_mixed(
    config: dict[str, object],
    topic: str,
    rate: float,
    seconds: float,
    customers: int,
    results: Any,
) -> None:
    """Paced mixed stream, about one trigger in five events (a process of its own).

    Customers churn: `customers` are active at any time, and new ones replace the oldest at
    rate/10 per second, so each customer is active for about 10 x customers / rate seconds.
    Puts the number of events sent on `results` at the end.
    """
    producer = Producer({**config, "linger.ms": 0})  # latency counts from the send
    rng = random.Random(11)
    start = time.perf_counter()
    sent = 0
    while time.perf_counter() - start < seconds:
        due = start + sent / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(min(delay, 0.005))
            continue
        newest = customers + int(sent / 10)
        cid = f"soak-{newest - rng.randrange(customers)}"
        kind = rng.choices(
            ["product_view", "cart_add", "purchase", "cart_abandoned"], weights=[50, 25, 5, 20]
        )[0]
        prefix = EXPLICIT_PREFIX if kind == "cart_abandoned" else ""
        event = {
            "event_id": prefix + uuid.uuid4().hex,
            "customer_id": cid,
            "type": kind,
            "ts": datetime.now(UTC).isoformat(),
            "product_id": f"p{rng.randrange(500)}",
            "category": rng.choice(["shoes", "bags", "dresses", "jackets"]),
            "price": round(rng.uniform(10, 200), 2),
            "order_value": round(rng.uniform(10, 200), 2),
        }
        producer.produce(topic, key=cid.encode(), value=orjson.dumps(event))
        producer.poll(0)
        sent += 1
    producer.flush(30)
    results.put(sent)


#: One decision as read: receive time (s), latency from its trigger (ms), explicit trigger?
Reading = tuple[float, float, bool]


def read_decisions(
    config: dict[str, object], topic: str, stop: Any, assigned: Any, out: Any
) -> None:
    """Read the action topic in a process that does nothing else; put batches of Readings on `out`.

    The receive time is taken as soon as poll returns, before any parsing. The parent scrapes the
    worker's metrics every 10 s: a reader sharing its process would be held up meanwhile, and the
    wait would count as latency.
    """
    consumer = Consumer(config)
    consumer.subscribe([topic], on_assign=lambda _consumer, _partitions: assigned.set())
    batch: list[Reading] = []
    next_put = time.monotonic() + 0.5
    try:
        while not stop.is_set():
            first = consumer.poll(0.1)
            if first is not None:
                received = time.time()
                for message in [first, *consumer.consume(num_messages=1000, timeout=0)]:
                    if message.error():
                        continue
                    record = orjson.loads(message.value() or b"{}")
                    trigger_s = datetime.fromisoformat(record["trigger_ts"]).timestamp()
                    explicit = str(record.get("trigger_event_id", "")).startswith(EXPLICIT_PREFIX)
                    batch.append((received, (received - trigger_s) * 1000, explicit))
            if batch and time.monotonic() >= next_put:
                out.put(batch)
                batch = []
                next_put = time.monotonic() + 0.5
    finally:
        out.put(batch)
        consumer.close()


def run(
    rate: float, minutes: float, customers: int, ttl_s: float, runtime: str
) -> tuple[list[Sample], int, float]:
    """Soak one worker; return the samples, events sent and the worker's start RSS."""
    bootstrap = os.environ.get("KAIROS_KAFKA_BOOTSTRAP")
    if not bootstrap:
        sys.exit("KAIROS_KAFKA_BOOTSTRAP is not set: run `make bench-soak`")
    run_dir = Path(tempfile.mkdtemp(prefix="kairos-soak-"))
    campaign = short_window_campaign(run_dir)
    settings = demo_settings(Settings(kafka_bootstrap=bootstrap), run_dir).model_copy(
        update={
            "campaigns": [str(campaign)],
            "cart_abandon_after_s": 30.0,
            "state_ttl_days": ttl_s / 86_400,
            "lapse_after_days": ttl_s / 2 / 86_400,
            "state_sweep_interval_s": 5.0,
            "runtime": runtime,
        }
    )
    ensure_topics(settings)
    worker = WorkerProcess(settings, run_dir / "worker.log").start()
    worker.wait_ready(60)
    assert worker.process is not None
    pid = worker.process.pid
    start_rss = rss_mib(pid)
    stop = _SPAWN.Event()
    assigned = _SPAWN.Event()
    readings: Any = _SPAWN.Queue()
    reader = _SPAWN.Process(
        target=read_decisions,
        args=(
            consumer_config(settings, f"{settings.app_id}-soak"),
            settings.topics.decisions,
            stop,
            assigned,
            readings,
        ),
        daemon=True,
    )
    reader.start()
    if not assigned.wait(60):
        raise RuntimeError("the decision reader got no partitions within 60 s")
    sent_count: Any = _SPAWN.Queue()
    sender = _SPAWN.Process(
        target=produce_mixed,
        args=(
            producer_config(settings),
            settings.topics.events,
            rate,
            minutes * 60,
            customers,
            sent_count,
        ),
        daemon=True,
    )
    started = time.monotonic()
    wall_start = time.time()
    sender.start()
    samples: list[Sample] = []
    window: list[Reading] = []
    later: list[Reading] = []
    decisions = 0
    next_sample = started + 10
    steal = StealMeter()
    next_steal = started + 1
    cpu = CpuMeter({"worker": pid})  # the worker process, all threads, per window
    cpu.start()
    try:
        while sender.is_alive() or time.monotonic() < next_sample:
            with contextlib.suppress(queue.Empty):
                later.extend(readings.get(timeout=0.2))
            if time.monotonic() >= next_steal:
                steal.tick()
                next_steal += 1
            if time.monotonic() < next_sample:
                continue
            # Readings belong to the window they were received in (the reader sends every 0.5 s).
            boundary = wall_start + (next_sample - started)
            window.extend(r for r in later if r[0] < boundary)
            later = [r for r in later if r[0] >= boundary]
            latencies = [r[1] for r in window]
            timer = [r[1] for r in window if not r[2]]
            decisions += len(window)
            lines = scrape(worker.url)
            steal_pct, steal_max_pct = steal.window()
            cpu_pct = cpu.stop().get("worker", 0.0)
            cpu.start()
            samples.append(
                Sample(
                    elapsed_s=time.monotonic() - started,
                    rss_mib=rss_mib(pid),
                    decisions=decisions,
                    p50_ms=percentile(sorted(latencies), 50),
                    p99_ms=percentile(sorted(latencies), 99),
                    p99_explicit_ms=percentile(sorted(r[1] for r in window if r[2]), 99),
                    p99_timer_ms=percentile(sorted(timer), 99),
                    timer_decisions=len(timer),
                    open_decisions=metric(lines, "kairos_decisions_total")
                    - metric(lines, "kairos_rewards_total"),
                    timers=metric(lines, "kairos_pending_timers"),
                    customer_rows=metric(lines, 'kairos_table_rows{table="customers"}'),
                    expired=metric(lines, "kairos_expired_customers_total"),
                    stalls=over(lines, "kairos_event_loop_lag_seconds"),
                    gc_pauses=over(lines, "kairos_gc_pause_seconds"),
                    steal_pct=steal_pct,
                    steal_max_pct=steal_max_pct,
                    cpu_pct=cpu_pct,
                )
            )
            print(samples[-1], flush=True)
            window = []
            next_sample += 10
            if not sender.is_alive():
                break
    finally:
        if sender.is_alive():  # interrupted (Ctrl-C, an error): stop sending at once
            sender.terminate()
        sender.join(30)
        stop.set()
        try:  # the reader's last batch: a process exits only once its queue is flushed
            while True:
                readings.get(timeout=5)
        except queue.Empty:
            pass
        reader.join(30)
        worker.stop()
    try:
        sent = int(sent_count.get(timeout=5))
    except queue.Empty:
        sent = 0
    return samples, sent, start_rss


def _span(values: list[float], fmt: str = "{:,.0f}") -> str:
    """'low-high' of values (or the one value)."""
    low, high = min(values), max(values)
    return fmt.format(low) if low == high else f"{fmt.format(low)}-{fmt.format(high)}"


def _ms(value: float) -> str:
    """A latency figure: one decimal, or "-" where there were no such decisions (nan)."""
    return "-" if value != value else f"{value:.1f}"


def _finite(values: list[float]) -> list[float]:
    """The values that are numbers (a window without decisions of a kind is nan)."""
    return sorted(v for v in values if v == v)


def stall_causes(samples: list[Sample], steal_pct: float = STEAL_NOTABLE_PCT) -> str:
    """Which windows with worker loop stalls also had a GC pause or a second of notable steal."""
    stalled = gc = stolen = neither = 0
    stalls_before = gc_before = 0.0  # the counters are totals since the start
    for s in samples:
        new_stalls, new_gc = s.stalls > stalls_before, s.gc_pauses > gc_before
        stalls_before, gc_before = s.stalls, s.gc_pauses
        if not new_stalls:
            continue
        stalled += 1
        had_steal = s.steal_max_pct >= steal_pct
        gc += new_gc
        stolen += had_steal
        neither += not (new_gc or had_steal)
    return (
        f"- **Stalls.** Worker loop stalls over 20 ms: {samples[-1].stalls:,.0f} in the run, in "
        f"{stalled} of {len(samples)} windows; of those windows {gc} had a worker GC pause over "
        f"20 ms, {stolen} a second with {steal_pct:g}% or more of the CPU stolen, {neither} "
        f"neither. GC pauses over 20 ms in the run: {samples[-1].gc_pauses:,.0f}; steal over "
        f"the run {sum(s.steal_pct for s in samples) / len(samples):.1f}% on average."
    )


def summary(samples: list[Sample], start_rss: float) -> list[str]:
    """How to read the run, computed from its samples: bounds, memory, latency by trigger kind."""
    if len(samples) < 2:
        return ["Too short to summarise: under two 10 s windows."]
    settled = [s for s in samples if s.elapsed_s > 60] or samples
    later = samples[1:]  # the first window includes start-up
    rss = [s.rss_mib for s in samples]
    explicit = _finite([s.p99_explicit_ms for s in later]) or [float("nan")]
    timer = _finite([s.p99_timer_ms for s in later]) or [float("nan")]
    p50 = _finite([s.p50_ms for s in later]) or [float("nan")]
    over = sum(1 for s in later if s.p99_ms > 50)
    return [
        "**How to read this run** (computed from the table):",
        f"- **Bounded tables.** After the first minute: open decisions "
        f"{_span([s.open_decisions for s in settled])}, customer rows "
        f"{_span([s.customer_rows for s in settled])}, customers with timers "
        f"{_span([s.timers for s in settled])}; {samples[-1].expired:,.0f} idle customers "
        "removed by retention.",
        f"- **Memory.** RSS {start_rss:.0f} MiB at start, {max(rss):.0f} MiB at most, "
        f"{rss[-1]:.0f} MiB at the end.",
        f"- **CPU.** The worker used {statistics.median_high([s.cpu_pct for s in later]):.0f}% of one core in the "
        f"median window (max {max(s.cpu_pct for s in later):.0f}%).",
        f"- **Latency** (windows after the first, which includes start-up): p50 "
        f"{_span(p50, '{:.1f}')} ms; p99 of decisions on explicit events median "
        f"{_ms(statistics.median_high(explicit))} ms (max {_ms(explicit[-1])}), on the inactivity "
        f"timer median {_ms(statistics.median_high(timer))} ms (max {_ms(timer[-1])}); {over} of "
        f"{len(later)} windows had a p99 over 50 ms.",
        stall_causes(samples),
        "- **Measured since 2026-12-07:** the decision reader and the event sender are processes "
        "of their own (before, the reader shared the process and thread that scraped the "
        "worker's metrics every 10 s, and its pauses counted as latency), and timers fall due "
        "at their exact time (before, in whole seconds: every cart left in the same second was "
        "decided in one burst at the second's start).",
    ]


def section_title(runtime: str) -> str:
    """BENCHMARKS.md section of a soak: one per runtime, so a run on one keeps the other's."""
    return (
        "Soak (bench/soak.py)"
        if runtime == "rdkafka"
        else f"Soak on the {runtime.capitalize()} runtime (bench/soak.py)"
    )


def main() -> None:
    """Run the soak and write its section of BENCHMARKS.md."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=400.0, help="mixed events per second")
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--customers", type=int, default=4_000, help="customers active at any time")
    parser.add_argument("--ttl-s", type=float, default=60.0, help="state TTL (retention)")
    parser.add_argument(
        "--runtime",
        choices=("rdkafka", "faust"),
        default=Settings().runtime,
        help="the worker's runtime (default: KAIROS_RUNTIME's, rdkafka); each has its section",
    )
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    samples, sent, start_rss = run(
        args.rate, args.minutes, args.customers, args.ttl_s, args.runtime
    )
    churn_s = 10 * args.customers / args.rate
    target, flag = (
        ("bench-soak", "")
        if args.runtime == "rdkafka"
        else ("bench-soak-faust", " --runtime faust")
    )
    lines = [
        machine_line(),
        "",
        f"Command: `make {target}` (`python bench/soak.py --rate {args.rate:.0f} --minutes "
        f"{args.minutes:g}{flag}`): {sent:,} mixed events (about one explicit trigger in five) for "
        f"{args.customers:,} customers active at a time, new ones replacing the oldest so that "
        f"each is active for about {churn_s:.0f} s; state TTL {args.ttl_s:g} s (idle customers "
        f"with nothing open are removed); cart campaign with a {WINDOW_S} s attribution window, "
        "every message sent now and no quiet hours, so windows close during the run (the shipped "
        "campaign may send in the evening, and the window counts from the send). Latency: decision read time minus trigger time, per 10 s "
        "window, by the time the decision was read (the reader is a process of its own); "
        "for the decisions on the inactivity timer (a cart left 30 s) the trigger time is the "
        "timer's due time, so their latency is how late the timer fired plus the decision's way "
        "out. Open decisions: decisions sent minus rewards joined (the pending table). "
        "Customer rows: the customers table (`kairos_table_rows`); expired: customers removed "
        "by retention so far. Loop stalls: since the start, turns of the worker's loop that kept "
        "arriving records waiting over 20 ms (`kairos_event_loop_lag_seconds`; on the Faust "
        "runtime, wakes of its event loop over 20 ms late). GC pauses: since the start, the "
        "worker's garbage-collector pauses over 20 ms (`kairos_gc_pause_seconds`). CPU worker: "
        "the worker process, all threads, over the window, % of one core. Steal: CPU "
        "time the hypervisor gave to something else while this VM wanted it (`/proc/stat`), % "
        "of the machine's CPU time over the window / in its worst second. `-`: no such "
        "decision in the window.",
        "",
        f"Worker runtime: {args.runtime} (`--runtime`). Worker RSS at start: {start_rss:.0f} MiB.",
        "",
        "| t (s) | RSS MiB | CPU worker % | decisions | p50 ms | p99 ms | p99 explicit ms | p99 timer ms "
        "| timer decisions | open decisions | customers with timers | customer rows | expired "
        "| loop stalls | GC pauses | steal % |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in samples:
        lines.append(
            f"| {s.elapsed_s:.0f} | {s.rss_mib:.0f} | {s.cpu_pct:.0f} | {s.decisions:,} | {s.p50_ms:.1f} | "
            f"{s.p99_ms:.1f} | {_ms(s.p99_explicit_ms)} | {_ms(s.p99_timer_ms)} | "
            f"{s.timer_decisions:,} | {s.open_decisions:.0f} | {s.timers:.0f} | "
            f"{s.customer_rows:,.0f} | {s.expired:,.0f} | {s.stalls:,.0f} | {s.gc_pauses:,.0f} | "
            f"{s.steal_pct:.1f} / {s.steal_max_pct:.0f} |"
        )
    lines += ["", *summary(samples, start_rss)]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        replace_section(ROOT / "BENCHMARKS.md", section_title(args.runtime), text)


if __name__ == "__main__":
    main()

"""One rate step: run the paced load in a child process, read the output topic, and summarise latency.

The measuring consumer runs in this (the parent) process; the load generator in a spawned child,
so pacing does not depend on how busy the reader is. Latency is the reader's ``time.time_ns()``
when a record arrives minus the send time the load generator embedded in the triggering event.

Nothing else may hold up the reader while a step runs, or its pauses count as the system's
latency: the consumer-lag probe samples on a thread of its own (its broker round trips took 3-9
ms once a second), the cyclic garbage collector is off during the step (a full collection of
this process's heap took 38 ms), and the load process is joined only after the drain.
"""

from __future__ import annotations

import gc
import multiprocessing
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from bench._broker_gc import Cycle, Pause, Span, overlaps_any, read_gc, spans_between
from bench._paced_load import LoadReport, LoadSpec, load_process_main, make_event, sent_ns_of
from bench._proc_stats import CpuMeter
from streams.settings import Settings
from streams.topics import consumer_config, producer_config

_SPAWN = multiprocessing.get_context("spawn")


@dataclass
class Arrival:
    """An output record as read: when its trigger was sent, when it arrived, why it was decided."""

    sent_ns: int
    recv_ns: int
    reason: str = ""
    #: When the worker decided (its decided_ts), for decisions; None for the floors' copies.
    decided_ns: int | None = None


class OutputReader:
    """Reads an output topic and pairs each record with the send time of its trigger."""

    def __init__(self, settings: Settings, topic: str, id_field: str) -> None:
        self.id_field = id_field
        self.consumer = Consumer(
            consumer_config(
                settings, f"bench-reader-{uuid.uuid4().hex[:8]}", **{"fetch.wait.max.ms": 5}
            )
        )
        self.consumer.subscribe([topic])
        self.foreign = 0

    def read(self, timeout_s: float) -> list[Arrival]:
        """Whatever arrives within timeout_s (returns as soon as a batch is there)."""
        # poll() returns as soon as one record is there; consume(timeout=0) then takes what else is
        # buffered without waiting (consume with a timeout waits for the whole batch or the timeout).
        first = self.consumer.poll(timeout_s)
        if first is None:
            return []
        recv_ns = time.time_ns()
        messages = [first, *self.consumer.consume(num_messages=1000, timeout=0)]
        out: list[Arrival] = []
        for message in messages:
            if message.error():
                continue
            record: dict[str, Any] = orjson.loads(message.value() or b"{}")
            sent = sent_ns_of(str(record.get(self.id_field, "")))
            if sent is None:
                self.foreign += 1
                continue
            decided = record.get("decided_ts")
            decided_ns = (
                int(datetime.fromisoformat(decided).timestamp() * 1e9)
                if isinstance(decided, str)
                else None
            )
            out.append(Arrival(sent, recv_ns, str(record.get("reason", "")), decided_ns))
        return out

    def close(self) -> None:
        """Leave the group."""
        self.consumer.close()


class LagProbe:
    """Consumer lag of a group on a topic: high watermark minus committed offset, summed."""

    def __init__(self, settings: Settings, group: str, topic: str, partitions: int) -> None:
        self.consumer = Consumer(
            {**settings.confluent_config(), "group.id": group, "enable.auto.commit": False}
        )
        self.partitions = [TopicPartition(topic, p) for p in range(partitions)]

    def lag(self) -> int | None:
        """Records not yet committed by the group, or None when the broker did not answer."""
        try:
            committed = self.consumer.committed(self.partitions, timeout=2.0)
            total = 0
            for tp in committed:
                low, high = self.consumer.get_watermark_offsets(
                    TopicPartition(tp.topic, tp.partition), timeout=2.0, cached=False
                )
                total += high - (tp.offset if tp.offset >= 0 else low)
            return total
        except Exception:
            return None

    def close(self) -> None:
        """Release the client."""
        self.consumer.close()


class LagSource(Protocol):
    """Anything that reports a consumer lag (LagProbe)."""

    def lag(self) -> int | None:
        """Records not yet committed, or None when unknown."""
        ...


class LagSampler:
    """Samples a LagProbe once a second on a thread of its own, so that the reader never waits.

    The probe's calls are broker round trips (3-9 ms measured); confluent-kafka releases the GIL
    while it waits, so the reader goes on reading meanwhile. stop() takes a last sample at once.
    """

    def __init__(self, probe: LagSource, interval_s: float = 1.0) -> None:
        self.probe = probe
        self.interval_s = interval_s
        self.samples: list[int] = []
        self.last: int | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lag-sampler", daemon=True)

    def start(self) -> LagSampler:
        """Begin sampling."""
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stopping.wait(self.interval_s):
            value = self.probe.lag()
            if value is not None:
                self.samples.append(value)
        self.last = self.probe.lag()

    def stop(self) -> None:
        """Ask for the last sample; the thread takes it without waiting out the interval."""
        self._stopping.set()

    def join(self, timeout_s: float = 10.0) -> int | None:
        """Wait for the thread; return the lag sampled at stop() (None: no answer)."""
        self._thread.join(timeout_s)
        return self.last


@contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection inside the block (reference counting still frees memory).

    A collection stops the reader while records wait in its consumer, and that wait would be
    measured as the system's latency; it grows with this process's heap, i.e. with every step
    run before (a full collection took 38 ms by the time the Kairos worker was measured).
    """
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100.0 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


@dataclass
class StepResult:
    """The measured part of one rate step."""

    system: str
    mix: str
    rate: float
    load: LoadReport
    count: int = 0
    p50_ms: float = float("nan")
    p95_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    last_s_p50_ms: float = float("nan")
    cpu: dict[str, float] = field(default_factory=dict)
    max_lag: int | None = None
    end_lag: int | None = None
    reasons: Counter[str] = field(default_factory=Counter)
    #: p99 of trigger sent -> decided by the worker (decisions only; the rest is the way out).
    p99_decided_ms: float = float("nan")
    #: Broker GC pauses overlapping the measured window (None: no GC log, an external broker).
    gc_pauses: list[Pause] | None = None
    #: Broker concurrent GC cycles overlapping the measured window (None: no GC log).
    gc_cycles: list[Cycle] | None = None
    #: p99 of the triggers whose path (sent to received) overlapped no broker GC pause or cycle.
    p99_clear_ms: float = float("nan")
    #: The latencies of those triggers, sorted (ms): pooled like latencies_ms.
    clear_latencies_ms: list[float] = field(default_factory=list, repr=False)
    #: The load generator's producer linger in this step (run_step).
    linger_ms: int = 0
    #: Every measured latency, sorted (ms): steps can be pooled (bench/latency.py, paired).
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    #: The round of a side-by-side comparison this step belongs to (0: none).
    round: int = 0

    @property
    def gc_pause_ms(self) -> float:
        """Total broker GC pause inside the measured window, in ms."""
        return sum(p.duration_ns for p in self.gc_pauses or []) / 1e6

    @property
    def gc_cycle_ms(self) -> float:
        """Total span of the broker's concurrent GC cycles inside the measured window, in ms."""
        return sum(c.duration_ns for c in self.gc_cycles or []) / 1e6

    @property
    def outputs_per_trigger(self) -> float:
        """Output records per trigger sent in the measured window (1.0 when none is lost)."""
        return self.count / self.load.measured_triggers if self.load.measured_triggers else 0.0

    def keeps_up(self, max_p99_ms: float = 500.0) -> bool:
        """Kept up: the generator held the rate, nothing was lost, and latency stayed bounded."""
        return (
            not self.load.error
            and self.load.achieved_rate >= 0.95 * self.rate
            and self.outputs_per_trigger >= 0.99
            and self.p99_ms < max_p99_ms
        )


@dataclass
class StepContext:
    """What every step of one system shares."""

    settings: Settings
    system: str
    input_topic: str
    reader: OutputReader
    #: The processes whose CPU each column reads (a system may be several processes).
    cpu_pids: dict[str, int | tuple[int, ...]]
    lag: LagProbe | None = None
    customers: int = 100_000
    seed: int = 0
    refresh_pids: Callable[[], dict[str, int]] | None = None
    #: The local broker's GC log (bench._broker_gc), when the broker is ours.
    gc_log: Path | None = None


def run_step(
    ctx: StepContext,
    rate: float,
    mix: str,
    warmup_s: float,
    measure_s: float,
    linger_ms: int = 0,
) -> StepResult:
    """Offer `rate` events/s for warmup_s + measure_s and measure the records sent after warm-up.

    `linger_ms` is the generator's producer linger: 0 sends each event in a request of its own;
    more lets it batch, as an event source at thousands of events/s would. Latency still counts
    from the send call, so a record's wait in the generator's batch is part of it.
    """
    ctx.seed += 1
    spec = LoadSpec(
        producer_config=producer_config(ctx.settings, **{"linger.ms": linger_ms}),
        topic=ctx.input_topic,
        rate=rate,
        duration_s=warmup_s + measure_s,
        mix=mix,
        customers=ctx.customers,
        seed=ctx.seed,
        warmup_s=warmup_s,
    )
    results: Any = _SPAWN.Queue()
    process = _SPAWN.Process(target=load_process_main, args=(spec, results), daemon=True)
    with collector_paused():
        process.start()
        if ctx.refresh_pids is not None:
            ctx.cpu_pids.update(ctx.refresh_pids())
        meter = CpuMeter({**ctx.cpu_pids, "loadgen": process.pid or 0})
        meter.start()
        sampler = LagSampler(ctx.lag).start() if ctx.lag is not None else None
        arrivals: list[Arrival] = []
        report: LoadReport | None = None
        deadline = time.monotonic() + warmup_s + measure_s + 60.0
        while report is None and time.monotonic() < deadline:
            arrivals.extend(ctx.reader.read(0.02))
            try:
                report = results.get_nowait()
            except queue.Empty:
                continue
        cpu = meter.stop()
        if sampler is not None:
            sampler.stop()
        if report is None:
            report = LoadReport(error="load generator did not report")
        # Drain: keep reading until the outputs of every measured trigger are in, or 8 s pass
        # quietly. The load process is joined after: its exit must not hold up the last reads.
        drain_until = time.monotonic() + 8.0
        quiet_since = time.monotonic()
        while time.monotonic() < drain_until:
            batch = ctx.reader.read(0.05)
            if batch:
                arrivals.extend(batch)
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > 1.5:
                break
    process.join(10)
    end_lag = sampler.join() if sampler is not None else None
    lags = sampler.samples if sampler is not None else []
    measure_from = report.started_ns + int(warmup_s * 1e9)
    broker_gc = read_gc(ctx.gc_log) if ctx.gc_log is not None else None
    result = summarise(ctx.system, mix, rate, report, arrivals, measure_from, cpu, lags, end_lag)
    result.linger_ms = linger_ms
    return attribute_broker_gc(result, arrivals, measure_from, report.finished_ns, broker_gc)


def attribute_broker_gc(
    result: StepResult,
    arrivals: list[Arrival],
    measure_from: int,
    finished_ns: int,
    broker_gc: tuple[list[Pause], list[Cycle]] | None,
) -> StepResult:
    """Add the broker's GC pauses and cycles in the window and the p99 of the triggers clear of them."""
    window = [a for a in arrivals if measure_from <= a.sent_ns <= finished_ns]
    decided = sorted((a.decided_ns - a.sent_ns) / 1e6 for a in window if a.decided_ns is not None)
    result.p99_decided_ms = percentile(decided, 99)
    if broker_gc is None or not window:
        return result
    last_recv = max(a.recv_ns for a in window)
    pauses = spans_between(broker_gc[0], measure_from, last_recv)
    cycles = spans_between(broker_gc[1], measure_from, last_recv)
    result.gc_pauses, result.gc_cycles = pauses, cycles
    spans: list[Span] = [*pauses, *cycles]
    result.clear_latencies_ms = sorted(
        (a.recv_ns - a.sent_ns) / 1e6
        for a in window
        if not overlaps_any(a.sent_ns, a.recv_ns, spans)
    )
    result.p99_clear_ms = percentile(result.clear_latencies_ms, 99)
    return result


def summarise(
    system: str,
    mix: str,
    rate: float,
    report: LoadReport,
    arrivals: list[Arrival],
    measure_from: int,
    cpu: dict[str, float],
    lags: list[int],
    end_lag: int | None,
) -> StepResult:
    """Latency percentiles of the arrivals whose trigger was sent inside the measured window."""
    window = [a for a in arrivals if measure_from <= a.sent_ns <= report.finished_ns]
    lat = sorted((a.recv_ns - a.sent_ns) / 1e6 for a in window)
    last = sorted(
        (a.recv_ns - a.sent_ns) / 1e6
        for a in window
        if a.sent_ns >= report.finished_ns - 1_000_000_000
    )
    return StepResult(
        system=system,
        mix=mix,
        rate=rate,
        load=report,
        count=len(window),
        p50_ms=percentile(lat, 50),
        p95_ms=percentile(lat, 95),
        p99_ms=percentile(lat, 99),
        max_ms=lat[-1] if lat else float("nan"),
        last_s_p50_ms=percentile(last, 50),
        cpu=cpu,
        max_lag=max(lags) if lags else None,
        end_lag=end_lag,
        reasons=Counter(a.reason for a in window if a.reason),
        latencies_ms=lat,
    )


def wait_flowing(
    settings: Settings, reader: OutputReader, topic: str, timeout_s: float = 120.0
) -> float:
    """Send a probe trigger every 0.5 s until an output arrives; return the seconds it took."""
    producer = Producer(producer_config(settings))
    started = time.monotonic()
    seq = 0
    next_probe = started
    try:
        while time.monotonic() - started < timeout_s:
            if time.monotonic() >= next_probe:
                seq += 1
                customer = f"probe{seq:04d}"
                value = make_event("cart_abandoned", customer, time.time_ns(), seq, _NO_RNG)
                producer.produce(topic, key=customer.encode(), value=value)
                producer.flush(5)
                next_probe += 0.5
            if reader.read(0.1):
                return time.monotonic() - started
    finally:
        producer.flush(5)
    raise TimeoutError(f"nothing came out of {topic} within {timeout_s} s")


class _NoRandom:
    """make_event needs a random source only for product fields, which probes do not have."""

    def randrange(self, n: int) -> int:
        """Always 0."""
        return 0

    def uniform(self, a: float, b: float) -> float:
        """Always a."""
        return a

    def random(self) -> float:
        """Always 0."""
        return 0.0


_NO_RNG: Any = _NoRandom()

"""Backlog drain: how fast one system works through a pre-filled topic of mixed events.

The fixed-rate steps say how latency grows with load; this says where the ceiling is, with less
noise: the input topic is filled first, then the system starts and runs flat out. The rate comes
from the output records' own timestamps (first to last, set by the system's producer), the CPU
from the system's process between the first and the last output record seen.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from confluent_kafka import Consumer, Producer

from bench._measure_steps import LagProbe
from bench._paced_load import MIXED, make_event
from bench._proc_stats import process_cpu_s
from streams.settings import Settings
from streams.topics import consumer_config, producer_config


@dataclass
class BacklogResult:
    """One system's drain of the same backlog."""

    system: str
    events: int
    outputs: int = 0
    seconds: float = 0.0
    cpu_s: float = 0.0
    broker_cpu_s: float = 0.0
    error: str = ""

    @property
    def rate(self) -> float:
        """Input events per second between the first and the last output record."""
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us_per_event(self) -> float:
        """The system's CPU (all its threads) per input event, in microseconds."""
        return 1e6 * self.cpu_s / self.events if self.events else 0.0


def fill(settings: Settings, topic: str, events: int, customers: int, seed: int) -> None:
    """Write the backlog: the latency benchmark's mixed stream, keyed by customer, as fast as it goes."""
    rng = random.Random(seed)
    kinds = [k for k, _ in MIXED]
    weights = [w for _, w in MIXED]
    producer = Producer(producer_config(settings, **{"linger.ms": 20}))
    for i in range(events):
        kind = rng.choices(kinds, weights)[0]
        customer = f"b{rng.randrange(customers):07d}"
        value = make_event(kind, customer, time.time_ns(), i, rng)
        while True:
            try:
                producer.produce(topic, key=customer.encode(), value=value)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(60)
    if left:
        raise RuntimeError(f"{left} backlog records not acknowledged")


def drain(
    settings: Settings,
    result: BacklogResult,
    output_topic: str,
    pid: int,
    broker_pid: int,
    lag: LagProbe,
    timeout_s: float = 300.0,
) -> BacklogResult:
    """Watch the output topic until the input is all committed and no output came for 2 s."""
    consumer = Consumer(consumer_config(settings, f"bench-backlog-{time.time_ns()}"))
    consumer.subscribe([output_topic])
    first_ms = last_ms = 0
    cpu_first = cpu_last = broker_first = broker_last = 0.0
    quiet_since = time.monotonic()
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            messages = consumer.consume(num_messages=1000, timeout=0.2)
            seen = [m for m in messages if not m.error()]
            now = time.monotonic()
            if seen:
                quiet_since = now
                cpu = process_cpu_s(pid) or 0.0
                broker = process_cpu_s(broker_pid) if broker_pid else 0.0
                if not result.outputs:
                    first_ms = min(m.timestamp()[1] for m in seen)
                    cpu_first, broker_first = cpu, broker or 0.0
                result.outputs += len(seen)
                last_ms = max(last_ms, *(m.timestamp()[1] for m in seen))
                cpu_last, broker_last = cpu, broker or 0.0
            elif result.outputs and now - quiet_since > 2.0 and lag.lag() == 0:
                break
        else:
            result.error = f"not drained in {timeout_s:.0f} s"
    finally:
        consumer.close()
    result.seconds = (last_ms - first_ms) / 1000.0
    result.cpu_s = cpu_last - cpu_first
    result.broker_cpu_s = broker_last - broker_first
    return result

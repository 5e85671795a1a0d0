"""The load generator: customer events produced at a fixed rate on a deadline schedule, in its own process.

Every event carries its send time twice: in ``event_id`` (``t<time_ns>-<seq>``, which a decision
echoes as ``trigger_event_id``) and in ``ts`` (microseconds). The measuring consumer subtracts the
send time from the time it reads the output record, on the same clock (``time.time_ns``).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from confluent_kafka import Producer

# Mixed stream: (event type, weight). cart_abandoned (explicit trigger of cart_abandonment) and
# purchase (trigger of cross_sell) are the triggers: 20% of events together.
MIXED = (("product_view", 50), ("cart_add", 30), ("cart_abandoned", 15), ("purchase", 5))
TRIGGER_TYPES = frozenset({"cart_abandoned", "purchase"})
CATEGORIES = ("shoes", "dresses", "bags", "jackets", "accessories")


@dataclass
class LoadSpec:
    """What to send: where, how fast, for how long, which kind of events."""

    producer_config: dict[str, Any]
    topic: str
    rate: float
    duration_s: float
    mix: str  # "triggers" (only cart_abandoned) or "mixed"
    customers: int
    seed: int
    warmup_s: float = 0.0
    prefix: str = "c"


@dataclass
class LoadReport:
    """What was sent: counts, timing, how late the generator fell behind its schedule, its CPU."""

    sent: int = 0
    triggers: int = 0
    measured_triggers: int = 0
    started_ns: int = 0
    finished_ns: int = 0
    max_behind_ms: float = 0.0
    cpu_s: float = 0.0
    by_type: dict[str, int] = field(default_factory=dict)
    error: str = ""

    @property
    def achieved_rate(self) -> float:
        """Events per second actually sent."""
        span = (self.finished_ns - self.started_ns) / 1e9
        return self.sent / span if span > 0 else 0.0


def make_event(kind: str, customer: str, sent_ns: int, seq: int, rng: random.Random) -> bytes:
    """One event as JSON with the send time embedded in its id and ts."""
    event: dict[str, Any] = {
        "event_id": f"t{sent_ns}-{seq}",
        "customer_id": customer,
        "type": kind,
        "ts": datetime.fromtimestamp(sent_ns / 1e9, UTC).isoformat(timespec="microseconds"),
    }
    if kind in ("product_view", "cart_add"):
        event["product_id"] = f"sku-{rng.randrange(5000):04d}"
        event["category"] = CATEGORIES[rng.randrange(len(CATEGORIES))]
        event["price"] = round(rng.uniform(10, 250), 2)
        if kind == "product_view":
            event["channel"] = "web" if rng.random() < 0.6 else "app"
    elif kind == "purchase":
        event["order_value"] = round(rng.uniform(20, 400), 2)
    return orjson.dumps(event)


def sent_ns_of(event_id: str) -> int | None:
    """The send time embedded by make_event in an event id, or None for a foreign id."""
    if not event_id.startswith("t"):
        return None
    head = event_id[1:].split("-", 1)[0]
    return int(head) if head.isdigit() else None


def run_load(spec: LoadSpec) -> LoadReport:
    """Send spec.rate events per second for spec.duration_s on a deadline schedule; wait for acks."""
    rng = random.Random(spec.seed)
    kinds = [k for k, _ in MIXED]
    weights = [w for _, w in MIXED]
    producer = Producer(spec.producer_config)
    report = LoadReport()
    cpu0 = time.process_time()
    total = int(spec.rate * spec.duration_s)
    interval = 1.0 / spec.rate
    t0 = time.perf_counter()
    report.started_ns = time.time_ns()
    measure_from = report.started_ns + int(spec.warmup_s * 1e9)
    i = 0
    while i < total:
        now = time.perf_counter()
        due = t0 + i * interval
        if due > now:
            # Sleep to the next deadline (short sleeps overshoot; the schedule absorbs it).
            time.sleep(due - now)
            continue
        report.max_behind_ms = max(report.max_behind_ms, (now - due) * 1000.0)
        # Send everything that is due now, then serve delivery callbacks.
        while i < total and t0 + i * interval <= now:
            kind = "cart_abandoned" if spec.mix == "triggers" else rng.choices(kinds, weights)[0]
            customer = f"{spec.prefix}{rng.randrange(spec.customers):07d}"
            sent_ns = time.time_ns()
            value = make_event(kind, customer, sent_ns, i, rng)
            try:
                producer.produce(spec.topic, key=customer.encode(), value=value)
            except BufferError:
                producer.poll(0.01)
                continue
            report.by_type[kind] = report.by_type.get(kind, 0) + 1
            if kind in TRIGGER_TYPES:
                report.triggers += 1
                if sent_ns >= measure_from:
                    report.measured_triggers += 1
            i += 1
        producer.poll(0)
    report.finished_ns = time.time_ns()
    report.sent = i
    left = producer.flush(30)
    if left:
        report.error = f"{left} records unacknowledged after 30 s"
    report.cpu_s = time.process_time() - cpu0
    return report


def load_process_main(spec: LoadSpec, results: Any) -> None:
    """Entry point of the load process: run and put the report on the results queue."""
    try:
        results.put(run_load(spec))
    except Exception as exc:  # the parent reports it
        results.put(LoadReport(error=repr(exc)))

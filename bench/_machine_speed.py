"""The machine's speed at this hour: the worker's record processing timed in process, no broker.

These 2-core VMs run the same code at different speeds from hour to hour and host to host (the
bakeoff rerun on 2026-12-07 found every contestant 1.4-4x slower than on 2026-11-24, uniform
random included), and what a record costs right after the CPU was idle moves more than what it
costs back to back (2026-12-06: a trigger ~190 µs back to back, ~500 µs after 1 ms idle). A
latency run reports both beside its figures, so that runs can be told apart by the machine
instead of guessed at.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from bench._paced_load import MIXED, make_event
from engine.clock import ManualClock
from streams.campaign_files import resolve_campaigns
from streams.processor import MemoryRows, Processor
from streams.settings import Settings

#: A fixed start for the simulated clock (the events' own times follow it).
START = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class InProcessCost:
    """CPU per record of the worker's processing, in process (tables as dicts), median of repeats."""

    #: A trigger processed right after the previous one (warm caches).
    trigger_us: float
    #: A trigger processed after 1 ms idle (the latency bench's 1,000 triggers/s): the vCPU may
    #: have halted and the caches gone cold, as for the live worker.
    trigger_after_idle_us: float
    mixed_us: float
    #: Share of the timed triggers the policy decided (reason "policy": the bandit scored the
    #: actions), the path the bench measures; caps and holdouts are cheaper ways out.
    policy_share: float


def _cpu_per_record(
    processor: Processor,
    rows: MemoryRows,
    clock: ManualClock,
    kinds: list[str],
    customers: int,
    rng: random.Random,
    idle_s: float = 0.0,
) -> tuple[float, int]:
    """Process one record of each kind in turn, 1 ms of simulated time apart (and `idle_s` of real
    idle time before each): µs of CPU each, and how many decisions the policy made."""
    records = []
    for seq, kind in enumerate(kinds):
        customer = f"c{rng.randrange(customers)}"
        sent_ns = int(clock.advance(0.001).timestamp() * 1e9)
        records.append(make_event(kind, customer, sent_ns, seq, rng))
    results = []
    cpu_s = 0.0
    started = time.process_time()
    for offset, raw in enumerate(records):
        if idle_s > 0:  # the idle gap is the condition measured; its own CPU is not counted
            cpu_s += time.process_time() - started
            time.sleep(idle_s)
            started = time.process_time()
        result = processor.on_event(raw, rows, ("events", 0, offset))
        rows.save(result)
        results.append(result)
    cpu_s += time.process_time() - started
    cpu_us = cpu_s / len(records) * 1e6
    decisions = processor.settings.topics.decisions
    by_policy = sum(
        orjson.loads(o.value).get("reason") == "policy"
        for r in results
        for o in r.outputs
        if o.topic == decisions
    )
    return cpu_us, by_policy


def measure_in_process(
    settings: Settings, customers: int = 100_000, records: int = 2_000, repeats: int = 3
) -> InProcessCost:
    """Time the worker's processing of explicit triggers and of the mixed stream, in process.

    The processor is the worker's (its campaigns and settings), its tables dictionaries and its
    clock simulated; customers are drawn uniformly from as many as the latency bench's, so most
    triggers are a customer's first, as there (repeats would meet the frequency caps, a cheaper
    path). CPU time, not wall time, so a busy neighbour process does not count: what remains is
    the speed of this vCPU now, warm (the live worker's cold-cache cost is higher).
    """
    clock = ManualClock(START)
    processor = Processor(settings, resolve_campaigns(settings.campaigns), clock)
    rows = MemoryRows()
    rng = random.Random(7)
    kinds = [kind for kind, _ in MIXED]
    mixed = rng.choices(kinds, weights=[weight for _, weight in MIXED], k=records)
    triggers = ["cart_abandoned"] * records
    _cpu_per_record(processor, rows, clock, mixed[: records // 2], customers, rng)  # warm-up
    trigger_us, idle_us, mixed_us, decided = [], [], [], 0
    few = triggers[: max(1, records // 5)]  # 1 ms idle each: a fifth as many keeps it short
    for _ in range(repeats):
        cpu_us, decisions = _cpu_per_record(processor, rows, clock, triggers, customers, rng)
        trigger_us.append(cpu_us)
        decided += decisions
        idle_us.append(_cpu_per_record(processor, rows, clock, few, customers, rng, 0.001)[0])
        mixed_us.append(_cpu_per_record(processor, rows, clock, mixed, customers, rng)[0])
    return InProcessCost(
        statistics.median(trigger_us),
        statistics.median(idle_us),
        statistics.median(mixed_us),
        decided / (records * repeats),
    )

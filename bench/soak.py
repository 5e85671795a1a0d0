"""Soak: one worker at a steady mixed rate for a while; RSS, latency and open decisions over time.

One command: `python bench/soak.py [--rate 400] [--minutes 3]` (needs KAIROS_KAFKA_BOOTSTRAP, as
`make bench-soak` sets it). The cart campaign runs with a 20 s attribution window, every message sent
"now" and no quiet hours, so that windows close (default rewards) during the run at any hour: the pending-decision table must stay bounded. Customers
come and go (new ones arrive at a steady rate, each active for a while), and the state TTL is
short, so the customers table must plateau too. Writes the "Soak (bench/soak.py)" section of
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
from confluent_kafka import Consumer, Producer

from bench.report import machine_line, replace_section
from engine.campaign import load_campaign
from streams.demo import demo_settings
from streams.settings import Settings
from streams.topics import consumer_config, ensure_topics, producer_config
from streams.worker_process import WorkerProcess

ROOT = Path(__file__).resolve().parent.parent
WINDOW_S = 20


@dataclass
class Sample:
    """One reading of the worker during the soak."""

    elapsed_s: float
    rss_mib: float
    decisions: int
    p50_ms: float
    p99_ms: float
    open_decisions: float
    timers: float
    customer_rows: float
    expired: float
    stalls: float = 0.0  # event-loop stalls over 20 ms so far (kairos_event_loop_lag_seconds)


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


def metric(url: str, name: str) -> float:
    """Sum of a metric's samples on the worker's /metrics."""
    import urllib.request

    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    return sum(
        float(x.rsplit(" ", 1)[1]) for x in lines if x.startswith(name) and not x.startswith("#")
    )


def produce_mixed(
    settings: Settings, rate: float, seconds: float, customers: int, stop: threading.Event
) -> int:
    """Paced mixed stream, about one trigger in five events; returns how many were sent.

    Customers churn: `customers` are active at any time, and new ones replace the oldest at
    rate/10 per second, so each customer is active for about 10 x customers / rate seconds.
    """
    producer = Producer(producer_config(settings, **{"linger.ms": 0}))  # latency counts from send
    rng = random.Random(11)
    start = time.perf_counter()
    sent = 0
    while not stop.is_set() and time.perf_counter() - start < seconds:
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
        event = {
            "event_id": uuid.uuid4().hex,
            "customer_id": cid,
            "type": kind,
            "ts": datetime.now(UTC).isoformat(),
            "product_id": f"p{rng.randrange(500)}",
            "category": rng.choice(["shoes", "bags", "dresses", "jackets"]),
            "price": round(rng.uniform(10, 200), 2),
            "order_value": round(rng.uniform(10, 200), 2),
        }
        producer.produce(settings.topics.events, key=cid.encode(), value=orjson.dumps(event))
        producer.poll(0)
        sent += 1
    producer.flush(30)
    return sent


def run(
    rate: float, minutes: float, customers: int, ttl_s: float
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
        }
    )
    ensure_topics(settings)
    consumer = Consumer(consumer_config(settings, f"{settings.app_id}-soak"))
    consumer.subscribe([settings.topics.decisions])
    worker = WorkerProcess(settings, run_dir / "worker.log").start()
    worker.wait_ready(60)
    assert worker.process is not None
    pid = worker.process.pid
    start_rss = rss_mib(pid)
    stop = threading.Event()
    result: dict[str, int] = {}
    sender = threading.Thread(
        target=lambda: result.update(
            sent=produce_mixed(settings, rate, minutes * 60, customers, stop)
        )
    )
    started = time.monotonic()
    sender.start()
    samples: list[Sample] = []
    window: list[float] = []
    decisions = 0
    next_sample = started + 10
    try:
        while sender.is_alive() or time.monotonic() < next_sample:
            message = consumer.poll(0.1)
            if message is not None and not message.error():
                record = orjson.loads(message.value() or b"{}")
                window.append(
                    (time.time() - datetime.fromisoformat(record["trigger_ts"]).timestamp()) * 1000
                )
                decisions += 1
            if time.monotonic() >= next_sample:
                window.sort()
                samples.append(
                    Sample(
                        elapsed_s=time.monotonic() - started,
                        rss_mib=rss_mib(pid),
                        decisions=decisions,
                        p50_ms=statistics.median(window) if window else float("nan"),
                        p99_ms=window[int(len(window) * 0.99)] if window else float("nan"),
                        open_decisions=metric(worker.url, "kairos_decisions_total")
                        - metric(worker.url, "kairos_rewards_total"),
                        timers=metric(worker.url, "kairos_pending_timers"),
                        customer_rows=metric(worker.url, 'kairos_table_rows{table="customers"}'),
                        expired=metric(worker.url, "kairos_expired_customers_total"),
                        stalls=metric(worker.url, "kairos_event_loop_lag_seconds_count")
                        - metric(worker.url, 'kairos_event_loop_lag_seconds_bucket{le="0.02"}'),
                    )
                )
                print(samples[-1], flush=True)
                window = []
                next_sample += 10
                if not sender.is_alive():
                    break
    finally:
        stop.set()
        sender.join()
        consumer.close()
        worker.stop()
    return samples, result.get("sent", 0), start_rss


def main() -> None:
    """Run the soak and write its section of BENCHMARKS.md."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=400.0, help="mixed events per second")
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--customers", type=int, default=4_000, help="customers active at any time")
    parser.add_argument("--ttl-s", type=float, default=60.0, help="state TTL (retention)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    samples, sent, start_rss = run(args.rate, args.minutes, args.customers, args.ttl_s)
    churn_s = 10 * args.customers / args.rate
    lines = [
        machine_line(),
        "",
        f"Command: `make bench-soak` (`python bench/soak.py --rate {args.rate:.0f} --minutes "
        f"{args.minutes:g}`): {sent:,} mixed events (about one explicit trigger in five) for "
        f"{args.customers:,} customers active at a time, new ones replacing the oldest so that "
        f"each is active for about {churn_s:.0f} s; state TTL {args.ttl_s:g} s (idle customers "
        f"with nothing open are removed); cart campaign with a {WINDOW_S} s attribution window, "
        "every message sent now and no quiet hours, so windows close during the run (the shipped "
        "campaign may send in the evening, and the window counts from the send). Latency: decision read time minus trigger time, per 10 s "
        "window. Open decisions: decisions sent minus rewards joined (the pending table). "
        "Customer rows: the customers table (`kairos_table_rows`); expired: customers removed "
        "by retention so far. Loop stalls: times the worker's event loop woke more than 20 ms "
        "late (`kairos_event_loop_lag_seconds`), since the start.",
        "",
        f"Worker RSS at start: {start_rss:.0f} MiB.",
        "",
        "| t (s) | RSS MiB | decisions | p50 ms | p99 ms | open decisions | customers with timers "
        "| customer rows | expired | loop stalls |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in samples:
        lines.append(
            f"| {s.elapsed_s:.0f} | {s.rss_mib:.0f} | {s.decisions:,} | {s.p50_ms:.1f} | "
            f"{s.p99_ms:.1f} | {s.open_decisions:.0f} | {s.timers:.0f} | "
            f"{s.customer_rows:,.0f} | {s.expired:,.0f} | {s.stalls:,.0f} |"
        )
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        replace_section(ROOT / "BENCHMARKS.md", "Soak (bench/soak.py)", text)


if __name__ == "__main__":
    main()

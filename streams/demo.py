"""`kairos demo`: a worker on the local broker, synthetic customers in, decisions and rewards out."""

from __future__ import annotations

import random
import socket
import statistics
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer
from rich.console import Console

from streams.settings import Settings
from streams.tail import describe_decision, describe_reward
from streams.topics import consumer_config, ensure_topics, producer_config
from streams.worker_process import WorkerProcess

# Derived cart abandonment fires after this much silence in the demo (30 min in production).
DEMO_CART_TIMEOUT_S = 3.0


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def demo_settings(base: Settings, run_dir: Path) -> Settings:
    """Settings for an isolated demo run: its own topics, group, tables and web port."""
    run_id = uuid.uuid4().hex[:8]
    prefix = f"kairos-demo-{run_id}"
    return base.model_copy(
        update={
            "app_id": prefix,
            "topics": base.topics.model_copy(
                update={
                    name: f"{prefix}.{name}.v1"
                    for name in (
                        "events",
                        "outcomes",
                        "decisions",
                        "rewards",
                        "models",
                        "dlq",
                        "ticks",
                    )
                }
            ),
            "data_dir": run_dir / "tables",
            "web_port": free_port(),
            "cart_abandon_after_s": DEMO_CART_TIMEOUT_S,
            "snapshot_interval_s": 2.0,
        }
    )


def _event(customer_id: str, kind: str, **fields: Any) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4().hex,
        "customer_id": customer_id,
        "type": kind,
        "ts": datetime.now(UTC).isoformat(),
        **fields,
    }


def synthetic_journeys(customers: int, rng: random.Random) -> tuple[list[dict[str, Any]], int]:
    """Events for a few kinds of customers, and how many triggers they should cause.

    A third abandon a cart explicitly (an upstream `cart_abandoned`), a third add to the cart and
    go silent (Kairos derives the abandonment after the inactivity timeout), a third buy for the
    first time (a cross-sell trigger).
    """
    categories = ["shoes", "dresses", "bags", "jackets", "accessories"]
    events: list[dict[str, Any]] = []
    expected = 0
    for i in range(customers):
        cid = f"demo-customer-{i:04d}"
        tz = rng.choice(["Europe/Paris", "America/New_York", "Asia/Tokyo", "UTC"])
        category = rng.choice(categories)
        price = round(rng.uniform(15, 250), 2)
        product = f"sku-{rng.randrange(1000):04d}"
        events.append(
            _event(
                cid,
                "product_view",
                product_id=product,
                category=category,
                price=price,
                channel=rng.choice(["web", "app"]),
                timezone=tz,
            )
        )
        events.append(
            _event(cid, "cart_add", product_id=product, category=category, price=price, quantity=1)
        )
        kind = i % 3
        if kind == 0:
            events.append(_event(cid, "cart_abandoned"))
        elif kind == 2:
            events.append(_event(cid, "checkout_started"))
            events.append(
                _event(cid, "purchase", order_value=price, product_id=product, category=category)
            )
        expected += 1
    return events, expected


def run_demo(base: Settings, customers: int, timeout_s: float, console: Console) -> int:
    """Run the demo end to end; return a process exit code (0 when decisions flowed)."""
    rng = random.Random(7)
    run_dir = Path(tempfile.mkdtemp(prefix="kairos-demo-"))
    settings = demo_settings(base, run_dir)
    console.rule("[bold]Kairos demo")
    console.print(f"broker {settings.kafka_bootstrap}; topics {settings.topics.events} ...")
    ensure_topics(settings, settings.broker_wait_s)
    consumer = Consumer(consumer_config(settings, f"{settings.app_id}-viewer"))
    consumer.subscribe([settings.topics.decisions, settings.topics.rewards])
    worker = WorkerProcess(settings, run_dir / "worker.log").start()
    try:
        ready = worker.wait_ready(60)
        console.print(f"worker ready in [bold]{ready:.2f} s[/bold] (log: {worker.log_path})")
        producer = Producer(producer_config(settings))
        events, expected = synthetic_journeys(customers, rng)
        for event in events:
            producer.produce(
                settings.topics.events, key=event["customer_id"].encode(), value=orjson.dumps(event)
            )
        # Two malformed records show the dead-letter path; the worker keeps going.
        producer.produce(settings.topics.events, key=b"bad", value=b"{not json")
        producer.produce(
            settings.topics.events, key=b"bad", value=orjson.dumps({"type": "purchase"})
        )
        producer.flush(10)
        console.print(
            f"sent {len(events)} events for {customers} customers "
            f"(derived abandonment fires after {DEMO_CART_TIMEOUT_S:.0f} s of silence)"
        )
        decisions: list[dict[str, Any]] = []
        rewards: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and (
            len(decisions) < expected or len(rewards) < _expected_rewards(decisions)
        ):
            message = consumer.poll(0.2)
            if message is None or message.error():
                continue
            record = orjson.loads(message.value() or b"{}")
            if message.topic() == settings.topics.decisions:
                decisions.append(record)
                console.print(describe_decision(record))
                # Every fourth sent message converts: its outcome closes the window at once.
                if record["action_id"] != "no_action" and len(decisions) % 4 == 0:
                    outcome = {
                        "outcome_id": uuid.uuid4().hex,
                        "customer_id": record["customer_id"],
                        "decision_id": record["decision_id"],
                        "type": "converted",
                        "ts": datetime.now(UTC).isoformat(),
                        "value": 1.0,
                    }
                    producer.produce(
                        settings.topics.outcomes,
                        key=record["customer_id"].encode(),
                        value=orjson.dumps(outcome),
                    )
                    producer.flush(5)
            else:
                rewards.append(record)
                console.print("  reward " + describe_reward(record))
        return _summary(console, worker, decisions, rewards, expected)
    finally:
        consumer.close()
        worker.stop()
        console.print("worker stopped")


def _expected_rewards(decisions: list[dict[str, Any]]) -> int:
    sent = [d for d in decisions if d["action_id"] != "no_action"]
    return sum(1 for i, _ in enumerate(decisions, 1) if i % 4 == 0 and decisions[i - 1] in sent)


def _summary(
    console: Console,
    worker: WorkerProcess,
    decisions: list[dict[str, Any]],
    rewards: list[dict[str, Any]],
    expected: int,
) -> int:
    console.rule("summary")
    by_campaign = Counter(f"{d['campaign']}:{d['action_id']}" for d in decisions)
    latencies = sorted(
        (
            datetime.fromisoformat(d["decided_ts"]) - datetime.fromisoformat(d["trigger_ts"])
        ).total_seconds()
        * 1000
        for d in decisions
        if d["trigger_type"] != "cart_abandoned" or d.get("trigger_event_id")
    )
    console.print(f"decisions: {len(decisions)} of {expected} expected triggers")
    for name, count in by_campaign.most_common(8):
        console.print(f"  {name}: {count}")
    if latencies:
        console.print(
            f"trigger-to-decision latency: p50 {statistics.median(latencies):.1f} ms, "
            f"max {latencies[-1]:.1f} ms (timer triggers include the tick interval)"
        )
    console.print(f"rewards joined: {len(rewards)}")
    try:
        import urllib.request

        with urllib.request.urlopen(f"{worker.url}/metrics", timeout=2) as response:
            versions = [
                line
                for line in response.read().decode().splitlines()
                if line.startswith("kairos_model_version")
            ]
        for line in versions:
            console.print(f"  {line}")
    except OSError:
        pass
    ok = len(decisions) >= expected
    console.print(
        "[green]decisions flowed through the real broker[/green]"
        if ok
        else "[red]missing decisions[/red]"
    )
    return 0 if ok else 1

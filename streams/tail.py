"""`kairos tail`: follow a Kairos topic and print its records for people."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from confluent_kafka import Consumer
from rich.console import Console

from streams.settings import Settings
from streams.topics import consumer_config


def topic_for(settings: Settings, name: str) -> str:
    """Map a short name (decisions, rewards, dlq, ...) to its configured topic."""
    aliases = settings.topics.model_dump()
    return str(aliases.get(name, name))


def describe_decision(record: dict[str, Any]) -> str:
    """One line per decision: who, why, what was chosen, with what probability, how fast."""
    flags = []
    if record.get("holdout"):
        flags.append("holdout")
    if record.get("explore"):
        flags.append("explore")
    latency_ms = _latency_ms(record.get("trigger_ts"), record.get("decided_ts"))
    return (
        f"[cyan]{record.get('customer_id')}[/cyan] {record.get('trigger_type')} -> "
        f"[bold]{record.get('campaign')}[/bold]: [green]{record.get('action_id')}[/green] "
        f"p={record.get('propensity', 0):.3f} v{record.get('model_version')} "
        f"{latency_ms:.1f} ms {' '.join(flags)}".rstrip()
    )


def describe_reward(record: dict[str, Any]) -> str:
    """One line per joined reward."""
    decision = record.get("decision", {})
    how = "expired" if record.get("expired") else ",".join(record.get("outcome_types", []))
    return (
        f"[cyan]{decision.get('customer_id')}[/cyan] {decision.get('campaign')}:"
        f"{decision.get('action_id')} reward={record.get('reward')} ({how})"
    )


def describe_dead_letter(record: dict[str, Any]) -> str:
    """One line per dead letter: where it came from and why it was refused."""
    return (
        f"[red]{record.get('reason')}[/red] {record.get('topic')}[{record.get('partition')}]"
        f"@{record.get('offset')}: {record.get('detail')}"
    )


def tail_topic(
    settings: Settings,
    name: str,
    from_beginning: bool,
    max_records: int | None,
    idle_timeout_s: float | None,
    raw: bool,
    console: Console,
) -> int:
    """Print records until interrupted, `max_records` are shown, or the topic is idle too long."""
    topic = topic_for(settings, name)
    describe: Callable[[dict[str, Any]], str] | None = {
        "decisions": describe_decision,
        "rewards": describe_reward,
        "dlq": describe_dead_letter,
    }.get(name)
    consumer = Consumer(
        consumer_config(
            settings,
            f"kairos-tail-{uuid.uuid4().hex[:8]}",
            **{"auto.offset.reset": "earliest" if from_beginning else "latest"},
        )
    )
    consumer.subscribe([topic])
    shown = 0
    last = time.monotonic()
    try:
        while max_records is None or shown < max_records:
            message = consumer.poll(0.2)
            if message is None:
                if idle_timeout_s is not None and time.monotonic() - last > idle_timeout_s:
                    break
                continue
            if message.error():
                continue
            last = time.monotonic()
            value = message.value() or b""
            shown += 1
            if raw or describe is None:
                console.print(value.decode(errors="replace"), markup=False, highlight=False)
                continue
            try:
                console.print(describe(orjson.loads(value)))
            except orjson.JSONDecodeError:
                console.print(value.decode(errors="replace"), markup=False)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return shown


def _latency_ms(trigger_ts: str | None, decided_ts: str | None) -> float:
    from datetime import datetime

    if not trigger_ts or not decided_ts:
        return float("nan")
    start = datetime.fromisoformat(trigger_ts)
    end = datetime.fromisoformat(decided_ts)
    return (end - start).total_seconds() * 1000.0

"""`kairos tail`: follow a Kairos topic and print its records for people."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException
from rich.console import Console
from rich.markup import escape

from engine.snapshot import SnapshotError, unpack
from streams.settings import Settings
from streams.topics import consumer_config


def topic_for(settings: Settings, name: str) -> str:
    """Map a short name (decisions, rewards, dlq, ...) to its configured topic."""
    aliases = settings.topics.model_dump()
    return str(aliases.get(name, name))


def _text(value: object) -> str:
    """A record's value as literal text in rich markup: `[red]` in a customer id stays text."""
    return escape(str(value))


def describe_decision(record: dict[str, Any]) -> str:
    """One line per decision: who, why, what was chosen, with what probability, how fast."""
    flags = []
    if record.get("holdout"):
        flags.append("holdout")
    if record.get("explore"):
        flags.append("explore")
    reason = record.get("reason")
    if isinstance(reason, str) and reason not in ("policy", "holdout"):
        flags.append(f"({_text(reason)})")  # why nothing was sent: guardrail:<name>, none eligible
    latency_ms = _latency_ms(record.get("trigger_ts"), record.get("decided_ts"))
    propensity = record.get("propensity")
    return (
        f"[cyan]{_text(record.get('customer_id'))}[/cyan] {_text(record.get('trigger_type'))} -> "
        f"[bold]{_text(record.get('campaign'))}[/bold]: "
        f"[green]{_text(record.get('action_id'))}[/green] "
        f"p={propensity if isinstance(propensity, float | int) else float('nan'):.3f} "
        f"v{_text(record.get('model_version'))} {latency_ms:.1f} ms {' '.join(flags)}".rstrip()
    )


def describe_reward(record: dict[str, Any]) -> str:
    """One line per joined reward."""
    decision = record.get("decision", {})
    how = "expired" if record.get("expired") else ",".join(record.get("outcome_types", []))
    return (
        f"[cyan]{_text(decision.get('customer_id'))}[/cyan] {_text(decision.get('campaign'))}:"
        f"{_text(decision.get('action_id'))} reward={_text(record.get('reward'))} ({_text(how)})"
    )


def describe_dead_letter(record: dict[str, Any]) -> str:
    """One line per dead letter: where it came from and why it was refused."""
    return (
        f"[red]{_text(record.get('reason'))}[/red] {_text(record.get('topic'))}"
        f"{_text([record.get('partition')])}@{_text(record.get('offset'))}: "
        f"{_text(record.get('detail'))}"
    )


def describe_snapshot(key: bytes | None, value: bytes, settings: Settings) -> str:
    """One line per model snapshot (binary): its campaign, size, and whether it checks out."""
    campaign = _text((key or b"?").decode(errors="replace"))
    try:
        unpack(value, settings.snapshot_key.encode() if settings.snapshot_key else None)
    except SnapshotError as exc:
        return f"[cyan]{campaign}[/cyan] {len(value):,} bytes [red]unreadable:[/red] {_text(exc)}"
    return f"[cyan]{campaign}[/cyan] {len(value):,} bytes, checksum ok"


class TailError(RuntimeError):
    """The topic to tail cannot be followed (it does not exist, the broker does not answer)."""


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
    names = settings.topics
    describe: Callable[[dict[str, Any]], str] | None = {  # by topic: a full name is described too
        names.decisions: describe_decision,
        names.rewards: describe_reward,
        names.dlq: describe_dead_letter,
    }.get(topic)
    consumer = Consumer(
        consumer_config(
            settings,
            f"kairos-tail-{uuid.uuid4().hex[:8]}",
            **{"auto.offset.reset": "earliest" if from_beginning else "latest"},
        )
    )
    try:
        found = consumer.list_topics(topic, timeout=10.0).topics.get(topic)
    except KafkaException as exc:
        consumer.close()
        raise TailError(f"no answer from {settings.kafka_bootstrap}: {exc}") from None
    if found is None or found.error is not None:  # a typo would otherwise wait in silence
        consumer.close()
        if topic in settings.topics.model_dump().values():
            raise TailError(f"topic {topic!r} does not exist yet: run `kairos topics` or a worker")
        raise TailError(
            f"no topic {topic!r}; short names: {', '.join(settings.topics.model_dump())}"
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
            if topic == names.models and not raw:
                console.print(describe_snapshot(message.key(), value, settings), emoji=False)
                continue
            if raw or describe is None:
                _print_line(console, value.decode(errors="replace"))
                continue
            try:
                record = orjson.loads(value)
                line = describe(record) if isinstance(record, dict) else None
            except orjson.JSONDecodeError:
                line = None
            if line is None:
                _print_line(console, value.decode(errors="replace"))
            else:
                console.print(line, emoji=False)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return shown


def _print_line(console: Console, text: str) -> None:
    """A record as it is, one line, unwrapped and unstyled: what `--json` promises to a pipe."""
    console.file.write(text + "\n")
    console.file.flush()


def _latency_ms(trigger_ts: str | None, decided_ts: str | None) -> float:
    from datetime import datetime

    if not isinstance(trigger_ts, str) or not isinstance(decided_ts, str):
        return float("nan")
    try:
        return (
            datetime.fromisoformat(decided_ts) - datetime.fromisoformat(trigger_ts)
        ).total_seconds() * 1000.0
    except (ValueError, TypeError):  # not ISO times, or one aware and one naive
        return float("nan")

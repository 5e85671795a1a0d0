"""Small confluent-kafka helpers for the integration tests: produce records, collect a topic."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer

from streams.settings import Settings
from streams.topics import consumer_config, producer_config


def event(customer_id: str, kind: str, **fields: Any) -> dict[str, Any]:
    """A valid customer event with a fresh id and the current time."""
    return {
        "event_id": fields.pop("event_id", uuid.uuid4().hex),
        "customer_id": customer_id,
        "type": kind,
        "ts": fields.pop("ts", datetime.now(UTC).isoformat()),
        **fields,
    }


def produce(settings: Settings, topic: str, records: Iterable[dict[str, Any] | bytes]) -> int:
    """Send records keyed by customer id (murmur2, like the worker) and wait for the acks."""
    producer = Producer(producer_config(settings))
    count = 0
    for record in records:
        if isinstance(record, bytes):
            producer.produce(topic, key=b"raw", value=record)
        else:
            producer.produce(
                topic, key=str(record["customer_id"]).encode(), value=orjson.dumps(record)
            )
        count += 1
    assert producer.flush(30) == 0, "records still unacknowledged after 30 s"
    return count


class TopicReader:
    """Reads a topic from the beginning; `until` waits for a condition on what has arrived."""

    def __init__(self, settings: Settings, topic: str, **overrides: Any) -> None:
        self.records: list[dict[str, Any]] = []
        self._consumer = Consumer(
            consumer_config(settings, f"test-reader-{uuid.uuid4().hex[:8]}", **overrides)
        )
        self._consumer.subscribe([topic])

    def poll(self, seconds: float) -> None:
        """Collect whatever arrives within `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            message = self._consumer.poll(0.1)
            if message is not None and not message.error():
                self.records.append(orjson.loads(message.value() or b"null"))

    def until(
        self, condition: Callable[[list[dict[str, Any]]], bool], timeout_s: float = 60.0
    ) -> list[dict[str, Any]]:
        """Collect records until `condition(records)` holds; fail with what arrived on time-out."""
        deadline = time.monotonic() + timeout_s
        while not condition(self.records):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"condition not met after {timeout_s} s; got {len(self.records)} records, "
                    f"the first: {str(self.records[:2])[:400]}"
                )
            message = self._consumer.poll(0.1)
            if message is not None and not message.error():
                self.records.append(orjson.loads(message.value() or b"null"))
        return self.records

    def close(self) -> None:
        """Leave the group."""
        self._consumer.close()

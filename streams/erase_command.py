"""`kairos erase`: ask the workers to delete customers' data (right to erasure).

The request travels as an `erasure_requested` event on the events topic, keyed by the customer,
so it reaches the worker that holds the customer, in order after the customer's earlier events.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from confluent_kafka import Producer

from schemas.codec import encode
from schemas.records import ERASURE_REQUESTED, Event
from streams.settings import Settings
from streams.topics import producer_config


class EraseError(RuntimeError):
    """The requests could not all be delivered to the broker."""


def erasure_event(customer_id: str, now: datetime) -> bytes:
    """The JSON of one erasure request for `customer_id` (the wire Event, as producers send)."""
    event = Event(
        event_id=f"erase-{uuid.uuid4().hex}",
        customer_id=customer_id,
        type=ERASURE_REQUESTED,
        ts=now.astimezone(UTC),
    )
    return encode(event)


def request_erasure(
    settings: Settings, customer_ids: Sequence[str], timeout_s: float = 30.0
) -> int:
    """Send one erasure request per customer and wait until the broker has them all; returns
    how many were sent. The worker removes the rows when it reaches them (seconds at most)."""
    producer = Producer(producer_config(settings))
    failures: list[str] = []

    def delivered(error: object, message: object) -> None:
        if error is not None:
            failures.append(str(error))

    now = datetime.now(UTC)
    for customer_id in customer_ids:
        producer.produce(
            settings.topics.events,
            erasure_event(customer_id, now),
            customer_id.encode(),
            on_delivery=delivered,
        )
    left = producer.flush(timeout_s)
    if left or failures:
        raise EraseError(
            f"{left} requests not acknowledged after {timeout_s:.0f} s"
            + (f"; refused: {failures[0]}" if failures else "")
        )
    return len(customer_ids)

"""Faust's aiokafka transport with a short fetch wait and a producer flush that really drains.

Fetch wait:
Faust builds its worker consumer with ``fetch_max_wait_ms=1500``. When the consumer still holds
records of one partition, aiokafka fetches only the others; if they are idle (a changelog, the
timer-tick topic), the broker holds that fetch for the full wait, and new records of the busy
partition wait behind it. Measured: trigger-to-decision p50 of 1.2-1.4 s at 1,000 triggers/s in
that state. A short wait bounds the stall; an idle worker pays a few more empty fetches a second.

Flush: before committing offsets Faust flushes its producer buffer (table changelog records), but
the buffer's flush returns as soon as one message takes more than 0.1 s to go out, with records
still queued. Offsets could then be committed ahead of changelog records, and a SIGKILL in that
window lost a customer's state update (seen in tests/integration/test_reliability.py). The
buffer here drains completely before the commit goes on. "Drained" also covers the message the
buffer's sender task has already taken off its queue but not yet handed to the Kafka client (the
queue is empty then, yet the record is in neither place that a flush waits for).
"""

from __future__ import annotations

import asyncio
import types
from typing import Any, ClassVar

import aiokafka
from faust.transport.drivers import aiokafka as faust_aiokafka

#: Upper bound on how long the broker may hold a fetch that finds no new records.
FETCH_MAX_WAIT_MS = 10


class LowLatencyConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """The worker consumer thread, with its consumer's fetch wait shortened."""

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # Read by AIOKafkaConsumer.start() when it builds its Fetcher (not yet started here).
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer


class LowLatencyConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer using LowLatencyConsumerThread."""

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return LowLatencyConsumerThread(self, loop=self.loop, beacon=self.beacon)


async def _drain(buffer: Any) -> None:
    """Wait until every buffered message has been handed to the client (no early return)."""
    while buffer.size or buffer.kairos_in_hand:
        if buffer.state != "running":
            raise RuntimeError("cannot flush: producer not running")
        buffer.message_sent.clear()
        try:
            await asyncio.wait_for(buffer.message_sent.wait(), timeout=1.0)
        except TimeoutError:
            continue  # still sending: keep waiting, never commit ahead of the changelog


def _counting_sender(buffer: Any) -> Any:
    """Wrap the buffer's per-message send so that a message between queue and client is counted."""
    send = buffer._send_pending

    async def send_pending(fut: Any) -> None:
        buffer.kairos_in_hand += 1
        try:
            await send(fut)
        finally:
            buffer.kairos_in_hand -= 1

    return send_pending


class DrainingProducer(faust_aiokafka.Producer):
    """Faust's aiokafka producer whose buffer flush drains completely."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        buffer: Any = self.buffer
        buffer.kairos_in_hand = 0
        # The sender task looks `_send_pending` up when it starts, after this instance attribute.
        buffer._send_pending = _counting_sender(buffer)
        buffer.flush = types.MethodType(_drain, buffer)


class LowLatencyTransport(faust_aiokafka.Transport):
    """The aiokafka transport (``kafka://``) with the low-latency consumer and draining producer."""

    Consumer: ClassVar[type[Any]] = LowLatencyConsumer
    Producer: ClassVar[type[Any]] = DrainingProducer

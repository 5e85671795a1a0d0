"""A Faust producer that sends through librdkafka (confluent-kafka) instead of aiokafka.

Why: profiling the worker draining a backlog (BENCHMARKS.md, Latency) put about a quarter of its
CPU in aiokafka's producer path: building produce requests in Python, one request in flight per
broker, and the socket writes done on the event loop. librdkafka batches, encodes and writes in
its own C threads; the event loop only enqueues (``produce()``, a few microseconds) and resolves
the delivery futures, a batch at a time.

What Faust needs from a producer is kept: ``send`` returns an awaitable that resolves to the
record's metadata (or fails), ``flush`` is a barrier (every record sent before it is acknowledged
by the broker before offsets are committed: see streams/transport.py for why that matters), and
the aiokafka client still runs beside it for what only Faust's driver does (topic creation, key
partitioning, and transactions: under exactly-once every send goes through aiokafka unchanged).
The partitioner is murmur2, the same as aiokafka's and Java's, so keyed records land where the
rest of Kairos expects them. Two librdkafka clients share the work: the action topic goes out at
once (linger 0), everything else (changelogs, ticks, rewards) lingers `Settings.linger_ms` to be
sent in fewer, larger requests; the flush barrier covers both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, ClassVar

from aiokafka.structs import RecordMetadata, TopicPartition
from confluent_kafka import KafkaError, Message, Producer
from faust.exceptions import ProducerSendError

from streams.transport import DrainingProducer, LowLatencyTransport

#: How often the event loop serves librdkafka's delivery reports while records are unacknowledged.
#: Delivery reports only settle futures (for flush barriers and Faust's bookkeeping); the records
#: themselves go out from librdkafka's threads at once, so this does not add latency to a send.
DELIVERY_POLL_S = 0.002
#: How long a send waits before retrying when librdkafka's local queue is full (backpressure).
QUEUE_FULL_BACKOFF_S = 0.001


def _metadata(message: Message) -> RecordMetadata:
    """aiokafka-style metadata of a delivered record (what Faust's callbacks expect)."""
    topic, partition = message.topic() or "", message.partition() or 0
    return RecordMetadata(
        topic=topic,
        partition=partition,
        topic_partition=TopicPartition(topic, partition),
        offset=message.offset() or 0,
        timestamp=message.timestamp()[1],
        timestamp_type=0,
        log_start_offset=None,
    )


class RdkafkaProducer(DrainingProducer):
    """Faust's producer with non-transactional sends made by librdkafka (see module docstring).

    The app says whether to use it: ``app.kairos_producer_config`` holds the confluent-kafka
    settings (streams.topics.producer_config), or None to keep aiokafka for everything.
    """

    _rdkafka: Producer | None = None
    _urgent: Producer | None = None
    _urgent_topics: frozenset[str] = frozenset()
    _poll_handle: asyncio.TimerHandle | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Records sent and not yet acknowledged, in send order (dicts keep insertion order).
        self._unacked: dict[int, asyncio.Future[Any]] = {}
        self._sent = 0

    async def on_start(self) -> None:
        """Start the aiokafka client (topic creation, transactions), then librdkafka beside it."""
        await super().on_start()
        config: Mapping[str, Any] | None = getattr(self.app, "kairos_producer_config", None)
        if config is None or self.app.in_transaction:
            return
        self._rdkafka = Producer(dict(config))
        # Latency-critical topics (the action topic) get their own client without linger, so a
        # decision never waits for a batch of changelog records to fill.
        self._urgent_topics = frozenset(getattr(self.app, "kairos_urgent_topics", ()))
        if self._urgent_topics:
            # Its own statistics label, if the app reports them (streams/client_stats.py).
            urgent: Mapping[str, Any] = getattr(self.app, "kairos_urgent_overrides", {})
            self._urgent = Producer({**config, "linger.ms": 0, **urgent})

    def serve_callbacks(self) -> None:
        """Serve librdkafka's queued callbacks now (deliveries, statistics); the app calls it on
        a timer, since sends alone would leave an idle worker's statistics unserved."""
        for producer in (self._rdkafka, self._urgent):
            if producer is not None:
                producer.poll(0)

    def _poll_deliveries(self) -> None:
        """Serve delivery reports on the event loop; again soon while records are unacknowledged.

        Polling from the loop (not from a thread of our own) runs the callbacks where the
        futures live and keeps a second Python thread from competing for the GIL.
        """
        self._poll_handle = None
        producer = self._rdkafka
        if producer is None:
            return
        producer.poll(0)
        if self._urgent is not None:
            self._urgent.poll(0)
        if self._unacked:
            self._poll_handle = asyncio.get_running_loop().call_later(
                DELIVERY_POLL_S, self._poll_deliveries
            )

    async def on_stop(self) -> None:
        """Wait (bounded) for every queued record to be acknowledged, then stop aiokafka too."""
        producer = self._rdkafka
        if producer is not None:
            deadline = asyncio.get_running_loop().time() + 10.0
            while self._unacked and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(DELIVERY_POLL_S)  # the poll timer settles them
            if self._unacked:
                self.log.warning("%d records not acknowledged at stop", len(self._unacked))
            self._rdkafka = None
            if self._poll_handle is not None:
                self._poll_handle.cancel()
            producer.flush(1.0)
            if self._urgent is not None:
                self._urgent.flush(1.0)
                self._urgent = None
        await super().on_stop()

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
        *,
        transactional_id: str | None = None,
    ) -> Any:
        """Enqueue one record with librdkafka; the returned future resolves on acknowledgement."""
        producer = self._rdkafka
        if producer is None or transactional_id:
            return await super().send(
                topic,
                key,
                value,
                partition,
                timestamp,
                headers,
                transactional_id=transactional_id,
            )
        if isinstance(headers, Mapping):
            headers = list(headers.items())
        self._send_on_produce_message(
            key=key, value=value, partition=partition, timestamp=timestamp, headers=headers
        )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        seq = self._sent
        self._sent += 1
        self._unacked[seq] = future

        def delivered(error: KafkaError | None, message: Message) -> None:
            # Runs inside producer.poll(), on the event loop.
            self._unacked.pop(seq, None)
            if future.done():
                return
            if error is not None:
                future.set_exception(ProducerSendError(f"delivery failed: {error.str()}"))
            else:
                future.set_result(_metadata(message))

        extra: dict[str, Any] = {}
        if partition is not None:
            extra["partition"] = partition
        if timestamp:
            extra["timestamp"] = int(timestamp * 1000.0)
        if headers:
            extra["headers"] = headers
        if self._urgent is not None and topic in self._urgent_topics:
            producer = self._urgent
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=delivered, **extra)
                if self._poll_handle is None:
                    self._poll_handle = loop.call_later(DELIVERY_POLL_S, self._poll_deliveries)
                return future
            except BufferError:
                await asyncio.sleep(QUEUE_FULL_BACKOFF_S)  # librdkafka's queue is full
            except Exception as exc:
                self._unacked.pop(seq, None)
                raise ProducerSendError(f"Error while sending: {exc!r}") from exc

    async def flush(self) -> None:
        """Barrier: everything sent before this call is acknowledged (or failed) on return."""
        await self.buffer.flush()
        waiting = list(self._unacked.values())
        if waiting:
            await asyncio.wait(waiting)
        await super().flush()


class RdkafkaTransport(LowLatencyTransport):
    """The worker's producer transport: the low-latency aiokafka transport, librdkafka sends."""

    Producer: ClassVar[type[Any]] = RdkafkaProducer

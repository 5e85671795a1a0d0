"""Where exactly-once recovery stops reading a changelog, on the real broker.

Faust's recovery reads each changelog partition until it has applied the record before its
"end". Under exactly-once the stock consumer thread answers with the consumer's cached last
stable offset, which is unknown until a fetch of that partition has returned, so a restarted
worker could rebuild its tables from nothing; and the record before the last stable offset is a
transaction marker that never arrives, so recovery waited out two 5 s time-outs. The worker's
consumer thread (streams.transport) asks the broker, and ends after the last committed record.
"""

from __future__ import annotations

import asyncio
import types
import uuid
from typing import Any

import aiokafka
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams.settings import Settings
from streams.transport import LowLatencyConsumerThread

pytestmark = pytest.mark.integration


def _topic(settings: Settings) -> str:
    name = f"kairos-highwater-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(settings.confluent_config())
    for future in admin.create_topics([NewTopic(name, 1, 1)]).values():
        future.result(30)
    return name


def _transactional_producer(settings: Settings, transactional_id: str) -> Producer:
    producer = Producer({**settings.confluent_config(), "transactional.id": transactional_id})
    producer.init_transactions(30)
    return producer


def _thread(settings: Settings, consumer: aiokafka.AIOKafkaConsumer, cls: type[Any]) -> Any:
    """A consumer thread object around `consumer`, for its offset queries only (not started)."""
    thread = object.__new__(cls)
    thread._consumer = consumer
    thread.consumer = types.SimpleNamespace(in_transaction=True)
    # The probe as the worker builds it, without a Faust app around it.
    thread._new_probe_consumer = lambda: aiokafka.AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, isolation_level="read_committed"
    )
    return thread


async def _stock_and_ours(settings: Settings, topic: str) -> tuple[Any, Any]:
    """Faust's stock answer and ours, from a read_committed consumer that has fetched nothing."""
    consumer = aiokafka.AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        tp = aiokafka.TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.pause(tp)  # as recovery finds it: assigned, nothing fetched yet
        stock = _thread(settings, consumer, faust_aiokafka.AIOKafkaConsumerThread)
        ours = _thread(settings, consumer, LowLatencyConsumerThread)
        return (await stock._highwaters([tp]))[tp], (await ours._highwaters([tp]))[tp]
    finally:
        await consumer.stop()


def test_recovery_ends_after_the_last_committed_record_known_to_the_broker(
    settings: Settings,
) -> None:
    topic = _topic(settings)
    transactional_id = f"{topic}-writer"
    writer = _transactional_producer(settings, transactional_id)
    writer.begin_transaction()
    for i in range(3):
        writer.produce(topic, key=b"k", value=b"committed-%d" % i)
    writer.commit_transaction(30)  # offsets 0-2, the commit marker at 3
    writer.begin_transaction()
    for i in range(2):
        writer.produce(topic, key=b"k", value=b"open-%d" % i)
    writer.flush(30)  # offsets 4-5, in a transaction left open (a worker killed mid-way)

    stock, ours = asyncio.run(_stock_and_ours(settings, topic))
    # Faust's stock answer before a fetch: nothing known, which recovery reads as an empty log.
    assert stock is None
    # Ours: after offset 2, the last committed record (the last stable offset is 4, before the
    # open transaction; offset 3 is the commit marker).
    assert ours == 3
    # The next worker's producer takes the same transactional id: the open one is aborted (its
    # records and the abort marker take offsets 4-6). The last committed record stays offset 2.
    _transactional_producer(settings, transactional_id)
    stock, ours = asyncio.run(_stock_and_ours(settings, topic))
    assert (stock, ours) == (None, 3)


def test_a_changelog_with_only_aborted_records_needs_no_recovery(settings: Settings) -> None:
    topic = _topic(settings)
    writer = _transactional_producer(settings, f"{topic}-writer")
    writer.begin_transaction()
    writer.produce(topic, key=b"k", value=b"aborted")
    writer.abort_transaction(30)  # offset 0 aborted, its marker at 1

    _, ours = asyncio.run(_stock_and_ours(settings, topic))
    assert ours == 0  # the log's start: Faust's highwater -1, nothing to read

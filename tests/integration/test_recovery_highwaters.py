"""Where exactly-once recovery stops reading a changelog, on the real broker.

Faust's recovery reads each changelog partition up to its "highwater". Under exactly-once the
stock consumer thread answers with the consumer's cached last stable offset, which is unknown
until a fetch of that partition has returned, so a restarted worker could rebuild its tables
from nothing. The worker's consumer thread (streams.transport) asks the broker instead.
"""

from __future__ import annotations

import asyncio
import types
import uuid
from typing import Any

import aiokafka
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
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


def _thread(consumer: aiokafka.AIOKafkaConsumer, cls: type[Any]) -> Any:
    """A consumer thread object around `consumer`, for its offset queries only (not started)."""
    thread = object.__new__(cls)
    thread._consumer = consumer
    thread.consumer = types.SimpleNamespace(in_transaction=True)  # read by Faust's own version
    return thread


def test_recovery_reads_up_to_the_broker_last_stable_offset_before_any_fetch(
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

    async def highwaters() -> tuple[Any, Any, Any]:
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
            ours = _thread(consumer, LowLatencyConsumerThread)
            stock = _thread(consumer, faust_aiokafka.AIOKafkaConsumerThread)
            while_open = (await ours._highwaters([tp]))[tp]
            faust_answer = (await stock._highwaters([tp]))[tp]
            # The next worker's producer takes the same transactional id: the open one aborts.
            await asyncio.to_thread(_transactional_producer, settings, transactional_id)
            after_fencing = (await ours._highwaters([tp]))[tp]
            return while_open, faust_answer, after_fencing
        finally:
            await consumer.stop()

    while_open, faust_answer, after_fencing = asyncio.run(highwaters())
    # Stable up to the open transaction: the committed records and their marker, not the rest.
    assert while_open == 4
    # Faust's stock answer before a fetch: nothing known, which recovery reads as an empty log.
    assert faust_answer is None
    # Once the open transaction is aborted (its records and the abort marker), all is stable.
    assert after_fencing == 7

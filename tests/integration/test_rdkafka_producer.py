"""The worker's librdkafka producer on the real broker: partitions, acknowledgements, the flush barrier."""

from __future__ import annotations

import asyncio

import pytest
from confluent_kafka import Consumer, TopicPartition

from streams.app import KairosApp
from streams.campaign_files import resolve_campaigns
from streams.partitioning import partition_of
from streams.rdkafka_producer import RdkafkaProducer
from streams.settings import Settings
from streams.topics import consumer_config

pytestmark = pytest.mark.integration


async def _send_and_flush(settings: Settings, keys: list[bytes]) -> list[asyncio.Future[object]]:
    kairos = KairosApp(settings, resolve_campaigns(settings.campaigns))
    producer = kairos.app.producer
    await producer.start()
    try:
        assert isinstance(producer, RdkafkaProducer)
        assert producer._rdkafka is not None, "librdkafka is the default client at least once"
        futures = [
            await producer.send(settings.topics.decisions, key, b"v" + key, None, None, None)
            for key in keys
        ]
        await producer.flush()
        # The barrier: every record sent before flush() is acknowledged when it returns.
        assert [f for f in futures if not f.done()] == []
        return futures
    finally:
        await producer.stop()


def test_records_are_acknowledged_by_flush_and_land_on_the_murmur2_partition(
    settings: Settings,
) -> None:
    """Keyed records go where aiokafka and Java clients would put them, and are really written."""
    keys = [f"customer-{i}".encode() for i in range(60)]
    futures = asyncio.run(_send_and_flush(settings, keys))
    for key, future in zip(keys, futures, strict=True):
        metadata = future.result()
        assert metadata.topic == settings.topics.decisions
        assert metadata.partition == partition_of(key, settings.partitions)
        assert metadata.offset >= 0

    consumer = Consumer(consumer_config(settings, f"{settings.app_id}-check"))
    consumer.assign(
        [TopicPartition(settings.topics.decisions, p, 0) for p in range(settings.partitions)]
    )
    seen: dict[bytes, int] = {}
    try:
        while len(seen) < len(keys):
            message = consumer.poll(10.0)
            assert message is not None, f"only {len(seen)} of {len(keys)} records read back"
            assert message.error() is None
            seen[message.key()] = message.partition()
            assert message.value() == b"v" + message.key()
    finally:
        consumer.close()
    assert seen == {key: partition_of(key, settings.partitions) for key in keys}


@pytest.mark.parametrize(
    ("update", "uses_librdkafka"),
    [
        ({}, True),
        ({"producer_client": "aiokafka"}, False),
        ({"processing_guarantee": "exactly_once"}, False),  # transactions stay on aiokafka
    ],
)
def test_which_client_sends(
    settings: Settings, update: dict[str, str], uses_librdkafka: bool
) -> None:
    """librdkafka by default; aiokafka when asked for, and always under exactly-once."""
    kairos = KairosApp(settings.model_copy(update=update), [])
    config = getattr(kairos.app, "kairos_producer_config", None)
    assert (config is not None) is uses_librdkafka
    if config is not None:
        assert config["partitioner"] == "murmur2_random"
        assert config["enable.idempotence"] is True

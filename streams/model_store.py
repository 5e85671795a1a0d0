"""Model snapshots on the compacted models topic: publish on a schedule, load the newest on start."""

from __future__ import annotations

import logging

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from engine.bandit import ContextualBandit, SnapshotError
from streams.processor import Processor
from streams.settings import Settings
from streams.topics import consumer_config

log = logging.getLogger("kairos.models")


def snapshot_key_bytes(settings: Settings) -> bytes | None:
    """The HMAC key that signs snapshots, if one is configured."""
    return settings.snapshot_key.encode() if settings.snapshot_key else None


def read_latest_snapshots(settings: Settings, timeout_s: float = 10.0) -> dict[str, bytes]:
    """Read the compacted models topic to its end: the newest snapshot bytes per campaign."""
    consumer = Consumer(consumer_config(settings, f"{settings.app_id}-model-loader"))
    latest: dict[str, bytes] = {}
    try:
        topic = settings.topics.models
        metadata = consumer.list_topics(topic, timeout=timeout_s)
        partitions = metadata.topics[topic].partitions if topic in metadata.topics else {}
        for partition in partitions:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=timeout_s
            )
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
            position = low
            while position < high:
                message = consumer.poll(timeout_s)
                if message is None:
                    break
                if message.error():
                    continue
                position = (message.offset() or 0) + 1
                key, value = message.key(), message.value()
                if key is not None and value is not None:
                    latest[key.decode()] = value
    finally:
        consumer.close()
    return latest


def load_latest_snapshots(settings: Settings, processor: Processor) -> int:
    """Restore each campaign's newest valid snapshot into the processor; return how many.

    A snapshot that fails its version or checksum check is skipped with a warning: the worker
    then starts from scratch rather than from corrupt models.
    """
    loaded = 0
    for campaign, data in read_latest_snapshots(settings).items():
        runtime = processor.runtimes.get(campaign)
        if runtime is None:
            continue
        try:
            bandit = ContextualBandit.restore(data, key=snapshot_key_bytes(settings))
        except SnapshotError as exc:
            log.warning("skipping snapshot of %s: %s", campaign, exc)
            continue
        if bandit.version >= runtime.bandit.version:
            runtime.bandit = bandit
            loaded += 1
            processor.metrics.snapshots.labels(direction="loaded").inc()
            processor.metrics.model_version.labels(campaign=campaign).set(bandit.version)
    return loaded

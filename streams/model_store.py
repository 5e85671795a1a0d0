"""Model snapshots on the compacted models topic: publish on a schedule, load the newest on start."""

from __future__ import annotations

import logging
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from engine.bandit import ContextualBandit, SnapshotError
from engine.decide import CampaignRuntime
from streams.processor import Processor
from streams.settings import Settings
from streams.topics import consumer_config

log = logging.getLogger("kairos.models")

#: How long one poll of the snapshot loader waits before it checks its position again.
LOADER_POLL_S = 0.1


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
            low, high = _watermarks(consumer, TopicPartition(topic, partition), timeout_s)
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
            # The end is where the consumer's position reaches the high watermark, not where the
            # last record's offset does: a transaction's commit or abort marker ends a topic
            # written under exactly-once, and no record is delivered for it (waiting for one cost
            # every exactly-once restart the whole time-out: ready after 12 s instead of 2 s).
            deadline = time.monotonic() + timeout_s
            while True:
                message = consumer.poll(LOADER_POLL_S)
                if message is not None and not message.error():
                    key, value = message.key(), message.value()
                    if key is not None and value is not None:
                        latest[key.decode()] = value
                (at,) = consumer.position([TopicPartition(topic, partition)])
                if at.offset >= high:
                    break
                if time.monotonic() > deadline:
                    log.warning(
                        "models topic not read to its end in time; loading what was read",
                        extra={"partition": partition, "position": at.offset, "end": high},
                    )
                    break
    finally:
        consumer.close()
    return latest


def _watermarks(consumer: Consumer, where: TopicPartition, timeout_s: float) -> tuple[int, int]:
    """A partition's low and high watermarks, asked again on an error until `timeout_s` has
    passed: a topic just created answered NOT_LEADER_FOR_PARTITION for a while on a broker just
    started, though its metadata named the leader (librdkafka does not call that retriable)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            low, high = consumer.get_watermark_offsets(
                where, timeout=max(0.1, deadline - time.monotonic())
            )
            return int(low), int(high)
        except KafkaException:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def load_latest_snapshots(settings: Settings, processor: Processor) -> int:
    """Restore each campaign's newest valid snapshot into the processor; return how many.

    A snapshot that fails its version or checksum check is skipped with a warning: the worker
    then starts from scratch rather than from corrupt models. A snapshot of a campaign edited
    since carries over what its unchanged arms learned (CampaignRuntime.adopt, logged).
    """
    loaded = 0
    for campaign, data in read_latest_snapshots(settings).items():
        runtime = processor.runtimes.get(campaign)
        if runtime is None:
            continue
        if not take_snapshot(runtime, data, snapshot_key_bytes(settings), newer=False):
            continue
        loaded += 1
        processor.metrics.snapshots.labels(direction="loaded").inc()
        processor.metrics.model_version.labels(campaign=campaign).set(runtime.bandit.version)
    return loaded


def take_snapshot(runtime: CampaignRuntime, data: bytes, key: bytes | None, *, newer: bool) -> bool:
    """Continue `runtime` from a snapshot if it is at least as far along (`newer`: further).

    False, with a warning, for a snapshot that cannot be used (checksum, signature, a model that
    cannot follow the campaign's edits); one taken from a campaign edited since is logged with
    what carried over, so an operator sees that new arms start untrained.
    """
    name = runtime.campaign.name
    try:
        learned = ContextualBandit.restore(data, key=key)
        ahead = learned.version - runtime.bandit.version
        if ahead < 0 or (newer and ahead == 0):
            return False
        adoption = runtime.adopt(learned)
    except SnapshotError as exc:
        log.warning("skipping snapshot of %s: %s", name, exc, extra={"campaign": name})
        return False
    if adoption is not None:
        log.warning(
            "campaign %s changed since its snapshot (version %d): models of %d arms carried "
            "over, %d new arms start untrained, %d dropped; exploration as the file says now",
            name,
            learned.version,
            len(adoption.kept),
            len(adoption.new),
            len(adoption.dropped),
            extra={"campaign": name, "new_arms": adoption.new, "dropped_arms": adoption.dropped},
        )
    return True

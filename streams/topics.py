"""Kafka topics of Kairos: their specs, idempotent creation, and client settings shared by our tools."""

from __future__ import annotations

import concurrent.futures
import time
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ClusterMetadata,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from streams.settings import Settings

# Producers everywhere in Kairos (and upstream systems) must hash keys the way Faust/aiokafka and
# the Java client do (murmur2), or one customer's events and outcomes land on different partitions
# and the reward join misses. librdkafka's default (consistent_random, CRC32) differs.
PARTITIONER = "murmur2_random"


#: The worker's Faust tables (streams/app.py), each changelogged to Kafka.
TABLES = ("customers", "pending")


def changelog_topic(settings: Settings, table: str) -> str:
    """The changelog topic Faust names for a table of this app (``{app id}-{table}-changelog``)."""
    return f"{settings.app_id}-{table}-changelog"


@dataclass(frozen=True)
class TopicSpec:
    """A topic Kairos owns: name, partition count and topic-level configuration."""

    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """The topics a worker needs; all keyed by customer id except the compacted models topic.

    The tables' changelogs are here too, so that they exist before Faust starts. Left to Faust,
    a first start creates them while its consumer's metadata does not show them yet; the
    assignor then ignores them and the agent crashes on every record with "changelog topic has 0
    partitions", for good (seen in a CI run: a fresh worker that never decided anything).
    """
    p = settings.partitions
    names = settings.topics
    return [
        TopicSpec(names.events, p),
        TopicSpec(names.outcomes, p),
        TopicSpec(names.decisions, p),
        TopicSpec(names.rewards, p),
        # A dead letter carries the refused record base64-encoded (4/3 of its size): at the broker
        # default (1 MiB) a refused record near that size could not be dead-lettered, and the
        # worker, which loses nothing silently, stopped on it at every start.
        TopicSpec(names.dlq, p, {"max.message.bytes": str(MAX_RECORD_BYTES)}),
        TopicSpec(names.ticks, p, {"retention.ms": str(24 * 3600 * 1000)}),
        TopicSpec(
            names.models,
            1,
            {
                "cleanup.policy": "compact",
                "min.cleanable.dirty.ratio": "0.1",
                "segment.ms": "600000",
                # A model snapshot is one record; a factored model with scaled blocks is ~2 MB.
                "max.message.bytes": str(MAX_RECORD_BYTES),
            },
        ),
        *(
            TopicSpec(changelog_topic(settings, table), p, {"cleanup.policy": "compact"})
            for table in TABLES
        ),
    ]


class TopicSetupError(RuntimeError):
    """Kairos' topics cannot be listed or made as configured (no broker, a partition mismatch)."""


def broker_metadata(admin: AdminClient, settings: Settings, timeout_s: float) -> ClusterMetadata:
    """The cluster's metadata once a broker answers; TopicSetupError if none does within timeout_s.

    Asks in short attempts and serves the client's log queue between them, so the reason (say, a
    refused connection) is logged while the command waits, not after it gives up.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        try:
            return admin.list_topics(timeout=max(0.05, min(1.0, remaining)))
        except KafkaException as exc:
            admin.poll(0)
            if time.monotonic() >= deadline:
                raise TopicSetupError(
                    f"no answer from {settings.kafka_bootstrap} within {timeout_s:g} s "
                    f"(is the broker running?): {exc.args[0].str()}"
                ) from None


def existing_topics(settings: Settings, timeout_s: float = 30.0) -> dict[str, int | None]:
    """Each of Kairos' topics with its partition count on the broker, None if absent (creates none)."""
    admin = AdminClient(settings.confluent_config())
    metadata = broker_metadata(admin, settings, timeout_s)
    counts: dict[str, int | None] = {}
    for spec in topic_specs(settings):
        found = metadata.topics.get(spec.name)
        counts[spec.name] = None if found is None or found.error else len(found.partitions)
    return counts


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> dict[str, int]:
    """Create missing topics with their partition counts; return each topic's actual partition count.

    Existing topics keep their settings, except that a models topic made by an older Kairos gets
    its record size limit raised (see raise_record_limit); a partition count that differs from the
    configured one is reported by raising, because a silent mismatch breaks the co-partitioned
    reward join.
    """
    admin = AdminClient(settings.confluent_config())
    broker_metadata(admin, settings, timeout_s)
    specs = topic_specs(settings)
    new = [
        NewTopic(
            spec.name,
            num_partitions=spec.partitions,
            replication_factor=settings.replication_factor,
            config=spec.config,
        )
        for spec in specs
    ]
    for topic, future in admin.create_topics(new, operation_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            raise TopicSetupError(
                f"could not create topic {topic}: no answer from {settings.kafka_bootstrap} "
                f"within {timeout_s:g} s (is the broker running?)"
            ) from None
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise TopicSetupError(f"could not create topic {topic}: {error.str()}") from exc
    # Creation is acknowledged by the controller before every broker's metadata shows it.
    deadline = time.monotonic() + timeout_s
    while True:
        metadata = admin.list_topics(timeout=timeout_s)
        # Listed is not yet led: wait for every partition's leader too. (On a broker just
        # started a worker still met NOT_LEADER_FOR_PARTITION after this wait; what fixed its
        # start is the snapshot loader asking again, streams.model_store._watermarks.)
        missing = [
            s.name
            for s in specs
            if s.name not in metadata.topics
            or metadata.topics[s.name].error is not None
            or any(
                p.leader < 0 or p.error is not None
                for p in metadata.topics[s.name].partitions.values()
            )
        ]
        if not missing:
            break
        if time.monotonic() > deadline:
            raise TopicSetupError(f"topics not available after creation: {', '.join(missing)}")
        time.sleep(0.1)
    counts: dict[str, int] = {}
    for spec in specs:
        found = metadata.topics[spec.name]
        counts[spec.name] = len(found.partitions)
        keyed = spec.name != settings.topics.models
        if keyed and counts[spec.name] != settings.partitions:
            raise TopicSetupError(
                f"topic {spec.name} has {counts[spec.name]} partitions but KAIROS_PARTITIONS is "
                f"{settings.partitions}; keyed topics must agree for the co-partitioned join"
            )
    for topic in (settings.topics.models, settings.topics.dlq):
        raise_record_limit(admin, topic, MAX_RECORD_BYTES, timeout_s)
    return counts


def raise_record_limit(admin: AdminClient, topic: str, limit: int, timeout_s: float) -> bool:
    """Raise a topic's ``max.message.bytes`` to `limit` if lower; True if it was raised.

    Topics created before snapshots outgrew the broker default (1 MB) would refuse them, so a
    worker could never publish what it learned. Raising the limit is safe on a live topic.
    """
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    described = admin.describe_configs([resource])[resource].result(timeout=timeout_s)
    current = int(described["max.message.bytes"].value)
    if current >= limit:
        return False
    entry = ConfigEntry(
        "max.message.bytes", str(limit), incremental_operation=AlterConfigOpType.SET
    )
    resource.add_incremental_config(entry)
    admin.incremental_alter_configs([resource])[resource].result(timeout=timeout_s)
    return True


#: Largest record Kairos sends (model snapshots; the models topic allows it, see topic_specs).
MAX_RECORD_BYTES = 16 * 1024 * 1024


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Low-latency, idempotent confluent-kafka producer settings with the murmur2 partitioner."""
    config = settings.confluent_config()
    config.update(
        {
            "partitioner": PARTITIONER,
            "linger.ms": settings.linger_ms,
            "enable.idempotence": True,
            "acks": "all",
            "message.max.bytes": MAX_RECORD_BYTES,
            "compression.type": settings.producer_compression,
        }
    )
    config.update(overrides)
    return config


def consumer_config(settings: Settings, group_id: str, **overrides: Any) -> dict[str, Any]:
    """confluent-kafka consumer settings for tools that read Kairos topics (tail, export, tests)."""
    config = settings.confluent_config()
    config.update(
        {
            "group.id": group_id,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
            "session.timeout.ms": 10000,
        }
    )
    config.update(overrides)
    return config

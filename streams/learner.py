"""Learning across workers: a learner consumes rewards and publishes snapshots; workers follow them.

With one worker (``KAIROS_LEARNING=local``) the deciding models learn in process and this module
only publishes snapshots. With several workers, each worker sees the rewards of its own partitions
only; learning in each would split the models. So workers run ``KAIROS_LEARNING=remote``: they
decide but do not learn, and a ``ModelFollower`` thread swaps in every newer snapshot from the
compacted models topic. ``kairos learner`` is the single writer: it reads ``rewards.v1`` (all
partitions), updates one ContextualBandit per campaign, and publishes versioned snapshots.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence

from confluent_kafka import (
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from engine.campaign import Campaign
from engine.decide import CampaignRuntime
from schemas.codec import RecordError, decode_reward
from schemas.records import RewardRecord
from streams.metrics import WorkerMetrics
from streams.model_store import snapshot_key_bytes, take_snapshot
from streams.settings import Settings
from streams.topics import consumer_config, producer_config

log = logging.getLogger("kairos.learner")


class ModelFollower:
    """Background thread: apply each newer snapshot on the models topic to the worker's runtimes."""

    def __init__(
        self,
        settings: Settings,
        runtimes: dict[str, CampaignRuntime],
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.runtimes = runtimes
        self.metrics = metrics
        self.applied = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kairos-model-follower", daemon=True)

    def start(self) -> ModelFollower:
        """Start following from the end of the topic (the start-up load read what came before)."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and wait for it."""
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        consumer = Consumer(consumer_config(self.settings, f"{self.settings.app_id}-follower"))
        try:
            consumer.assign([TopicPartition(self.settings.topics.models, 0, OFFSET_END)])
            key = snapshot_key_bytes(self.settings)
            while not self._stop.is_set():
                message = consumer.poll(0.5)
                if message is None or message.error():
                    continue
                name = (message.key() or b"").decode()
                runtime = self.runtimes.get(name)
                if runtime is None or message.value() is None:
                    continue
                # one reference swap inside: decisions see the old models or the new
                if take_snapshot(runtime, message.value() or b"", key, newer=True):
                    self.applied += 1
                    if self.metrics is not None:
                        self.metrics.snapshots.labels(direction="loaded").inc()
                        version = runtime.bandit.version
                        self.metrics.model_version.labels(campaign=name).set(version)
        finally:
            consumer.close()


def run_learner(
    settings: Settings,
    campaigns: Sequence[Campaign],
    max_idle_s: float | None = None,
    stop: threading.Event | None = None,
) -> dict[str, int]:
    """Consume rewards, learn, publish snapshots every `snapshot_interval_s`; returns versions.

    Runs until interrupted, until `stop` is set (`kairos learner` sets it on SIGTERM), or until
    no reward arrived for `max_idle_s` seconds (tests, batch runs); then publishes what it learned
    since the last snapshot and commits, so a stopped learner leaves nothing to replay.
    Offsets are committed only after the snapshot that contains their learning is published, so a
    restarted learner replays at most one snapshot interval of rewards onto the last snapshot.
    """
    runtimes = {c.name: CampaignRuntime.from_campaign(c, settings.seed) for c in campaigns}
    key = snapshot_key_bytes(settings)
    consumer = Consumer(consumer_config(settings, f"{settings.app_id}-learner"))
    producer = Producer(producer_config(settings))
    _load_published(settings, runtimes)
    # What the loaded snapshots hold of rewards that workers learned themselves (local learning):
    # a learner taking over from them would otherwise learn those again, as many as the rewards
    # topic still holds (a deployment moving from one worker to several counted each twice).
    in_snapshot = {name: r.bandit.version for name, r in runtimes.items()}
    consumer.subscribe([settings.topics.rewards])
    last_publish = time.monotonic()
    last_reward = time.monotonic()
    published: dict[str, int] = {name: r.bandit.version for name, r in runtimes.items()}
    recent = RecentIds(RECENT_REWARDS)
    try:
        while (max_idle_s is None or time.monotonic() - last_reward < max_idle_s) and not (
            stop is not None and stop.is_set()
        ):
            message = consumer.poll(0.2)
            if message is not None and not message.error():
                try:
                    record = decode_reward(message.value() or b"")
                except RecordError as exc:
                    log.warning("skipping unreadable reward: %s", exc.reason)
                else:
                    runtime = runtimes.get(record.decision.campaign)
                    if (
                        runtime is not None
                        and recent.first_time(record.decision.decision_id)
                        and not in_snapshot_already(record, in_snapshot)
                    ):
                        runtime.learn(record)  # holdouts teach uplift baselines (engine.decide)
                        if log.isEnabledFor(logging.DEBUG):  # per reward: only when asked
                            log.debug(
                                "learned",
                                extra={
                                    "campaign": runtime.campaign.name,
                                    "version": runtime.bandit.version,
                                },
                            )
                last_reward = time.monotonic()
            elif message is not None:
                error = message.error()
                if error is not None and error.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", error)
            if time.monotonic() - last_publish >= settings.snapshot_interval_s:
                publish_newer(settings, producer, runtimes, published, key)
                _commit(consumer)
                last_publish = time.monotonic()
    except KeyboardInterrupt:
        pass
    finally:
        publish_newer(settings, producer, runtimes, published, key)
        _commit(consumer)
        consumer.close()
    return {name: r.bandit.version for name, r in runtimes.items()}


def in_snapshot_already(record: RewardRecord, in_snapshot: dict[str, int]) -> bool:
    """True for a reward a worker learned itself before the snapshot the learner started from."""
    learned = record.learned_version
    return learned is not None and learned <= in_snapshot.get(record.decision.campaign, 0)


#: Decision ids the learner remembers to drop repeated reward records (see RecentIds).
RECENT_REWARDS = 200_000


class RecentIds:
    """The last `size` ids seen: a worker at least once may send a reward record twice (it resends
    what a crash may have caught in its producer), and a decision must teach its model once."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._seen: OrderedDict[str, None] = OrderedDict()

    def first_time(self, item: str) -> bool:
        """True the first time `item` is seen among the last `size` ids."""
        if item in self._seen:
            self._seen.move_to_end(item)
            return False
        self._seen[item] = None
        if len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return True


def _commit(consumer: Consumer) -> None:
    """Commit consumed offsets (after the snapshot holding their learning is out)."""
    try:
        consumer.commit(asynchronous=False)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError._NO_OFFSET:  # nothing consumed since the last commit
            raise


def publish_newer(
    settings: Settings,
    producer: Producer,
    runtimes: dict[str, CampaignRuntime],
    published: dict[str, int],
    key: bytes | None,
) -> None:
    """Send each campaign's snapshot to the models topic if it learned since `published`."""
    for name, runtime in runtimes.items():
        if runtime.bandit.version > published.get(name, 0):
            producer.produce(
                settings.topics.models, key=name.encode(), value=runtime.bandit.snapshot(key=key)
            )
            published[name] = runtime.bandit.version
    producer.flush(10)


def _load_published(settings: Settings, runtimes: dict[str, CampaignRuntime]) -> None:
    """Start from the newest published snapshots so a restarted learner continues, not restarts."""
    from streams.model_store import read_latest_snapshots

    key = snapshot_key_bytes(settings)
    for name, data in read_latest_snapshots(settings).items():
        runtime = runtimes.get(name)
        if runtime is not None:
            take_snapshot(runtime, data, key, newer=False)

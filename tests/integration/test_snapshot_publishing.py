"""Model snapshots on the real broker: a refused snapshot is counted and retried, never fatal, and
an old models topic gets the record size limit that snapshots need."""

from __future__ import annotations

import time
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
)

from engine.campaign import builtin_campaign
from engine.decide import CampaignRuntime
from streams.model_store import read_latest_snapshots, snapshot_key_bytes
from streams.settings import Settings
from streams.topics import MAX_RECORD_BYTES, ensure_topics
from streams.worker_process import WorkerProcess
from tests.integration.kafka_io import TopicReader, event, produce
from tests.integration.metrics_scrape import scrape, total
from tests.integration.test_topology import outcome


def _record_limit(settings: Settings, limit: int | None = None, topic: str | None = None) -> int:
    """A topic's (the models topic's) max.message.bytes, after setting it to `limit` if given."""
    admin = AdminClient(settings.confluent_config())
    topic = topic or settings.topics.models
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    if limit is not None:
        resource.add_incremental_config(
            ConfigEntry(
                "max.message.bytes", str(limit), incremental_operation=AlterConfigOpType.SET
            )
        )
        admin.incremental_alter_configs([resource])[resource].result(timeout=10)
        resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
        # KRaft acknowledges the change before the broker's metadata shows it (seen: a describe
        # right after still read the old value, so the code under test saw no old limit).
        deadline = time.monotonic() + 10
        while _described_limit(admin, resource) != limit and time.monotonic() < deadline:
            time.sleep(0.05)
    return _described_limit(admin, resource)


def _described_limit(admin: AdminClient, resource: ConfigResource) -> int:
    described = admin.describe_configs([resource])[resource].result(timeout=10)
    return int(described["max.message.bytes"].value)


def _wait_for_metric(worker: WorkerProcess, name: str, minimum: float, **labels: str) -> float:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        value = total(scrape(worker.url), name, **labels)
        if value >= minimum:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{name}{labels} stayed below {minimum}")


def test_a_refused_snapshot_is_counted_and_retried_and_the_worker_keeps_deciding(
    settings: Settings, tmp_path: Path
) -> None:
    decisions = TopicReader(settings, settings.topics.decisions)
    customers = [f"refused-{i}" for i in range(6)]
    with WorkerProcess(settings, tmp_path / "worker.log") as worker:
        worker.wait_ready(60)
        # The broker now refuses any snapshot (an operator's mistake, or an old topic).
        assert _record_limit(settings, limit=200) == 200
        produce(settings, settings.topics.events, [event(c, "cart_abandoned") for c in customers])
        got = decisions.until(lambda r: len(r) >= len(customers))
        learnable = next(d for d in got if not d["holdout"])
        produce(settings, settings.topics.outcomes, [outcome(learnable, "converted", "c-1")])
        _wait_for_metric(worker, "kairos_snapshots_total", 1, direction="failed")
        # Still deciding after the refusal.
        produce(settings, settings.topics.events, [event("refused-after", "cart_abandoned")])
        decisions.until(lambda r: any(d["customer_id"] == "refused-after" for d in r))
        # Once the topic takes it again, the next interval publishes what was learned.
        _record_limit(settings, limit=MAX_RECORD_BYTES)
        _wait_for_metric(worker, "kairos_snapshots_total", 1, direction="published")
        assert worker.process is not None and worker.process.poll() is None  # still running
    decisions.close()
    assert read_latest_snapshots(settings).get("cart_abandonment") is not None


def test_starting_raises_an_old_models_and_dead_letter_topics_record_limit(
    settings: Settings,
) -> None:
    # the broker default, which refused 1.9 MB snapshots and 1.33 MB dead letters
    for topic in (settings.topics.models, settings.topics.dlq):
        _record_limit(settings, limit=1_048_588, topic=topic)
    ensure_topics(settings)
    for topic in (settings.topics.models, settings.topics.dlq):
        assert _record_limit(settings, topic=topic) == MAX_RECORD_BYTES


def test_the_loader_reads_a_transactionally_written_models_topic_to_its_end_without_waiting(
    settings: Settings,
) -> None:
    ensure_topics(settings)
    producer = Producer(
        {**settings.confluent_config(), "transactional.id": f"{settings.app_id}-models-writer"}
    )
    producer.init_transactions(30)
    for version in (b"v1", b"v2"):
        producer.begin_transaction()
        producer.produce(settings.topics.models, key=b"cart_abandonment", value=version)
        producer.commit_transaction(30)  # the topic ends with a commit marker, never delivered
    timeout_s = 30.0
    started = time.monotonic()
    latest = read_latest_snapshots(settings, timeout_s=timeout_s)
    # The newest committed value, found by reaching the end, not by running out of time (the
    # loader used to wait for a record at the marker's offset until its time-out).
    assert latest == {"cart_abandonment": b"v2"}
    assert time.monotonic() - started < timeout_s


def test_a_worker_started_on_an_edited_campaign_carries_its_snapshot_over_and_decides(
    settings: Settings, tmp_path: Path
) -> None:
    """The shipped cart campaign learned, then a channel was added to its file: the restarted
    worker loaded the old snapshot whole and failed every decision on the new arms."""
    learned = CampaignRuntime.from_campaign(builtin_campaign("cart_abandonment"), settings.seed)
    for n in range(30):
        arm = learned.campaign.action_ids[n % 5]
        learned.bandit.learn(arm, {"cart_value": n / 30.0}, float(n % 2))
    producer = Producer(settings.confluent_config())
    snapshot = learned.bandit.snapshot(key=snapshot_key_bytes(settings))
    producer.produce(settings.topics.models, key=b"cart_abandonment", value=snapshot)
    assert producer.flush(30) == 0
    shipped = Path(__file__).parents[2] / "engine" / "campaigns" / "cart_abandonment.toml"
    edited = shipped.read_text().replace(
        'channel = ["email", "sms", "push"]', 'channel = ["email", "sms", "push", "whatsapp"]'
    )
    assert "whatsapp" in edited
    (tmp_path / "campaigns").mkdir()
    (tmp_path / "campaigns" / "cart_abandonment.toml").write_text(edited)
    settings = settings.model_copy(update={"campaigns": [str(tmp_path / "campaigns")]})
    decisions = TopicReader(settings, settings.topics.decisions)
    customers = [f"edited-{i}" for i in range(20)]
    with WorkerProcess(settings, tmp_path / "worker.log") as worker:
        worker.wait_ready(60)
        produce(settings, settings.topics.events, [event(c, "cart_abandoned") for c in customers])
        got = decisions.until(lambda r: len(r) >= len(customers))
    assert sorted(d["customer_id"] for d in got) == sorted(customers)
    chosen = [d for d in got if not d["holdout"]]
    assert chosen and all(d["model_version"] == learned.bandit.version for d in chosen)
    assert all(any(a.startswith("whatsapp:") for a in d["probabilities"]) for d in chosen)
    log = (tmp_path / "worker.log").read_text()
    assert "changed since its snapshot" in log and "start untrained" in log

"""A real worker on the real broker: events in, decisions out; tables recover from the changelog."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

from streams.settings import Settings
from streams.worker_process import WorkerProcess
from tests.integration.kafka_io import TopicReader, event, produce
from tests.integration.metrics_scrape import scrape, total


def _customer(worker: WorkerProcess, customer_id: str) -> dict[str, object]:
    with urllib.request.urlopen(f"{worker.url}/customers/{customer_id}", timeout=5) as response:
        return dict(json.loads(response.read()))


def test_events_reach_the_worker_and_decisions_reach_the_action_topic(
    settings: Settings, tmp_path: Path
) -> None:
    customers = [f"c{i}" for i in range(12)]
    journeys = []
    for cid in customers:
        journeys.append(event(cid, "product_view", product_id="p1", category="shoes", price=80.0))
        journeys.append(event(cid, "cart_add", product_id="p1", category="shoes", price=80.0))
        journeys.append(event(cid, "cart_abandoned"))
    decisions = TopicReader(settings, settings.topics.decisions)
    with WorkerProcess(settings, tmp_path / "worker.log") as worker:
        worker.wait_ready(60)
        produce(settings, settings.topics.events, journeys)
        got = decisions.until(lambda r: len({d["customer_id"] for d in r}) >= len(customers))
        # Nothing more arrives for these triggers: one decision per explicit abandonment.
        decisions.poll(1.0)
        samples = scrape(worker.url)
    decisions.close()
    # Operators see every customer row and a drained consumer.
    assert total(samples, "kairos_table_rows", table="customers") == len(customers)
    assert total(samples, "kairos_consumer_lag", topic=settings.topics.events) == 0
    assert total(samples, "kairos_events_total") == len(journeys)
    by_customer = {d["customer_id"] for d in got}
    assert by_customer == set(customers)
    cart = [d for d in got if d["campaign"] == "cart_abandonment"]
    assert len(cart) == len(customers), [d["campaign"] for d in got]
    for decision in cart:
        assert decision["trigger_type"] == "cart_abandoned"
        assert 0.0 < decision["propensity"] <= 1.0
        assert abs(sum(decision["probabilities"].values()) - 1.0) < 1e-6 or decision["holdout"]


def test_a_worker_whose_rocksdb_is_deleted_recovers_its_table_from_the_changelog(
    settings: Settings, tmp_path: Path
) -> None:
    cid = "recovering-customer"
    first = [
        event(cid, "product_view", product_id="p9", category="bags", price=120.0),
        event(cid, "cart_add", product_id="p9", category="bags", price=120.0),
        event(cid, "purchase", product_id="p9", category="bags", order_value=120.0),
    ]
    decisions = TopicReader(settings, settings.topics.decisions)
    with WorkerProcess(settings, tmp_path / "worker-1.log") as worker:
        worker.wait_ready(60)
        produce(settings, settings.topics.events, first)
        # The first purchase triggers the cross-sell campaign once.
        decisions.until(lambda r: any(d["trigger_type"] == "first_purchase" for d in r))
        before = _customer(worker, cid)
    shutil.rmtree(settings.data_dir)
    assert not settings.data_dir.exists()
    with WorkerProcess(settings, tmp_path / "worker-2.log") as worker:
        worker.wait_ready(90)
        after = _customer(worker, cid)
        assert after["state"] == before["state"]
        # State, not luck: a second purchase is not a first purchase for the recovered customer.
        produce(
            settings,
            settings.topics.events,
            [event(cid, "purchase", product_id="p3", category="bags", order_value=40.0)],
        )
        decisions.poll(3.0)
        final = _customer(worker, cid)
    decisions.close()
    first_purchases = [d for d in decisions.records if d["trigger_type"] == "first_purchase"]
    assert len(first_purchases) == 1
    assert final["state"] != after["state"]


def test_topic_creation_makes_the_tables_changelogs_as_faust_names_them(
    settings: Settings,
) -> None:
    """The changelogs exist, compacted and co-partitioned, before the first worker starts.

    Left to Faust, a first start could create them too late for its own assignor: the agent then
    crashed on every record ("changelog topic has 0 partitions") and never decided anything.
    """
    from confluent_kafka.admin import AdminClient, ConfigResource

    from engine.campaign import builtin_campaign
    from streams.app import KairosApp
    from streams.topics import TABLES, changelog_topic

    kairos = KairosApp(settings, [builtin_campaign("cart_abandonment")])
    faust_names = {kairos.states.changelog_topic.get_topic_name()} | {
        kairos.pending.changelog_topic.get_topic_name()
    }
    assert faust_names == {changelog_topic(settings, table) for table in TABLES}
    admin = AdminClient(settings.confluent_config())
    topics = admin.list_topics(timeout=10).topics  # created by the settings fixture
    for name in faust_names:
        assert len(topics[name].partitions) == settings.partitions
        resource = ConfigResource(ConfigResource.Type.TOPIC, name)
        config = admin.describe_configs([resource])[resource].result(timeout=10)
        assert config["cleanup.policy"].value == "compact"

"""The streaming topology on the real broker: derived triggers, the reward join, crash recovery,
and several workers sharing models through the learner."""

from __future__ import annotations

import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from engine.bandit import ContextualBandit
from engine.campaign import builtin_campaign
from streams.demo import free_port
from streams.learner import run_learner
from streams.model_store import read_latest_snapshots
from streams.partitioning import partition_of
from streams.settings import Settings
from streams.topics import consumer_config, producer_config
from streams.worker_process import WorkerProcess
from tests.integration.kafka_io import TopicReader, event, produce
from tests.integration.metrics_scrape import scrape, total


def outcome(
    decision: dict[str, Any], kind: str, outcome_id: str, value: float = 1.0
) -> dict[str, Any]:
    return {
        "outcome_id": outcome_id,
        "customer_id": decision["customer_id"],
        "decision_id": decision["decision_id"],
        "type": kind,
        "ts": datetime.now(UTC).isoformat(),
        "value": value,
    }


def customer_view(worker: WorkerProcess, customer_id: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{worker.url}/customers/{customer_id}", timeout=5) as response:
        return dict(orjson.loads(response.read()))


def test_a_silent_cart_yields_exactly_one_abandonment_decision_after_the_timeout(
    settings: Settings, tmp_path: Path
) -> None:
    decisions = TopicReader(settings, settings.topics.decisions)
    with WorkerProcess(settings, tmp_path / "worker.log") as worker:
        worker.wait_ready(60)
        added_at = datetime.now(UTC)
        produce(
            settings,
            settings.topics.events,
            [
                event("quiet-1", "product_view", product_id="p1", category="shoes", price=90.0),
                event(
                    "quiet-1",
                    "cart_add",
                    product_id="p1",
                    category="shoes",
                    price=90.0,
                    ts=added_at.isoformat(),
                ),
            ],
        )
        got = decisions.until(lambda r: len(r) >= 1, timeout_s=30)
        # Let more than another timeout pass: the timer fired once and is gone.
        decisions.poll(settings.cart_abandon_after_s + 1.5)
    decisions.close()
    assert len(decisions.records) == 1, decisions.records
    decision = got[0]
    assert decision["trigger_type"] == "cart_abandoned"
    trigger_ts = datetime.fromisoformat(decision["trigger_ts"])
    expected_due = added_at + timedelta(seconds=settings.cart_abandon_after_s)
    assert abs((trigger_ts - expected_due).total_seconds()) <= 1.0
    assert datetime.fromisoformat(decision["decided_ts"]) >= trigger_ts


def test_a_cart_sent_without_a_key_to_another_partition_still_yields_its_one_decision(
    settings: Settings, tmp_path: Path
) -> None:
    """A keyless producer's record on the wrong partition is re-sent keyed, so the customer's
    state and timer live on their own partition (applied where it landed, the timer was lost)."""
    cid = "keyless-cart"
    away = (partition_of(cid.encode(), settings.partitions) + 1) % settings.partitions
    decisions = TopicReader(settings, settings.topics.decisions)
    with WorkerProcess(settings, tmp_path / "worker.log") as worker:
        worker.wait_ready(60)
        producer = Producer(producer_config(settings))
        sent: list[int] = []
        producer.produce(
            settings.topics.events,
            orjson.dumps(event(cid, "cart_add", product_id="p1", category="shoes", price=40.0)),
            partition=away,
            headers=[("traceparent", b"00-4bf92f3577b34da6-00f067aa0ba902b7-01")],
            on_delivery=lambda err, msg: sent.append(msg.offset()),
        )
        assert producer.flush(30) == 0
        got = decisions.until(lambda r: len(r) >= 1, timeout_s=30)
        decisions.poll(settings.cart_abandon_after_s + 1.5)
        assert customer_view(worker, cid)["state"]["recent_ids"] == 1  # its one event, found
        metrics = scrape(worker.url)
    decisions.close()
    assert len(decisions.records) == 1, decisions.records
    assert got[0]["customer_id"] == cid and got[0]["trigger_type"] == "cart_abandoned"
    assert total(metrics, "kairos_rerouted_total") == 1
    # The copy on the customer's own partition keeps the record's headers and says where it was.
    home = partition_of(cid.encode(), settings.partitions)
    reader = Consumer(consumer_config(settings, f"test-rerouted-{cid}"))
    reader.assign([TopicPartition(settings.topics.events, home, 0)])
    copy = None
    deadline = time.monotonic() + 30
    while copy is None and time.monotonic() < deadline:
        message = reader.poll(0.5)
        if message is not None and message.error() is None and message.key() == cid.encode():
            copy = message
    reader.close()
    assert copy is not None, "the rerouted copy was not found on the customer's partition"
    assert copy.headers() == [
        ("traceparent", b"00-4bf92f3577b34da6-00f067aa0ba902b7-01"),
        ("kairos-rerouted-from", f"{settings.topics.events}:{away}:{sent[0]}".encode()),
    ]


def test_an_outcome_naming_its_decision_yields_one_reward_and_a_newer_model(
    settings: Settings, tmp_path: Path
) -> None:
    decisions = TopicReader(settings, settings.topics.decisions)
    rewards = TopicReader(settings, settings.topics.rewards)
    customers = [f"buyer-{i}" for i in range(10)]
    with WorkerProcess(settings, tmp_path / "worker.log") as worker:
        worker.wait_ready(60)
        produce(settings, settings.topics.events, [event(c, "cart_abandoned") for c in customers])
        got = decisions.until(lambda r: len(r) >= len(customers))
        learnable = next(d for d in got if not d["holdout"])
        version_before = total(
            scrape(worker.url), "kairos_model_version", campaign="cart_abandonment"
        )
        converted = outcome(learnable, "converted", "conv-1", 1.0)
        # Sent twice (a producer retry upstream): still one reward.
        produce(settings, settings.topics.outcomes, [converted, converted])
        joined = rewards.until(lambda r: len(r) >= 1)
        rewards.poll(1.5)
        version_after = total(
            scrape(worker.url), "kairos_model_version", campaign="cart_abandonment"
        )
        snapshots = _wait_for_snapshot(settings, "cart_abandonment", minimum_version=1)
    decisions.close()
    rewards.close()
    assert len(rewards.records) == 1
    assert joined[0]["decision"]["decision_id"] == learnable["decision_id"]
    assert joined[0]["reward"] == pytest.approx(1.0)
    assert joined[0]["outcome_types"] == ["converted"]
    assert version_after == version_before + 1
    assert snapshots >= 1


def _wait_for_snapshot(settings: Settings, campaign: str, minimum_version: int) -> int:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        data = read_latest_snapshots(settings).get(campaign)
        if data is not None:
            version = ContextualBandit.restore(data).version
            if version >= minimum_version:
                return version
        time.sleep(0.3)
    raise AssertionError(f"no snapshot of {campaign} with version >= {minimum_version}")


def test_sigkill_mid_stream_loses_no_state_no_pending_decision_and_decides_each_trigger_once(
    settings: Settings, tmp_path: Path
) -> None:
    customers = [f"crash-{i:03d}" for i in range(150)]
    decisions = TopicReader(settings, settings.topics.decisions)
    # Phase 1: every customer abandons a cart; some decisions convert, so the model learns.
    worker = WorkerProcess(settings, tmp_path / "worker-1.log").start()
    worker.wait_ready(60)
    produce(settings, settings.topics.events, [event(c, "cart_abandoned") for c in customers])
    first = decisions.until(lambda r: len({d["customer_id"] for d in r}) >= len(customers))
    learnable = [d for d in first if not d["holdout"]][:20]
    produce(
        settings,
        settings.topics.outcomes,
        [outcome(d, "converted", f"conv-{d['decision_id']}") for d in learnable],
    )
    published = _wait_for_snapshot(settings, "cart_abandonment", minimum_version=len(learnable))
    # Phase 2: a stream of purchases is under way when the worker is killed.
    purchases = {c: 0 for c in customers}
    stream = []
    for round_ in range(6):
        for c in customers:
            stream.append(event(c, "purchase", order_value=10.0 + round_, product_id=f"p{round_}"))
            purchases[c] += 1
    sender = threading.Thread(target=produce, args=(settings, settings.topics.events, stream))
    sender.start()
    time.sleep(0.3)  # let part of the stream in; the kill must land mid-stream, not before it
    worker.kill()
    sender.join()
    # Phase 3: a new worker on the same tables finishes the stream.
    with WorkerProcess(settings, tmp_path / "worker-2.log") as again:
        again.wait_ready(60)
        restored = total(scrape(again.url), "kairos_model_version", campaign="cart_abandonment")
        deadline = time.monotonic() + 60
        while True:
            states = {c: customer_view(again, c) for c in customers}
            done = all(s["state"]["purchase_count"] == purchases[c] for c, s in states.items())
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        decisions.poll(2.0)
    decisions.close()
    # No customer state lost: every purchase counted exactly once.
    for c, view in states.items():
        assert view["state"]["purchase_count"] == purchases[c], (c, view["state"])
    # No pending decision lost: every unrewarded decision is still open after the crash.
    rewarded = {d["decision_id"] for d in learnable}
    for d in first:
        if d["decision_id"] not in rewarded and d["campaign"] == "cart_abandonment":
            open_ids = {o["decision_id"] for o in states[d["customer_id"]]["open_decisions"]}
            assert d["decision_id"] in open_ids
    # Each trigger decided once per campaign: one decision id, and any redelivery is identical.
    by_trigger: dict[tuple[str, str], set[str]] = {}
    bodies: dict[str, bytes] = {}
    for d in decisions.records:
        by_trigger.setdefault((d["campaign"], d["trigger_id"]), set()).add(d["decision_id"])
        body = orjson.dumps(d, option=orjson.OPT_SORT_KEYS)
        assert bodies.setdefault(d["decision_id"], body) == body
    assert all(len(ids) == 1 for ids in by_trigger.values())
    # Learning forgotten is at most what came after the last snapshot.
    assert restored >= published


def test_two_deciding_workers_follow_the_models_the_learner_publishes(
    settings: Settings, tmp_path: Path
) -> None:
    remote = settings.model_copy(update={"learning": "remote"})
    second = remote.model_copy(update={"web_port": free_port(), "data_dir": tmp_path / "tables-2"})
    customers = [f"shared-{i:02d}" for i in range(40)]
    decisions = TopicReader(remote, remote.topics.decisions)
    with (
        WorkerProcess(remote, tmp_path / "w1.log") as w1,
        WorkerProcess(second, tmp_path / "w2.log") as w2,
    ):
        w1.wait_ready(90)
        w2.wait_ready(90)
        produce(remote, remote.topics.events, [event(c, "cart_abandoned") for c in customers])
        got = decisions.until(lambda r: len(r) >= len(customers))
        sent = [d for d in got if not d["holdout"]][:12]
        produce(
            remote,
            remote.topics.outcomes,
            [outcome(d, "converted", f"o-{d['decision_id']}") for d in sent],
        )
        campaigns = [builtin_campaign(n) for n in ("cart_abandonment", "cross_sell", "win_back")]
        versions = run_learner(remote, campaigns, max_idle_s=4.0)
        assert versions["cart_abandonment"] == len(sent)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            seen = [
                total(scrape(w.url), "kairos_model_version", campaign="cart_abandonment")
                for w in (w1, w2)
            ]
            if seen == [len(sent), len(sent)]:
                break
            time.sleep(0.3)
        # Both workers decide with the learner's models; neither learned on its own.
        assert seen == [len(sent), len(sent)]
        before = len(decisions.records)
        produce(remote, remote.topics.events, [event(c, "cart_abandoned") for c in customers])
        later = decisions.until(lambda r: len(r) >= before + len(customers))[before:]
    decisions.close()
    learned = [d for d in later if d["campaign"] == "cart_abandonment" and d["reason"] == "policy"]
    assert learned and all(d["model_version"] == len(sent) for d in learned)


def test_a_learner_stopped_by_sigterm_publishes_what_it_learned_since_its_last_snapshot(
    settings: Settings, tmp_path: Path
) -> None:
    # No snapshot falls due in the test: only the one published on the way out can carry the
    # learning to the worker.
    remote = settings.model_copy(update={"learning": "remote", "snapshot_interval_s": 3600.0})
    customers = [f"term-{i:02d}" for i in range(20)]
    decisions = TopicReader(remote, remote.topics.decisions)
    with WorkerProcess(remote, tmp_path / "worker.log") as worker:
        worker.wait_ready(90)
        learner = WorkerProcess(
            remote.model_copy(update={"log_level": "debug"}), tmp_path / "learner.log", "learner"
        ).start()
        try:
            produce(remote, remote.topics.events, [event(c, "cart_abandoned") for c in customers])
            got = decisions.until(lambda r: len(r) >= len(customers))
            sent = [d for d in got if not d["holdout"] and d["campaign"] == "cart_abandonment"][:8]
            produce(
                remote,
                remote.topics.outcomes,
                [outcome(d, "converted", f"o-{d['decision_id']}") for d in sent],
            )
            # The learner logs each reward it learns (at debug): wait until it has them all.
            deadline = time.monotonic() + 60
            learned = 0
            while learned < len(sent) and time.monotonic() < deadline:
                learned = learner.log_path.read_text().count('"msg":"learned"')
                time.sleep(0.1)
            assert learned == len(sent), learner.log_tail()
        finally:
            code = learner.stop()
        assert code == 0, learner.log_tail()  # a clean exit, not killed by the signal
        assert f"cart_abandonment: model version {len(sent)}" in learner.log_path.read_text()
        deadline = time.monotonic() + 20
        seen = 0.0
        while seen != len(sent) and time.monotonic() < deadline:
            seen = total(scrape(worker.url), "kairos_model_version", campaign="cart_abandonment")
            time.sleep(0.3)
        assert seen == len(sent)
    decisions.close()


def test_a_learner_taking_over_from_a_local_worker_does_not_learn_its_rewards_again(
    settings: Settings, tmp_path: Path
) -> None:
    """Moving from one worker (local learning) to several and a learner: the learner loaded the
    worker's snapshot and learned the rewards in it again from the rewards topic (QA: model
    version 10 -> 20 on 10 rewards), counting each twice."""
    decisions = TopicReader(settings, settings.topics.decisions)
    rewards = TopicReader(settings, settings.topics.rewards)
    customers = [f"handover-{i:02d}" for i in range(30)]
    with WorkerProcess(settings, tmp_path / "local.log") as worker:
        worker.wait_ready(60)
        produce(settings, settings.topics.events, [event(c, "cart_abandoned") for c in customers])
        got = decisions.until(lambda r: len(r) >= len(customers))
        sent = [d for d in got if not d["holdout"]][:10]
        produce(
            settings,
            settings.topics.outcomes,
            [outcome(d, "converted", f"h-{d['decision_id']}") for d in sent],
        )
        joined = rewards.until(lambda r: len(r) >= len(sent))
        learned = _wait_for_snapshot(settings, "cart_abandonment", minimum_version=len(sent))
    decisions.close()
    rewards.close()
    assert learned == len(sent)
    assert sorted(r["learned_version"] for r in joined) == list(range(1, len(sent) + 1))
    remote = settings.model_copy(update={"learning": "remote"})
    campaigns = [builtin_campaign(n) for n in ("cart_abandonment", "cross_sell", "win_back")]
    assert run_learner(remote, campaigns, max_idle_s=3.0)["cart_abandonment"] == len(sent)

"""`kairos export` and `kairos evaluate` against the real broker's rewards topic."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import Producer
from typer.testing import CliRunner

from engine.campaign import NO_ACTION_ID, builtin_campaign
from engine.decide import build_bandit
from schemas.codec import decode_reward, encode
from schemas.records import Decision, RewardRecord
from streams.cli import app
from streams.settings import Settings
from streams.topics import producer_config

pytestmark = pytest.mark.integration

CAMPAIGN = builtin_campaign("cart_abandonment")


def logged_rewards(n: int, seed: int) -> list[RewardRecord]:
    """Decisions of an epsilon-greedy logger over the campaign's arms, with Bernoulli rewards."""
    rng = random.Random(seed)
    arms = list(CAMPAIGN.action_ids)
    start = datetime(2024, 5, 1, tzinfo=UTC)
    out = []
    for i in range(n):
        x = float(rng.random() < 0.5)
        holdout = i % 20 == 0
        if holdout:
            action, probabilities = NO_ACTION_ID, {NO_ACTION_ID: 1.0}
        else:
            best = arms[1] if x else arms[2]
            probabilities = {a: 0.5 / len(arms) + (0.5 if a == best else 0.0) for a in arms}
            action = rng.choices(arms, weights=[probabilities[a] for a in arms])[0]
        mean = 0.3 if action == (arms[1] if x else arms[2]) else 0.1
        ts = start + timedelta(seconds=60 * i)
        decision = Decision(
            decision_id=f"{i:032x}",
            customer_id=f"c{i % 37}",
            campaign=CAMPAIGN.name,
            action_id=action,
            action=CAMPAIGN.action(action).dimensions(),
            propensity=probabilities[action],
            probabilities=probabilities,
            scores={},
            features={"bias": 1.0, "x": x},
            model_version=i,
            explore=False,
            holdout=holdout,
            reason="holdout" if holdout else "policy",
            cost=CAMPAIGN.action(action).cost,
            trigger_id=f"t{i}",
            trigger_type="cart_abandoned",
            trigger_event_id=f"e{i}",
            trigger_ts=ts,
            decided_ts=ts,
            attribution_deadline=ts + timedelta(hours=2),
        )
        clicked = rng.random() < mean
        out.append(
            RewardRecord(
                decision=decision,
                reward=1.0 if clicked else 0.0,
                outcome_ids=[f"o{i}"] if clicked else [],
                outcome_types=["converted"] if clicked else [],
                expired=not clicked,
                joined_ts=ts + timedelta(minutes=30),
            )
        )
    return out


def env(settings: Settings) -> dict[str, str]:
    """The environment that points the CLI at the test's broker and topics."""
    return {
        "KAIROS_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "KAIROS_APP_ID": settings.app_id,
        "KAIROS_TOPICS__REWARDS": settings.topics.rewards,
        "KAIROS_TOPICS__MODELS": settings.topics.models,
        "KAIROS_CAMPAIGNS": "builtin:cart_abandonment",
    }


def test_export_then_evaluate(settings: Settings, tmp_path: Path) -> None:
    """Rewards produced to the topic come back in the export and feed every estimator."""
    records = logged_rewards(400, seed=7)
    producer = Producer(producer_config(settings))
    for record in records:
        producer.produce(
            settings.topics.rewards,
            key=record.decision.customer_id.encode(),
            value=encode(record),
        )
    assert producer.flush(30) == 0

    runner = CliRunner()
    out = tmp_path / "rewards.jsonl"
    result = runner.invoke(app, ["export", "-o", str(out)], env=env(settings))
    assert result.exit_code == 0, result.output
    assert "400 reward records" in result.output
    exported = [decode_reward(line) for line in out.read_bytes().splitlines()]
    assert sorted(r.decision.decision_id for r in exported) == sorted(
        r.decision.decision_id for r in records
    )
    assert exported[0] == next(
        r for r in records if r.decision.decision_id == exported[0].decision.decision_id
    )

    page = tmp_path / "report.html"
    result = runner.invoke(
        app,
        [
            *("evaluate", "-i", str(out), "--exploration", "kind=epsilon_greedy,epsilon=0.5"),
            *("--html", str(page), "--bootstrap", "200"),
        ],
        env=env(settings),
    )
    assert result.exit_code == 0, result.output
    for label in ("IPS", "SNIPS", "DM", "DR", "logged policy", "holdout", "bootstrap", "ESS"):
        assert label in result.output, label
    text = page.read_text()
    assert text.count("<svg") == 2 and "SNIPS" in text and "<script" not in text

    # straight from the topic, and with a fixed snapshot evaluated on every record
    snapshot = tmp_path / "model.snap"
    bandit = build_bandit(CAMPAIGN, seed=1)
    for record in records[:100]:
        if not record.decision.holdout:
            bandit.learn(record.decision.action_id, record.decision.features, record.reward)
    snapshot.write_bytes(bandit.snapshot())
    result = runner.invoke(app, ["evaluate", "--snapshot", str(snapshot)], env=env(settings))
    assert result.exit_code == 0, result.output
    assert "380 evaluated" in result.output and "20 holdout" in result.output
    # the value is said to be the logged reward, gross of costs, whatever a candidate's [reward]
    assert (
        "costs not subtracted" in result.output and "[reward] table is not applied" in result.output
    )


def test_evaluate_refuses_an_unknown_campaign(settings: Settings, tmp_path: Path) -> None:
    """An empty log or a campaign name not in it is an error, not a traceback."""
    out = tmp_path / "empty.jsonl"
    runner = CliRunner()
    result = runner.invoke(app, ["export", "-o", str(out)], env=env(settings))
    assert result.exit_code == 0 and out.read_bytes() == b""
    result = runner.invoke(app, ["evaluate", "-i", str(out)], env=env(settings))
    assert result.exit_code == 2


def test_learn_publishes_the_models_an_exported_log_teaches(
    settings: Settings, tmp_path: Path
) -> None:
    """`kairos learn` on an exported log: the published snapshot has learned the log's signal."""
    from engine.bandit import ContextualBandit
    from streams.model_store import read_latest_snapshots

    records = logged_rewards(400, seed=11)
    log = tmp_path / "legacy.jsonl"
    log.write_bytes(b"\n".join(encode(r) for r in records) + b"\n")
    result = CliRunner().invoke(app, ["learn", "-i", str(log)], env=env(settings))
    assert result.exit_code == 0, result.output
    assert "Read 400 reward records" in result.output
    snapshot = read_latest_snapshots(settings)[CAMPAIGN.name]
    bandit = ContextualBandit.restore(snapshot)
    # Every record teaches this uplift campaign (holdouts its no-action baseline).
    assert bandit.version == 400
    arms = list(CAMPAIGN.action_ids)
    for x, better, worse in ((1.0, arms[1], arms[2]), (0.0, arms[2], arms[1])):
        scores = bandit.scores({"bias": 1.0, "x": x})
        assert scores[better] > scores[worse], (x, scores)
    # A log of another campaign teaches nothing and says so.
    other = CliRunner().invoke(
        app,
        ["learn", "-i", str(log)],
        env={**env(settings), "KAIROS_CAMPAIGNS": "builtin:win_back"},
    )
    assert other.exit_code == 1 and "nothing learned" in other.output

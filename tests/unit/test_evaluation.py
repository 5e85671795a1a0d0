"""Off-policy estimators on synthetic logs whose true target value is known exactly."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.evaluation import (
    LoggedRecord,
    PolicyValueMonitor,
    effective_sample_size,
    evaluate,
    greedy_probability,
    mean_estimate,
    records_from_rewards,
)
from schemas.records import Decision, RewardRecord

ACTIONS = ("a", "b", "c")
CONTEXTS = 4
# Bernoulli reward means mu[x][a], logging policy b[x][a] and target policy pi[x][a].
MU = np.array([[0.1, 0.5, 0.3], [0.6, 0.2, 0.4], [0.3, 0.3, 0.8], [0.05, 0.15, 0.1]])
LOGGING = np.array([[0.5, 0.25, 0.25], [0.2, 0.6, 0.2], [0.6, 0.3, 0.1], [1 / 3, 1 / 3, 1 / 3]])
TARGET = np.array([[0.1, 0.8, 0.1], [0.7, 0.1, 0.2], [0.05, 0.05, 0.9], [0.2, 0.6, 0.2]])
TRUTH = float(np.mean(np.sum(TARGET * MU, axis=1)))  # contexts are uniform


def context(x: int) -> dict[str, float]:
    """One-hot context features: a per-action ridge on them is well specified."""
    return {f"c{i}": 1.0 if i == x else 0.0 for i in range(CONTEXTS)}


def target(features: Mapping[str, float], actions: Sequence[str]) -> dict[str, float]:
    """The target policy: a fixed distribution per context."""
    x = next(i for i in range(CONTEXTS) if features[f"c{i}"] == 1.0)
    return {a: float(TARGET[x, j]) for j, a in enumerate(ACTIONS)}


def simulate(n: int, seed: int) -> list[LoggedRecord]:
    """Log n decisions of the logging policy with Bernoulli rewards."""
    rng = np.random.default_rng(seed)
    xs = rng.integers(0, CONTEXTS, n)
    us = rng.random(n)
    rs = rng.random(n)
    out = []
    for x, u, r in zip(xs, us, rs, strict=True):
        j = int(np.searchsorted(np.cumsum(LOGGING[x]), u, side="right"))
        j = min(j, len(ACTIONS) - 1)
        out.append(
            LoggedRecord(
                features=context(int(x)),
                action=ACTIONS[j],
                propensity=float(LOGGING[x, j]),
                reward=1.0 if r < MU[x, j] else 0.0,
                actions=ACTIONS,
            )
        )
    return out


def population() -> list[LoggedRecord]:
    """Every (context, action, reward) in exact proportion: two contexts, quarter probabilities."""
    mu = {0: (0.25, 0.5, 0.75), 1: (1.0, 0.0, 0.5)}
    logging = {0: (0.5, 0.25, 0.25), 1: (0.25, 0.25, 0.5)}
    out = []
    for x in (0, 1):
        for j, a in enumerate(ACTIONS):
            n_xa = round(64 * logging[x][j])
            ones = round(n_xa * mu[x][j])
            for k in range(n_xa):
                out.append(
                    LoggedRecord(
                        features=context(x),
                        action=a,
                        propensity=logging[x][j],
                        reward=1.0 if k < ones else 0.0,
                        actions=ACTIONS,
                    )
                )
    return out


def test_ips_is_exact_on_the_population() -> None:
    """On the whole population (no sampling noise) IPS equals the true value exactly."""
    truth = float(np.mean(np.sum(TARGET[:2] * np.array([[0.25, 0.5, 0.75], [1.0, 0.0, 0.5]]), 1)))
    result = evaluate(population(), target, folds=1, l2=1e-6)
    assert result.estimates["ips"].value == pytest.approx(truth, abs=1e-12)
    # the saturated reward model is exact too, so DM and DR agree with the truth
    assert result.estimates["dm"].value == pytest.approx(truth, abs=1e-4)
    assert result.estimates["dr"].value == pytest.approx(truth, abs=1e-4)
    assert result.estimates["snips"].value == pytest.approx(truth, abs=1e-12)


def test_estimates_cover_the_truth_over_many_seeds() -> None:
    """95% normal intervals of IPS, SNIPS and DR cover the true value in >= 88% of 100 runs.

    With true coverage 0.95, fewer than 88 of 100 happens with probability < 0.5%.
    """
    runs = 100
    covered = dict.fromkeys(("ips", "snips", "dr"), 0)
    for seed in range(runs):
        result = evaluate(simulate(1000, seed), target, seed=seed)
        for name in covered:
            covered[name] += result.estimates[name].covers(TRUTH)
    for name, count in covered.items():
        assert count >= 88, (name, count)
    # DM's interval includes the model's fitting variance but not the ridge shrinkage bias
    dm = sum(
        evaluate(simulate(1000, s), target, seed=s).estimates["dm"].covers(TRUTH) for s in range(50)
    )
    assert dm >= 38, dm


def test_ips_is_unbiased_and_dr_has_less_variance() -> None:
    """The mean IPS over 300 runs is within 4 standard errors of the truth; DR varies less."""
    ips, dr, dm, snips = [], [], [], []
    for seed in range(300):
        result = evaluate(simulate(500, 10_000 + seed), target, seed=seed, l2=0.01)
        ips.append(result.estimates["ips"].value)
        dr.append(result.estimates["dr"].value)
        dm.append(result.estimates["dm"].value)
        snips.append(result.estimates["snips"].value)
    mean, sd = float(np.mean(ips)), float(np.std(ips, ddof=1))
    assert abs(mean - TRUTH) < 4 * sd / math.sqrt(len(ips))
    assert np.var(dr) < np.var(ips)
    # the well-specified model's estimate is close to the truth on average (small ridge bias)
    assert abs(float(np.mean(dm)) - TRUTH) < 0.01
    assert abs(float(np.mean(snips)) - TRUTH) < 0.01


def test_bootstrap_intervals_cover_too() -> None:
    """Percentile-bootstrap intervals are reported as such and cover in most runs."""
    covered = 0
    for seed in range(30):
        result = evaluate(simulate(800, 500 + seed), target, bootstrap=200, seed=seed)
        e = result.estimates["dr"]
        assert e.interval == "bootstrap"
        assert e.low <= e.value <= e.high
        covered += e.covers(TRUTH)
    assert covered >= 24  # P(< 24 of 30 | p = 0.95) < 0.2%


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0.01, 1.0), st.floats(-2.0, 3.0), st.sampled_from(ACTIONS)),
        min_size=2,
        max_size=40,
    )
)
def test_snips_stays_within_the_reward_range(rows: list[tuple[float, float, str]]) -> None:
    """SNIPS is a weighted mean of rewards: never outside [min reward, max reward]."""
    records = [
        LoggedRecord(
            features={"c0": 1.0, "c1": 0.0, "c2": 0.0, "c3": 0.0},
            action=a,
            propensity=p,
            reward=r,
            actions=ACTIONS,
        )
        for p, r, a in rows
    ]
    result = evaluate(records, target, folds=1)
    rewards = [r for _, r, _ in rows]
    snips = result.estimates["snips"].value
    if any(a == "b" for _, _, a in rows) or sum(w > 0 for w in result.weights):
        assert min(rewards) - 1e-9 <= snips <= max(rewards) + 1e-9


def test_effective_sample_size() -> None:
    """Kish's formula: n for equal weights, 1 for a single weight, (sum w)^2 / sum w^2."""
    assert effective_sample_size([2.0] * 10) == pytest.approx(10.0)
    assert effective_sample_size([0.0, 5.0, 0.0]) == pytest.approx(1.0)
    assert effective_sample_size([1.0, 2.0, 3.0]) == pytest.approx(36.0 / 14.0)
    assert effective_sample_size([]) == 0.0
    # on-policy evaluation: all weights 1, ESS = n, and the estimates are the mean reward
    records = simulate(200, 3)
    result = evaluate(records, lambda f, acts: target(f, acts), folds=1)
    assert 0 < result.ess <= result.n


def test_on_policy_weights_are_one() -> None:
    """Evaluating the logging policy itself: weights 1, ESS = n, IPS = SNIPS = the mean reward."""
    records = simulate(300, 4)

    def logging(features: Mapping[str, float], actions: Sequence[str]) -> dict[str, float]:
        x = next(i for i in range(CONTEXTS) if features[f"c{i}"] == 1.0)
        return {a: float(LOGGING[x, j]) for j, a in enumerate(ACTIONS)}

    result = evaluate(records, logging)
    mean = float(np.mean([r.reward for r in records]))
    assert result.ess == pytest.approx(300.0)
    assert result.estimates["ips"].value == pytest.approx(mean)
    assert result.estimates["snips"].value == pytest.approx(mean)
    assert result.logged.value == pytest.approx(mean)


def test_clipping_is_applied_and_reported() -> None:
    """Propensities below the floor are raised to it; how many is reported."""
    records = [
        LoggedRecord(context(0), "b", 0.001, 1.0, ACTIONS),
        LoggedRecord(context(0), "a", 0.5, 0.0, ACTIONS),
        LoggedRecord(context(1), "a", 0.2, 1.0, ACTIONS),
    ]
    plain = evaluate(records, target, folds=1)
    clipped = evaluate(records, target, folds=1, clip=0.05)
    assert plain.n_clipped == 0 and clipped.n_clipped == 1
    assert plain.max_weight == pytest.approx(0.8 / 0.001)
    assert clipped.max_weight == pytest.approx(0.8 / 0.05)
    assert clipped.min_propensity == pytest.approx(0.001)
    with pytest.raises(ValueError):
        evaluate([LoggedRecord(context(0), "a", 0.0, 1.0, ACTIONS)], target)
    assert evaluate([LoggedRecord(context(0), "a", 0.0, 1.0, ACTIONS)], target, clip=0.1).n == 1


def test_holdout_is_reported_apart_and_bad_targets_refused() -> None:
    """Holdout records give their own mean and stay out of the estimates."""
    records = [*simulate(50, 5), LoggedRecord(context(0), "a", 1.0, 1.0, ("a",), holdout=True)]
    result = evaluate(records, target)
    assert result.n == 50
    assert result.holdout is not None and result.holdout.value == 1.0 and result.holdout.n == 1
    with pytest.raises(ValueError, match="sum to 1"):
        evaluate(records, lambda f, acts: {"a": 0.5})
    with pytest.raises(ValueError):
        evaluate([records[-1]], target)


def test_mean_estimate_interval() -> None:
    """The on-policy mean has a normal interval of the standard error."""
    e = mean_estimate("x", [0.0, 1.0] * 50)
    assert e.value == 0.5
    assert e.std_error == pytest.approx(math.sqrt(0.25 * 100 / 99) / 10)
    assert e.low < 0.5 < e.high


def _decision(
    action: str, propensity: float, scores: dict[str, float], holdout: bool = False
) -> Decision:
    now = datetime(2024, 5, 1, tzinfo=UTC)
    return Decision(
        decision_id="d" * 32,
        customer_id="c1",
        campaign="cart_abandonment",
        action_id=action,
        action={"channel": "email"},
        propensity=propensity,
        probabilities={a: propensity if a == action else 0.0 for a in scores} or {action: 1.0},
        scores=scores,
        features={"bias": 1.0, "recency": 0.5},
        model_version=3,
        explore=False,
        holdout=holdout,
        reason="holdout" if holdout else "policy",
        cost=0.0,
        trigger_id="t1",
        trigger_type="cart_abandoned",
        trigger_event_id="e1",
        trigger_ts=now,
        decided_ts=now,
        attribution_deadline=now + timedelta(hours=2),
    )


def _reward(decision: Decision, reward: float) -> RewardRecord:
    return RewardRecord(
        decision=decision,
        reward=reward,
        outcome_ids=[],
        outcome_types=[],
        expired=reward == 0.0,
        joined_ts=decision.decided_ts,
    )


def test_monitor_estimates_the_greedy_policy() -> None:
    """The running SNIPS weights greedy picks by 1/p and ignores explored picks and holdout."""
    monitor = PolicyValueMonitor(half_life=None)
    assert math.isnan(monitor.snips) and monitor.ess == 0.0
    scores = {"no_action": 0.0, "email": 0.3, "sms": 0.1}
    monitor.update(_reward(_decision("email", 0.8, scores), 1.0))  # greedy, w = 1.25
    monitor.update(_reward(_decision("email", 0.8, scores), 0.0))  # greedy, w = 1.25
    monitor.update(_reward(_decision("sms", 0.1, scores), 1.0))  # explored, w = 0
    monitor.update(_reward(_decision("no_action", 1.0, {}, holdout=True), 5.0))  # skipped
    assert monitor.count == 3
    assert monitor.snips == pytest.approx(0.5)
    assert monitor.min_propensity == pytest.approx(0.1)
    assert monitor.ess == pytest.approx(2.0)
    assert greedy_probability(_decision("no_action", 1.0, {})) == 1.0
    ties = {"email": 0.3, "sms": 0.3}
    assert greedy_probability(_decision("sms", 0.5, ties)) == 0.5


def test_monitor_forgets_with_a_half_life() -> None:
    """With a half-life the estimate follows recent rewards."""
    monitor = PolicyValueMonitor(half_life=10.0)
    scores = {"email": 1.0}
    for _ in range(200):
        monitor.update(_reward(_decision("email", 1.0, scores), 0.0))
    for _ in range(50):
        monitor.update(_reward(_decision("email", 1.0, scores), 1.0))
    assert monitor.snips > 0.95
    assert monitor.ess < 40  # about 2 * half_life / ln 2 ... bounded well below 250
    with pytest.raises(ValueError):
        PolicyValueMonitor(half_life=0.0)


def test_records_from_rewards_keep_the_logged_support() -> None:
    """Reward records map to logged records with the decision's eligible actions."""
    scores = {"no_action": 0.0, "email": 0.3}
    d = _decision("email", 0.9, scores)
    records = records_from_rewards([_reward(d, 1.0)], campaign="cart_abandonment")
    assert records[0].actions == ("no_action", "email")
    assert records[0].propensity == 0.9 and records[0].reward == 1.0
    assert records_from_rewards([_reward(d, 1.0)], campaign="other") == []

"""Off-policy estimates on simulated Kairos logs against the simulator's exact values.

The in-process simulator (engine.simulator) runs Kairos (squarecb, uplift) in the closed loop;
a recording wrapper keeps each decision's exact expected reward of every allowed action (the
`values` the loop hands to policies, net of cost, plus the cost back) and the joined reward
records. A target policy's true value on the logged contexts is then exact:
mean over records of sum_a pi(a|x) E[reward | x, a]. Per seed, each estimator's 95% interval
either covers it or not; the assertions are on the share of seeds that cover (deterministic).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from functools import cache

import pytest

from engine.campaign import NO_ACTION_ID, ExplorationSpec
from engine.evaluation import Evaluation, TargetPolicy, evaluate, records_from_rewards
from engine.simulator.baselines import KairosPolicy, Options
from engine.simulator.campaign import simulation_campaign
from engine.simulator.loop import SimConfig, simulate
from engine.state import CustomerState
from schemas.records import Decision, RewardRecord, Trigger

SEEDS = (0, 1, 2, 3, 4)
DECISIONS = 2000
# The logger these thresholds were set on: the simulator's campaign with Kairos' default model
# and exploration (squarecb, gamma 30, per-arm ridge on every feature). The campaign's own
# settings are greedier (gamma 100, factored model): uniform targets get far less support there.
CAMPAIGN = replace(
    simulation_campaign(),
    model="default",
    model_features=(),
    exploration=ExplorationSpec("squarecb", {}),
)
COST = {a.id: a.cost for a in CAMPAIGN.actions}


class Recording:
    """Kairos, keeping every decision's exact expected reward per allowed action and its reward."""

    def __init__(self, seed: int) -> None:
        """Wrap a fresh Kairos policy."""
        self.inner = KairosPolicy(CAMPAIGN, seed)
        self.name = self.inner.name
        self.truth: dict[str, dict[str, float]] = {}
        self.records: list[RewardRecord] = []

    def decide(
        self,
        state: CustomerState,
        trigger: Trigger,
        now: datetime,
        options: Options,
        values: Mapping[str, float],
    ) -> Decision:
        """Decide as Kairos; keep the exact gross expected reward (net value + cost) per action."""
        decision = self.inner.decide(state, trigger, now, options, values)
        self.truth[decision.decision_id] = {a: v + COST[a] for a, v in values.items()}
        return decision

    def learn(self, record: RewardRecord) -> None:
        """Keep the joined reward, then learn as Kairos."""
        self.records.append(record)
        self.inner.learn(record)


def no_action(features: Mapping[str, float], actions: Sequence[str]) -> Mapping[str, float]:
    """Never send (no-action is among every logged decision's actions)."""
    return {NO_ACTION_ID: 1.0}


def uniform(features: Mapping[str, float], actions: Sequence[str]) -> Mapping[str, float]:
    """Uniformly random over the decision's eligible actions."""
    return dict.fromkeys(actions, 1.0 / len(actions))


def greedy(records: Sequence[RewardRecord]) -> TargetPolicy:
    """The greedy policy of the logged scores (ties split), looked up by the features' identity."""
    scores = {id(r.decision.features): r.decision.scores for r in records}

    def policy(features: Mapping[str, float], actions: Sequence[str]) -> Mapping[str, float]:
        s = {a: scores[id(features)].get(a, float("-inf")) for a in actions}
        best = max(s.values())
        top = [a for a in actions if s[a] == best]
        return dict.fromkeys(top, 1.0 / len(top))

    return policy


@cache
def simulated(seed: int) -> tuple[Recording, list[RewardRecord]]:
    """One seeded closed-loop run: the recorder and its closed, non-holdout reward records."""
    recorder = Recording(seed)
    simulate(CAMPAIGN, recorder, SimConfig(customers=500, decisions=DECISIONS, seed=seed))
    return recorder, [r for r in recorder.records if not r.decision.holdout]


def true_value(recorder: Recording, records: Sequence[RewardRecord], target: TargetPolicy) -> float:
    """The target's exact expected reward averaged over the logged contexts."""
    total = 0.0
    for r in records:
        d = r.decision
        truth = recorder.truth[d.decision_id]
        total += sum(p * truth[a] for a, p in target(d.features, tuple(d.probabilities)).items())
    return total / len(records)


@cache
def outcome(seed: int, target_name: str) -> tuple[float, Evaluation]:
    """(truth, evaluation) of a named target policy on one seed's log."""
    recorder, records = simulated(seed)
    target = {"no_action": no_action, "uniform": uniform}.get(target_name) or greedy(records)
    assert all(NO_ACTION_ID in r.decision.probabilities for r in records if r.decision.scores)
    logged = records_from_rewards(recorder.records)  # holdout records: reported apart
    return true_value(recorder, records, target), evaluate(logged, target)


def covered(target_name: str, estimator: str) -> int:
    """How many seeds' intervals of this estimator contain the target's true value."""
    return sum(
        outcome(seed, target_name)[1].estimates[estimator].covers(outcome(seed, target_name)[0])
        for seed in SEEDS
    )


# Uniform and greedy are well supported by the logger (effective sample sizes ~100 and
# ~1,000 of ~1,800 records): their normal 95% intervals should cover at a near-nominal rate,
# so at least 4 of 5 seeds (P >= 0.97 at exactly 95% coverage). Observed: 5 of 5 for each.
# DM is not asserted: its per-action ridge is biased on these adaptive logs (uniform: 0 of 5).
@pytest.mark.parametrize(
    ("target_name", "estimator", "at_least"),
    [
        ("uniform", "ips", 4),
        ("uniform", "snips", 4),
        ("uniform", "dr", 4),
        ("greedy", "ips", 4),
        ("greedy", "snips", 4),
        ("greedy", "dr", 4),
    ],
)
def test_intervals_cover_the_simulators_true_value(
    target_name: str, estimator: str, at_least: int
) -> None:
    """Over the fixed seeds, the estimator's interval contains the exact value often enough."""
    hits = covered(target_name, estimator)
    report = [
        (round(outcome(s, target_name)[0], 4), outcome(s, target_name)[1].estimates[estimator])
        for s in SEEDS
    ]
    assert hits >= at_least, report


def test_always_no_action_is_flagged_and_the_holdout_measures_it() -> None:
    """No-action is barely explored (ESS < 20); the holdout's interval covers its true value.

    squarecb gives no-action a propensity ~0.001 once the model prefers sending, so the IPS,
    SNIPS and DR intervals of always-no-action are unreliable (observed coverage 2, 2 and 4 of
    5): the report's ESS says so, and the random holdout group is the estimate to use.
    """
    hits = 0
    for seed in SEEDS:
        recorder, _ = simulated(seed)
        ev = outcome(seed, "no_action")[1]
        assert ev.ess < 20.0, (seed, ev.ess)
        held = [r for r in recorder.records if r.decision.holdout]
        truth = sum(recorder.truth[r.decision.decision_id][NO_ACTION_ID] for r in held)
        assert ev.holdout is not None and ev.holdout.n == len(held)
        hits += ev.holdout.covers(truth / len(held))
    assert hits >= 4


def test_the_logged_policy_value_matches_the_truth_of_its_choices() -> None:
    """On-policy sanity: the mean logged reward's interval covers the chosen actions' exact mean."""
    hits = 0
    for seed in SEEDS:
        recorder, records = simulated(seed)
        truth = sum(recorder.truth[r.decision.decision_id][r.decision.action_id] for r in records)
        ev = outcome(seed, "uniform")[1]
        hits += ev.logged.covers(truth / len(records))
    assert hits >= 4


def test_the_estimates_are_informative() -> None:
    """The intervals are not vacuous: supported targets' SNIPS/DR widths stay below 0.3."""
    for seed in SEEDS:
        for name in ("uniform", "greedy"):
            for estimator in ("snips", "dr"):
                e = outcome(seed, name)[1].estimates[estimator]
                assert e.high - e.low < 0.3, (seed, name, e)

"""Kairos against every baseline on the same customers and seed, in process.

The best single action is what a perfect A/B test would pick: a separate exploration run (uniformly
random actions, on another population drawn from the same personas, seed + 10,000) ranks every
action by its exact mean expected net reward over no-action on the decisions where it was allowed;
the evaluation then always sends the top one (the next allowed of the ranking when it is not).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Final

from engine.campaign import NO_ACTION_ID, Campaign
from engine.simulator.baselines import (
    FixedActionPolicy,
    KairosPolicy,
    NoActionPolicy,
    Options,
    OraclePolicy,
    Policy,
    RandomPolicy,
    RiverBanditPolicy,
    SegmentRulesPolicy,
)
from engine.simulator.loop import Run, SimConfig, simulate
from engine.state import CustomerState
from schemas.records import Decision, Trigger

__all__ = ["POLICY_NAMES", "best_single_ranking", "build_policy", "run_policy"]

#: Policies `kairos simulate` knows, in report order.
POLICY_NAMES: Final[tuple[str, ...]] = (
    "kairos",
    "oracle",
    "best_single",
    "segment_rules",
    "river",
    "random",
    "no_action",
)
EXPLORATION_SEED_OFFSET: Final[int] = 10_000


class _RankingRandom(RandomPolicy):
    """Random decisions that also add up every allowed action's exact value over no-action."""

    name = "exploration"

    def __init__(self, campaign: Campaign, seed: int = 0) -> None:
        """Start the tallies."""
        super().__init__(campaign, seed)
        self.sums: dict[str, float] = dict.fromkeys(campaign.action_ids, 0.0)
        self.counts: dict[str, int] = dict.fromkeys(campaign.action_ids, 0)

    def decide(
        self,
        state: CustomerState,
        trigger: Trigger,
        now: datetime,
        options: Options,
        values: Mapping[str, float],
    ) -> Decision:
        """Tally, then decide at random."""
        if options.reason == "policy":
            for action_id in options.allowed:
                self.sums[action_id] += values[action_id] - values[NO_ACTION_ID]
                self.counts[action_id] += 1
        return super().decide(state, trigger, now, options, values)


def best_single_ranking(
    campaign: Campaign, config: SimConfig, decisions: int = 20_000
) -> list[str]:
    """Actions by mean exact incremental value on a separate uniformly random exploration run."""
    explorer = _RankingRandom(campaign, config.seed + EXPLORATION_SEED_OFFSET)
    exploration = replace(
        config,
        seed=config.seed + EXPLORATION_SEED_OFFSET,
        decisions=min(decisions, config.decisions),
    )
    simulate(campaign, explorer, exploration)
    means = {
        a: explorer.sums[a] / explorer.counts[a]
        for a in campaign.action_ids
        if explorer.counts[a] > 0 and a != NO_ACTION_ID
    }
    ranked = sorted(means, key=lambda a: -means[a])
    return [a for a in ranked if means[a] > 0.0] or [NO_ACTION_ID]


def build_policy(name: str, campaign: Campaign, config: SimConfig) -> Policy:
    """Make one of POLICY_NAMES for this campaign and seed."""
    seed = config.seed
    if name == "kairos":
        return KairosPolicy(campaign, seed)
    if name == "oracle":
        return OraclePolicy(campaign, seed)
    if name == "best_single":
        ranking = best_single_ranking(campaign, config)
        return FixedActionPolicy(campaign, ranking, seed)
    if name == "segment_rules":
        return SegmentRulesPolicy(campaign, seed)
    if name == "river":
        return RiverBanditPolicy(campaign, seed)
    if name == "random":
        return RandomPolicy(campaign, seed)
    if name == "no_action":
        return NoActionPolicy(campaign, seed)
    raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICY_NAMES)}")


def run_policy(
    name: str,
    campaign: Campaign,
    config: SimConfig,
    progress: Callable[[int, float], None] | None = None,
) -> Run:
    """Build and run one policy through the closed loop."""
    return simulate(campaign, build_policy(name, campaign, config), config, progress)


def run_all(
    campaign: Campaign,
    config: SimConfig,
    names: Sequence[str] = POLICY_NAMES,
) -> list[Run]:
    """Run several policies one after the other on the same customers and seed."""
    return [run_policy(name, campaign, config) for name in names]

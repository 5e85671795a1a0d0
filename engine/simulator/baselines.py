"""The policies the simulation compares: Kairos itself and the baselines it must beat.

Every policy decides through the same steps as `engine.decide` (features, eligibility,
guardrails, holdout) -- Kairos by calling `CampaignRuntime.decide` itself, the baselines by
choosing among the same allowed actions (`Options`). Only the choice among allowed actions differs.

- `KairosPolicy`: the campaign's contextual bandit (CampaignRuntime.decide / learn).
- `RandomPolicy`: uniform over the allowed actions.
- `FixedActionPolicy`: always one action (the best single action, as an A/B test would pick it);
  when it is not allowed, the next one of its ranking that is.
- `SegmentRulesPolicy`: hand-written marketer rules on tier, order value and trigger.
- `RiverBanditPolicy`: a non-contextual bandit from river.bandit over the arms (net reward).
- `NoActionPolicy`: never sends anything.
- `OraclePolicy`: knows the hidden expected rewards and takes the best allowed action (myopic).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from engine.campaign import NO_ACTION_ID, Campaign
from engine.decide import CampaignRuntime, decision_id, decision_rng
from engine.features import features as compute_features
from engine.features import model_view
from engine.guardrails import apply_guardrails, in_holdout, send_time
from engine.rewards import attribution_deadline
from engine.state import CustomerState
from schemas.records import Decision, RewardRecord, Trigger

__all__ = [
    "FixedActionPolicy",
    "KairosPolicy",
    "NoActionPolicy",
    "Options",
    "OraclePolicy",
    "Policy",
    "RandomPolicy",
    "RiverBanditPolicy",
    "SegmentRulesPolicy",
    "make_decision",
    "options_for",
]


@dataclass(frozen=True, slots=True)
class Options:
    """What a decision may choose from: the steps of engine.decide before the bandit."""

    raw: dict[str, float]
    """Every feature, raw ones included (eligibility rules and hand-written rules read these)."""
    context: dict[str, float]
    """`campaign.model_context(model_view(raw))`: what models see and learn from."""
    allowed: tuple[str, ...]
    """Eligible actions the guardrails left (no-action always among them)."""
    holdout: bool
    reason: str
    """Why only no-action is left, else "policy"."""


def options_for(
    campaign: Campaign, state: CustomerState, trigger: Trigger, now: datetime
) -> Options:
    """Features, eligibility, guardrails and holdout, exactly as engine.decide computes them."""
    raw = compute_features(state, trigger, now)
    eligible, _ = campaign.eligibility(raw)
    rails = apply_guardrails(
        campaign,
        eligible,
        state.sent,
        now,
        state.timezone,
        last_sent=state.last_action,
        unsubscribed=state.unsubscribed,
    )
    holdout = in_holdout(trigger.customer_id, campaign)
    if holdout:
        return Options(
            raw, campaign.model_context(model_view(raw)), (NO_ACTION_ID,), True, "holdout"
        )
    if rails.allowed == (NO_ACTION_ID,):
        guardrail = rails.main_reason()
        reason = "no_eligible_action" if guardrail is None else f"guardrail:{guardrail}"
        return Options(raw, campaign.model_context(model_view(raw)), (NO_ACTION_ID,), False, reason)
    return Options(raw, campaign.model_context(model_view(raw)), rails.allowed, False, "policy")


def make_decision(
    campaign: Campaign,
    state: CustomerState,
    trigger: Trigger,
    now: datetime,
    options: Options,
    action_id: str,
    probabilities: Mapping[str, float],
    explore: bool = False,
) -> Decision:
    """A Decision record for a baseline's choice, shaped like the ones engine.decide makes."""
    action = campaign.action(action_id)
    now = now.astimezone(UTC)
    sent_at = send_time(campaign, action, now, state.timezone)
    return Decision(
        decision_id=decision_id(campaign.name, trigger.trigger_id),
        customer_id=trigger.customer_id,
        campaign=campaign.name,
        action_id=action.id,
        action=action.dimensions(),
        propensity=float(probabilities.get(action_id, 1.0)),
        probabilities=dict(probabilities),
        scores={},
        features=options.context,
        model_version=0,
        explore=explore,
        holdout=options.holdout,
        reason=options.reason,
        cost=action.cost,
        trigger_id=trigger.trigger_id,
        trigger_type=trigger.type,
        trigger_event_id=trigger.source_event_id,
        trigger_ts=trigger.ts,
        decided_ts=now,
        attribution_deadline=attribution_deadline(now, campaign, sent_at),
    )


class Policy(Protocol):
    """Something that decides for a trigger and may learn from the joined reward."""

    name: str

    def decide(
        self,
        state: CustomerState,
        trigger: Trigger,
        now: datetime,
        options: Options,
        values: Mapping[str, float],
    ) -> Decision:
        """Choose among `options.allowed`; `values` (hidden net expected rewards) is for the oracle."""
        ...

    def learn(self, record: RewardRecord) -> None:
        """Learn from a decision's reward once its attribution window closed."""
        ...


class _Baseline:
    """Shared plumbing: forced no-action, Decision building, no learning."""

    name = "baseline"

    def __init__(self, campaign: Campaign, seed: int = 0) -> None:
        """Keep the campaign and the seed of the per-decision random draws."""
        self.campaign = campaign
        self.seed = seed

    def decide(
        self,
        state: CustomerState,
        trigger: Trigger,
        now: datetime,
        options: Options,
        values: Mapping[str, float],
    ) -> Decision:
        """Forced no-action when nothing else is allowed, else `pick`."""
        if options.allowed == (NO_ACTION_ID,):
            return make_decision(
                self.campaign, state, trigger, now, options, NO_ACTION_ID, {NO_ACTION_ID: 1.0}
            )
        rng = decision_rng(self.seed, decision_id(self.campaign.name, trigger.trigger_id))
        action_id, probabilities = self.pick(options, values, rng)
        return make_decision(self.campaign, state, trigger, now, options, action_id, probabilities)

    def pick(
        self, options: Options, values: Mapping[str, float], rng: random.Random
    ) -> tuple[str, dict[str, float]]:
        """Choose an allowed action; return it with the probabilities it was drawn with."""
        raise NotImplementedError

    def learn(self, record: RewardRecord) -> None:
        """Baselines do not learn unless they say so."""


class KairosPolicy:
    """Kairos: the campaign's CampaignRuntime, deciding and learning as the worker does."""

    def __init__(self, campaign: Campaign, seed: int = 0, name: str = "Kairos") -> None:
        """Build the runtime with a fresh bandit."""
        self.name = name
        self.runtime = CampaignRuntime.from_campaign(campaign, seed)

    def decide(
        self,
        state: CustomerState,
        trigger: Trigger,
        now: datetime,
        options: Options,
        values: Mapping[str, float],
    ) -> Decision:
        """CampaignRuntime.decide (the options are recomputed inside, the same way)."""
        return self.runtime.decide(state, trigger, now)

    def learn(self, record: RewardRecord) -> None:
        """CampaignRuntime.learn (holdout ignored)."""
        self.runtime.learn(record)


class RandomPolicy(_Baseline):
    """Uniformly random among the allowed actions."""

    name = "random"

    def pick(
        self, options: Options, values: Mapping[str, float], rng: random.Random
    ) -> tuple[str, dict[str, float]]:
        """Uniform draw."""
        p = 1.0 / len(options.allowed)
        return rng.choice(options.allowed), dict.fromkeys(options.allowed, p)


class NoActionPolicy(_Baseline):
    """Never send anything: the floor every lift is measured from."""

    name = "no action"

    def pick(
        self, options: Options, values: Mapping[str, float], rng: random.Random
    ) -> tuple[str, dict[str, float]]:
        """Always no-action."""
        return NO_ACTION_ID, {NO_ACTION_ID: 1.0}


class OraclePolicy(_Baseline):
    """Knows every action's hidden expected net reward and takes the best allowed one (myopic)."""

    name = "oracle"

    def pick(
        self, options: Options, values: Mapping[str, float], rng: random.Random
    ) -> tuple[str, dict[str, float]]:
        """Argmax of the true expected net reward (ties: campaign order)."""
        best = max(options.allowed, key=lambda a: values[a])
        return best, {best: 1.0}


class FixedActionPolicy(_Baseline):
    """Always the same action; when it is not allowed, the next allowed one of its ranking."""

    def __init__(
        self, campaign: Campaign, ranking: Sequence[str], seed: int = 0, name: str | None = None
    ) -> None:
        """`ranking[0]` is the action; the rest (ending with no-action) are fallbacks."""
        super().__init__(campaign, seed)
        self.ranking = [*ranking, NO_ACTION_ID]
        self.name = name or f"best single action ({ranking[0]})"

    def pick(
        self, options: Options, values: Mapping[str, float], rng: random.Random
    ) -> tuple[str, dict[str, float]]:
        """The first allowed action of the ranking."""
        allowed = set(options.allowed)
        chosen = next(a for a in self.ranking if a in allowed)
        return chosen, {chosen: 1.0}


class SegmentRulesPolicy(_Baseline):
    """A marketer's rule set: VIPs get previews by email, bargain hunters discounts by push,
    cart abandoners an SMS reminder, everyone else an email."""

    name = "segment rules"

    def rule(self, raw: Mapping[str, float], trigger_type: str) -> list[str]:
        """Preferred actions for this customer, best first."""
        vip = raw.get("loyalty_gold", 0.0) + raw.get("loyalty_platinum", 0.0) > 0
        average_order = raw.get("monetary", 0.0) / max(raw.get("frequency", 0.0), 1.0)
        if vip:
            return ["email:exclusive_preview:nudge:now", "email:exclusive_preview:nudge:evening"]
        if 0 < average_order < 50:
            return ["push:discount_10:nudge:now", "email:discount_10:nudge:now"]
        if trigger_type == "cart_abandoned":
            return ["sms:free_shipping:nudge:now", "email:free_shipping:nudge:now"]
        return ["email:no_offer:nudge:evening", "email:no_offer:nudge:now"]

    def pick(
        self, options: Options, values: Mapping[str, float], rng: random.Random
    ) -> tuple[str, dict[str, float]]:
        """The first allowed action the rules name, else no-action."""
        trigger_type = next(
            (
                t
                for t in ("cart_abandoned", "first_purchase", "purchase")
                if options.raw.get(f"trigger_{t}")
            ),
            "other",
        )
        allowed = set(options.allowed)
        chosen = next(
            (a for a in self.rule(options.raw, trigger_type) if a in allowed), NO_ACTION_ID
        )
        return chosen, {chosen: 1.0}


class RiverBanditPolicy(_Baseline):
    """A non-contextual bandit from river.bandit (EpsilonGreedy by default) over the arms."""

    def __init__(
        self, campaign: Campaign, seed: int = 0, policy: Any = None, name: str | None = None
    ) -> None:
        """Wrap a river.bandit policy; it learns each arm's mean net reward (reward - cost)."""
        super().__init__(campaign, seed)
        if policy is None:
            from river import bandit

            policy = bandit.EpsilonGreedy(epsilon=0.1, seed=seed)
        self.policy = policy
        self.name = name or f"River {type(policy).__name__} (no context)"
        self._rng_state = random.Random(seed)

    def pick(
        self, options: Options, values: Mapping[str, float], rng: random.Random
    ) -> tuple[str, dict[str, float]]:
        """Pull among the allowed arms (River keeps its own seeded randomness)."""
        chosen = str(self.policy.pull(list(options.allowed)))
        return chosen, {chosen: 1.0}

    def learn(self, record: RewardRecord) -> None:
        """Update the chosen arm with the net reward (holdout and forced no-action excluded)."""
        decision = record.decision
        if decision.holdout or decision.reason != "policy":
            return
        self.policy.update(decision.action_id, record.reward - decision.cost)

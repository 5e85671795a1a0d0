"""The decision: features -> eligibility -> guardrails -> holdout -> bandit choice -> Decision.

`decide()` is pure given its inputs: the decision id is a hash of the campaign name and the
trigger id, and the random draw comes from a `DecisionRandom` keyed with (seed, decision id), so a
replay of the same trigger repeats the same decision. Steps:

1. features of the customer and the trigger (engine.features); the models see, and the Decision
   records, `model_view()` of them (without the raw currency/count values), kept to the
   campaign's `model_features` when it names some;
2. eligibility: every rule of an action must hold over all features, raw ones included (a
   missing feature counts as 0);
3. guardrails: frequency caps, cooldown, quiet hours (engine.guardrails); no-action always stays;
4. holdout: a customer in the campaign's holdout group always gets no-action (propensity 1,
   holdout=True, reason "holdout"); it teaches only an uplift campaign's no-action baseline;
5. the bandit draws among what is left, scoring reward minus cost or uplift over no-action.

When only no-action is left the bandit is not asked: propensity 1, reason "no_eligible_action"
(rules left nothing) or "guardrail:<name>" (the guardrail that removed the most actions).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime

from engine.bandit import Adoption, ContextualBandit
from engine.campaign import NO_ACTION_ID, Campaign
from engine.features import features as compute_features
from engine.features import model_view
from engine.guardrails import GuardrailResult, apply_guardrails, in_holdout, send_time
from engine.models import FactoredRidge, RidgeModel
from engine.policies import ExplorationConfig
from engine.rewards import attribution_deadline
from engine.state import CustomerState
from schemas.records import Decision, RewardRecord, Trigger

__all__ = [
    "CampaignRuntime",
    "DecisionRandom",
    "DecisionTrace",
    "build_bandit",
    "decide",
    "decide_traced",
    "decision_id",
    "decision_rng",
    "exploration_config",
    "learn",
]


def decision_id(campaign_name: str, trigger_id: str) -> str:
    """Derive the decision id from campaign and trigger, so a replayed trigger reuses it."""
    data = f"{campaign_name}\x1f{trigger_id}".encode()
    return hashlib.blake2b(data, digest_size=16, person=b"kairos-decision").hexdigest()


class DecisionRandom(random.Random):
    """The random source of one decision: uniforms from keyed BLAKE2b of a draw counter.

    A decision draws once or twice; seeding a Mersenne Twister for it cost ~5 µs, most of the
    decision's randomness. BLAKE2b keyed with (seed, decision id) is a pseudo-random function, so
    the draws are uniform, independent across decisions and repeat exactly for a replayed trigger.
    """

    def __init__(self, key: bytes) -> None:
        """Draws are determined by `key` (up to 64 bytes); the twister is never seeded."""
        self._key = key
        self._draws = 0

    def seed(self, a: object = None, version: int = 2) -> None:
        """Restart the draws from a new key (bytes or str; anything else by its repr)."""
        data = a if isinstance(a, bytes) else str(a).encode()
        self._key = hashlib.blake2b(data, digest_size=32, person=b"kairos-rng").digest()
        self._draws = 0

    def getrandbits(self, k: int) -> int:
        """Return k random bits (BLAKE2b of the draw counter, as many blocks as needed)."""
        if k < 0:
            raise ValueError("number of bits must be non-negative")
        bits = 0
        have = 0
        while have < k:
            self._draws += 1
            block = hashlib.blake2b(
                self._draws.to_bytes(8, "big"), digest_size=64, key=self._key
            ).digest()
            bits = (bits << 512) | int.from_bytes(block, "big")
            have += 512
        return bits >> (have - k)

    def random(self) -> float:
        """Return a uniform float in [0, 1) with 53 random bits."""
        self._draws += 1
        block = hashlib.blake2b(self._draws.to_bytes(8, "big"), digest_size=8, key=self._key)
        return (int.from_bytes(block.digest(), "big") >> 11) * _TWO_TO_MINUS_53

    def getstate(self) -> tuple[bytes, int]:  # type: ignore[override]
        """Return (key, draws so far)."""
        return self._key, self._draws

    def setstate(self, state: tuple[bytes, int]) -> None:  # type: ignore[override]
        """Restore a state from getstate()."""
        self._key, self._draws = state


_TWO_TO_MINUS_53 = 2.0**-53


def decision_rng(seed: int, decision: str) -> random.Random:
    """Return the random source of one decision, keyed with (seed, decision id)."""
    data = f"{seed}\x1f{decision}".encode()
    return DecisionRandom(hashlib.blake2b(data, digest_size=32, person=b"kairos-rng").digest())


@dataclass(frozen=True, slots=True)
class DecisionTrace:
    """A decision and why the other actions were not available (for logs and metrics)."""

    decision: Decision
    ineligible: tuple[str, ...] = ()
    """Actions whose eligibility rules did not hold."""
    guardrails: GuardrailResult = field(default_factory=lambda: GuardrailResult(()))
    """What the guardrails left and removed (by guardrail name)."""


def decide_traced(
    state: CustomerState,
    trigger: Trigger,
    campaign: Campaign,
    bandit: ContextualBandit,
    now: datetime,
    seed: int,
) -> DecisionTrace:
    """Decide for one trigger and campaign, and say what eligibility and guardrails removed."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    if not campaign.responds_to(trigger.type):
        raise ValueError(f"campaign {campaign.name!r} does not respond to {trigger.type!r}")
    now = now.astimezone(UTC)
    did = decision_id(campaign.name, trigger.trigger_id)
    raw = compute_features(state, trigger, now)
    # What the models see and later learn from: scaled inputs only, those the campaign names.
    context = campaign.model_context(model_view(raw))

    eligible, ineligible = campaign.eligibility(raw)
    timezone = state.timezone
    rails = apply_guardrails(
        campaign,
        eligible,
        state.sent,
        now,
        timezone,
        last_sent=state.last_action,
        unsubscribed=state.unsubscribed,
    )

    def make(
        action_id: str,
        *,
        propensity: float,
        probabilities: dict[str, float],
        scores: dict[str, float],
        explore: bool,
        holdout: bool,
        reason: str,
    ) -> DecisionTrace:
        action = campaign.action(action_id)
        sent_at = send_time(campaign, action, now, timezone)
        decision = Decision(
            decision_id=did,
            customer_id=trigger.customer_id,
            campaign=campaign.name,
            action_id=action.id,
            action=action.dimensions(),
            propensity=propensity,
            probabilities=probabilities,
            scores=scores,
            features=context,
            model_version=bandit.version,
            explore=explore,
            holdout=holdout,
            reason=reason,
            cost=action.cost,
            trigger_id=trigger.trigger_id,
            trigger_type=trigger.type,
            trigger_event_id=trigger.source_event_id,
            trigger_ts=trigger.ts,
            decided_ts=now,
            attribution_deadline=attribution_deadline(now, campaign, sent_at),
            send_at=sent_at,
        )
        return DecisionTrace(decision, ineligible, rails)

    forced = {NO_ACTION_ID: 1.0}
    if in_holdout(trigger.customer_id, campaign):
        return make(
            NO_ACTION_ID,
            propensity=1.0,
            probabilities=forced,
            scores={},
            explore=False,
            holdout=True,
            reason="holdout",
        )
    if rails.allowed == (NO_ACTION_ID,):
        guardrail = rails.main_reason()
        return make(
            NO_ACTION_ID,
            propensity=1.0,
            probabilities=forced,
            scores={},
            explore=False,
            holdout=False,
            reason="no_eligible_action" if guardrail is None else f"guardrail:{guardrail}",
        )
    allowed = list(rails.allowed)
    costs = {a: campaign.action(a).cost for a in allowed}
    choice = bandit.choose(
        context, allowed, decision_rng(seed, did), costs=costs, objective=campaign.objective
    )
    return make(
        choice.action_id,
        propensity=choice.propensity,
        probabilities=dict(choice.probabilities),
        scores=dict(choice.scores),
        explore=choice.explore,
        holdout=False,
        reason="policy",
    )


def decide(
    state: CustomerState,
    trigger: Trigger,
    campaign: Campaign,
    bandit: ContextualBandit,
    now: datetime,
    seed: int,
) -> Decision:
    """Decide what to do (or not) for one trigger and campaign; deterministic given the seed."""
    return decide_traced(state, trigger, campaign, bandit, now, seed).decision


def learn(bandit: ContextualBandit, record: RewardRecord) -> bool:
    """Teach the chosen action's model the reward; a holdout teaches only the uplift baseline.

    The holdout is a stable random group that always gets no-action: for an uplift bandit it is
    the one unconfounded sample of the baseline (no-action) reward, which the policy itself
    rarely chooses once it has learned, so it teaches the baseline model (and nothing else).
    Without a baseline (reward objective) holdout decisions are not learned from.
    """
    decision = record.decision
    if decision.holdout and (
        bandit.baseline_action is None or decision.action_id != bandit.baseline_action
    ):
        return False
    bandit.learn(decision.action_id, decision.features, record.reward)
    return True


def exploration_config(campaign: Campaign) -> ExplorationConfig:
    """Map the campaign's exploration section onto the policies' ExplorationConfig."""
    return ExplorationConfig.from_params(campaign.exploration.kind, campaign.exploration.params)


def build_bandit(campaign: Campaign, seed: int = 0) -> ContextualBandit:
    """Build the campaign's bandit: one model per arm; no-action is the baseline for uplift."""
    model: str | RidgeModel | FactoredRidge = campaign.model
    if model in ("default", "ridge"):
        model = RidgeModel(l2=campaign.model_l2)
    if model == "factored":
        scale = {a.id: campaign.scale_feature(a) for a in campaign.actions}
        model = FactoredRidge(
            {a.id: a.dimensions() if a.is_message else None for a in campaign.actions},
            l2=campaign.model_l2,
            scale={a: name for a, name in scale.items() if name},
        )
    return ContextualBandit(
        list(campaign.action_ids),
        exploration_config(campaign),
        model=model,
        seed=seed,
        baseline_action=NO_ACTION_ID if campaign.objective == "uplift" else None,
    )


@dataclass(slots=True)
class CampaignRuntime:
    """A campaign with its live bandit and seed: what the stream layer decides and learns with.

    `bandit` may be replaced (e.g. by a restored snapshot of the same campaign).
    """

    campaign: Campaign
    bandit: ContextualBandit
    seed: int = 0

    @classmethod
    def from_campaign(cls, campaign: Campaign, seed: int = 0) -> CampaignRuntime:
        """Build the runtime with a fresh bandit for the campaign."""
        return cls(campaign, build_bandit(campaign, seed), seed)

    def responds_to(self, trigger_type: str) -> bool:
        """Tell whether the campaign decides on this trigger type."""
        return self.campaign.responds_to(trigger_type)

    def decide(self, state: CustomerState, trigger: Trigger, now: datetime) -> Decision:
        """Decide for one trigger with this campaign's bandit and seed."""
        return decide(state, trigger, self.campaign, self.bandit, now, self.seed)

    def decide_traced(self, state: CustomerState, trigger: Trigger, now: datetime) -> DecisionTrace:
        """Decide and say what eligibility and guardrails removed."""
        return decide_traced(state, trigger, self.campaign, self.bandit, now, self.seed)

    def learn(self, record: RewardRecord) -> bool:
        """Learn a reward of this campaign (other campaigns and unknown arms ignored; see learn)."""
        decision = record.decision
        if decision.campaign != self.campaign.name or decision.action_id not in set(
            self.campaign.action_ids
        ):
            return False
        return learn(self.bandit, record)

    def restore(self, snapshot: bytes, key: bytes | None = None) -> Adoption | None:
        """Continue from a snapshot of this campaign (see adopt); SnapshotError if unusable."""
        return self.adopt(ContextualBandit.restore(snapshot, key))

    def adopt(self, learned: ContextualBandit) -> Adoption | None:
        """Continue from `learned` (a restored snapshot): None if it is this campaign's bandit as
        configured now, taken whole; else what carried over to a fresh bandit of the campaign as
        edited since (arms, exploration, baseline from the file; ContextualBandit.adopt).

        A snapshot's settings are the campaign's when it was taken: without this a campaign whose
        actions changed decided with the old arms and failed on the new ones, and a new epsilon was
        ignored until the models were dropped by hand. Swaps `bandit` in one assignment.
        """
        fresh = build_bandit(self.campaign, self.seed)
        if learned.configuration() == fresh.configuration():
            self.bandit = learned
            return None
        adoption = fresh.adopt(learned)
        self.bandit = fresh
        return adoption

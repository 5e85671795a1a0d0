"""Reward definition: how the outcomes attributed to a decision become one number to learn from.

Each outcome type listed in the campaign's `[reward.outcomes]` contributes
`base + per_value * outcome.value` (capped); types not listed contribute nothing. Outcomes are
deduplicated by outcome id (delivery is at least once), and within one type only the largest
contribution counts (a second open of the same email is not more engagement). The types then
combine by the campaign's rule:

- "sum": the contributions add up (open 0.1 + click 0.3 + conversion 1.0 = 1.4);
- "max": the best positive contribution (the deepest engagement) plus every negative one
  (an unsubscribe still costs, whatever else happened).

A decision with no outcome of a listed type gets the campaign's default reward.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Protocol

from engine.campaign import Campaign

__all__ = ["OutcomeLike", "attribution_deadline", "outcome_reward", "reward_of"]


class OutcomeLike(Protocol):
    """What reward_of reads from an outcome (schemas.records.Outcome satisfies it)."""

    @property
    def outcome_id(self) -> str: ...

    @property
    def type(self) -> str: ...

    @property
    def value(self) -> float: ...


def outcome_reward(campaign: Campaign, outcome: OutcomeLike) -> float | None:
    """Return one outcome's contribution, or None if its type does not count for the campaign."""
    spec = campaign.reward.outcomes.get(outcome.type)
    return None if spec is None else spec.of(float(outcome.value))


def reward_of(campaign: Campaign, outcomes: Iterable[OutcomeLike]) -> float:
    """Combine the outcomes attributed to one decision into its reward, per the campaign."""
    best_by_type: dict[str, float] = {}
    seen: set[str] = set()
    for outcome in outcomes:
        if outcome.outcome_id in seen:
            continue
        seen.add(outcome.outcome_id)
        contribution = outcome_reward(campaign, outcome)
        if contribution is None:
            continue
        previous = best_by_type.get(outcome.type)
        if previous is None or contribution > previous:
            best_by_type[outcome.type] = contribution
    if not best_by_type:
        return campaign.reward.default
    values = list(best_by_type.values())
    if campaign.reward.combine == "sum":
        return sum(values)
    positives = [v for v in values if v > 0]
    penalties = sum(v for v in values if v < 0)
    return (max(positives) if positives else 0.0) + penalties


def attribution_deadline(
    decision_ts: datetime, campaign: Campaign, send_ts: datetime | None = None
) -> datetime:
    """Return when the attribution window closes: the window counts from the send time, if later."""
    start = decision_ts if send_ts is None or send_ts < decision_ts else send_ts
    return start + timedelta(seconds=campaign.reward.attribution_window_s)

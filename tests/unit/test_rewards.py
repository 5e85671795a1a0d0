"""Rewards: outcomes combine per the campaign's definition; the attribution window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.campaign import Campaign, CampaignError, builtin_campaign, parse_campaign
from engine.rewards import attribution_deadline, outcome_reward, reward_of
from schemas.records import Outcome

T0 = datetime(2024, 6, 3, 12, 0, tzinfo=UTC)


def campaign(combine: str = "sum", **outcomes: object) -> Campaign:
    """A one-action campaign with the given reward definition."""
    return parse_campaign(
        {
            "name": "r",
            "salt": "s",
            "triggers": ["purchase"],
            "actions": {"dimensions": {"channel": ["email"]}},
            "reward": {
                "combine": combine,
                "attribution_window_s": 3600,
                "default": -0.01,
                "outcomes": outcomes
                or {"opened": 0.1, "clicked": 0.3, "converted": 1.0, "unsubscribed": -1.0},
            },
        }
    )


def outcome(kind: str, value: float = 0.0, oid: str | None = None) -> Outcome:
    return Outcome(
        outcome_id=oid or f"{kind}-{value}", customer_id="c", type=kind, ts=T0, value=value
    )


def test_sum_adds_types() -> None:
    c = campaign()
    assert reward_of(c, [outcome("opened"), outcome("clicked"), outcome("converted")]) == (
        pytest.approx(1.4)
    )
    assert reward_of(c, [outcome("opened"), outcome("unsubscribed")]) == pytest.approx(-0.9)


def test_max_takes_deepest_engagement_plus_penalties() -> None:
    c = campaign("max")
    assert reward_of(c, [outcome("opened"), outcome("clicked"), outcome("converted")]) == 1.0
    assert reward_of(c, [outcome("clicked"), outcome("unsubscribed")]) == pytest.approx(-0.7)
    assert reward_of(c, [outcome("unsubscribed")]) == -1.0


def test_no_counted_outcome_gives_default() -> None:
    c = campaign()
    assert reward_of(c, []) == -0.01
    assert reward_of(c, [outcome("delivered"), outcome("bounced")]) == -0.01


def test_duplicates_and_repeats_count_once() -> None:
    c = campaign()
    same = outcome("opened", oid="o1")
    assert reward_of(c, [same, same]) == pytest.approx(0.1)
    assert reward_of(c, [outcome("opened", oid="o1"), outcome("opened", oid="o2")]) == (
        pytest.approx(0.1)
    )


def test_value_based_outcomes() -> None:
    c = campaign(converted="value", opened={"base": 0.5, "per_value": 0.01, "cap": 2.0})
    assert reward_of(c, [outcome("converted", 42.5)]) == 42.5
    assert outcome_reward(c, outcome("opened", 100.0)) == pytest.approx(1.5)
    assert outcome_reward(c, outcome("opened", 1000.0)) == 2.0
    assert outcome_reward(c, outcome("clicked")) is None
    # Two conversions in the window: the larger counts.
    assert reward_of(c, [outcome("converted", 10.0), outcome("converted", 30.0)]) == 30.0


def test_builtin_cross_sell_reward() -> None:
    c = builtin_campaign("cross_sell")
    assert reward_of(c, [outcome("clicked"), outcome("converted", 80.0)]) == pytest.approx(1.3)
    # A sender's wrong sign or scale stays within the campaign's bounds: it gave -1e10 (QA)
    assert reward_of(c, [outcome("converted", -1e12)]) == 0.0
    assert reward_of(c, [outcome("converted", 1e12)]) == 2.0


def test_a_floor_bounds_a_value_based_reward_from_below_and_must_not_pass_the_cap() -> None:
    c = campaign(converted={"per_value": 1.0, "floor": -5.0, "cap": 5.0})
    assert [outcome_reward(c, outcome("converted", v)) for v in (-1e12, -2.0, 3.0, 1e12)] == [
        -5.0,
        -2.0,
        3.0,
        5.0,
    ]
    with pytest.raises(CampaignError, match=r"reward\.outcomes\.converted\.floor.*above cap"):
        campaign(converted={"per_value": 1.0, "floor": 3.0, "cap": 2.0})


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["delivered", "opened", "clicked", "converted", "unsubscribed"]),
            st.floats(min_value=0, max_value=1e4),
        ),
        max_size=6,
    )
)
def test_max_never_exceeds_sum_of_positives(items: list[tuple[str, float]]) -> None:
    outcomes = [outcome(kind, value, oid=str(i)) for i, (kind, value) in enumerate(items)]
    c_sum, c_max = campaign("sum"), campaign("max")
    assert reward_of(c_max, outcomes) <= reward_of(c_sum, outcomes) + 1e-9


def test_attribution_deadline() -> None:
    c = campaign()
    assert attribution_deadline(T0, c) == T0 + timedelta(hours=1)
    later = T0 + timedelta(hours=7)
    assert attribution_deadline(T0, c, send_ts=later) == later + timedelta(hours=1)
    assert attribution_deadline(T0, c, send_ts=T0 - timedelta(hours=1)) == T0 + timedelta(hours=1)
    cart = builtin_campaign("cart_abandonment")
    assert attribution_deadline(T0, cart) == T0 + timedelta(hours=2)

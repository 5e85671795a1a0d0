"""decide(): deterministic replays, holdout always no-action, guardrails respected, learning."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.bandit import ContextualBandit, SnapshotError
from engine.campaign import NO_ACTION_ID, Campaign, builtin_campaign, parse_campaign
from engine.decide import (
    CampaignRuntime,
    build_bandit,
    decide,
    decide_traced,
    decision_id,
    decision_rng,
    learn,
)
from engine.guardrails import blocked_by, in_holdout
from engine.state import CustomerState, SentEntry, record_decision
from schemas.codec import decode_decision, encode
from schemas.records import Decision, RewardRecord, Trigger

NOW = datetime(2024, 6, 3, 12, 0, tzinfo=UTC)  # 14:00 in Paris
CART = builtin_campaign("cart_abandonment")


def state(customer: str = "c1", **fields: object) -> CustomerState:
    """A customer with a cart worth 60, in Paris."""
    values: dict[str, object] = {
        "customer_id": customer,
        "first_seen": NOW.timestamp() - 30 * 86400,
        "last_seen": NOW.timestamp() - 3600,
        "cart": {"p1": (2, 30.0)},
        "last_cart_activity": NOW.timestamp() - 3600,
        "timezone": "Europe/Paris",
    }
    values.update(fields)
    return CustomerState(**values)  # type: ignore[arg-type]


def trigger(customer: str = "c1", kind: str = "cart_abandoned", n: int = 0) -> Trigger:
    return Trigger(
        trigger_id=f"t-{customer}-{kind}-{n}",
        customer_id=customer,
        type=kind,
        ts=NOW - timedelta(minutes=5),
        source_event_id=f"e-{customer}-{n}",
        explicit=True,
    )


def not_held_out(campaign: Campaign, prefix: str = "c") -> list[str]:
    return [f"{prefix}{i}" for i in range(200) if not in_holdout(f"{prefix}{i}", campaign)]


def held_out(campaign: Campaign, prefix: str = "c") -> list[str]:
    return [f"{prefix}{i}" for i in range(2000) if in_holdout(f"{prefix}{i}", campaign)]


def test_decision_id_is_deterministic_per_campaign_and_trigger() -> None:
    assert decision_id("a", "t1") == decision_id("a", "t1")
    assert decision_id("a", "t1") != decision_id("b", "t1")
    assert decision_id("a", "t1") != decision_id("a", "t2")
    assert len(decision_id("a", "t1")) == 32


def test_decide_is_deterministic_for_same_seed_and_trigger() -> None:
    for customer in not_held_out(CART)[:30]:
        s, t = state(customer), trigger(customer)
        first = decide(s, t, CART, build_bandit(CART, seed=7), NOW, seed=7)
        again = decide(s, t, CART, build_bandit(CART, seed=7), NOW, seed=7)
        assert first == again
        # The same bandit asked twice (a replay after a crash) repeats the choice too.
        bandit = build_bandit(CART, seed=7)
        assert decide(s, t, CART, bandit, NOW, 7) == decide(s, t, CART, bandit, NOW, 7)


def test_seed_and_trigger_change_the_draw() -> None:
    customer = not_held_out(CART)[0]
    s = state(customer)
    bandit = build_bandit(CART)
    by_seed = {
        decide(s, trigger(customer), CART, bandit, NOW, seed).action_id for seed in range(60)
    }
    by_trigger = {
        decide(s, trigger(customer, n=n), CART, bandit, NOW, 0).action_id for n in range(60)
    }
    assert len(by_seed) > 1
    assert len(by_trigger) > 1


def test_decision_fields() -> None:
    customer = not_held_out(CART)[0]
    t = trigger(customer)
    d = decide(state(customer), t, CART, build_bandit(CART), NOW, seed=1)
    assert d.decision_id == decision_id(CART.name, t.trigger_id)
    assert d.customer_id == customer and d.campaign == CART.name
    assert d.reason == "policy" and not d.holdout
    assert d.action == CART.action(d.action_id).dimensions()
    assert d.cost == CART.action(d.action_id).cost
    assert math.isclose(sum(d.probabilities.values()), 1.0)
    assert d.propensity == d.probabilities[d.action_id] > 0
    assert set(d.scores) == set(d.probabilities)
    assert "cart_value" not in d.features and "cart_value_log" in d.features  # model view
    assert d.model_version == 0
    assert d.trigger_id == t.trigger_id and d.trigger_type == t.type
    assert d.trigger_event_id == t.source_event_id and d.trigger_ts == t.ts
    assert d.decided_ts == NOW and d.decided_ts.tzinfo is not None
    assert d.attribution_deadline >= NOW + timedelta(hours=2)
    assert decode_decision(encode(d)) == d  # valid on the wire


def test_eligibility_rules_apply() -> None:
    customer = not_held_out(CART)[0]
    small_cart = state(customer, cart={"p1": (1, 10.0)})  # below free shipping and discount
    for seed in range(40):
        trace = decide_traced(small_cart, trigger(customer), CART, build_bandit(CART), NOW, seed)
        assert trace.decision.action["offer"] in ("no_offer", "none")
        assert all(":no_offer:" not in a for a in trace.ineligible)
        assert set(trace.decision.probabilities) <= {
            a for a in CART.action_ids if ":no_offer:" in a or a == NO_ACTION_ID
        }


def test_no_eligible_action() -> None:
    campaign = parse_campaign(
        {
            "name": "vip",
            "salt": "s",
            "triggers": ["cart_abandoned"],
            "actions": {
                "dimensions": {"channel": ["email"]},
                "rules": [{"match": {}, "eligible": ["loyalty_platinum == 1"]}],
            },
            "reward": {"outcomes": {"converted": 1.0}},
        }
    )
    d = decide(state(), trigger(), campaign, build_bandit(campaign), NOW, seed=0)
    assert d.action_id == NO_ACTION_ID
    assert d.reason == "no_eligible_action"
    assert d.propensity == 1.0 and d.probabilities == {NO_ACTION_ID: 1.0}
    assert not d.holdout


def test_guardrail_forced_no_action_names_the_guardrail() -> None:
    customer = not_held_out(CART)[0]
    night = datetime(2024, 6, 3, 23, 30, tzinfo=UTC)  # 01:30 in Paris
    t = Trigger(
        trigger_id="night",
        customer_id=customer,
        type="cart_abandoned",
        ts=night,
        source_event_id="e",
        explicit=True,
    )
    trace = decide_traced(state(customer), t, CART, build_bandit(CART), night, 0)
    # Evening slots survive quiet hours (sent at 19:00 local), "now" ones do not.
    assert trace.decision.action["slot"] in ("evening", "none")
    assert set(trace.guardrails.removed.values()) == {"quiet_hours"}
    full: list[SentEntry] = [
        (NOW.timestamp() - 60.0 * i, ch, "x", "other")
        for i, ch in enumerate(["email", "sms", "push"])
    ]
    d = decide(state(customer, sent=full), trigger(customer), CART, build_bandit(CART), NOW, 0)
    assert d.action_id == NO_ACTION_ID
    assert d.reason == "guardrail:frequency_cap"
    assert d.propensity == 1.0


def test_evening_slot_attribution_starts_at_send_time() -> None:
    campaign = parse_campaign(
        {
            "name": "eve",
            "salt": "s",
            "triggers": ["cart_abandoned"],
            "actions": {"dimensions": {"channel": ["email"], "slot": ["evening"]}},
            "reward": {"attribution_window_s": 3600, "outcomes": {"converted": 1.0}},
        }
    )
    customer = not_held_out(campaign)[0]
    for seed in range(20):
        d = decide(state(customer), trigger(customer), campaign, build_bandit(campaign), NOW, seed)
        if d.action_id != NO_ACTION_ID:
            # 19:00 Paris is 17:00 UTC; the window closes an hour later.
            assert d.attribution_deadline == datetime(2024, 6, 3, 18, 0, tzinfo=UTC)
            return
    pytest.fail("never chose the evening email")


def test_holdout_customers_always_get_no_action() -> None:
    customers = held_out(CART)
    assert 50 <= len(customers) <= 150  # 5% of 2000
    bandit = build_bandit(CART)
    for customer in customers:
        d = decide(state(customer), trigger(customer), CART, bandit, NOW, seed=3)
        assert d.action_id == NO_ACTION_ID
        assert d.action["channel"] == "none"
        assert d.holdout and d.reason == "holdout"
        assert d.propensity == 1.0 and d.probabilities == {NO_ACTION_ID: 1.0}
        record = RewardRecord(
            decision=d,
            reward=1.0,
            outcome_ids=[],
            outcome_types=[],
            expired=True,
            joined_ts=NOW,
        )
        # The holdout is the uplift baseline's unconfounded sample: it teaches no-action only.
        assert learn(bandit, record) is True
        assert record_decision(state(customer), d).sent == []  # not a message for caps
    assert bandit.version == len(customers)
    scores = bandit.scores(d.features)
    assert scores[NO_ACTION_ID] > 0.5
    assert all(v == 0.0 for a, v in scores.items() if a != NO_ACTION_ID)


def test_holdout_is_not_learned_without_an_uplift_baseline() -> None:
    customer = held_out(CART)[0]
    d = decide(state(customer), trigger(customer), CART, build_bandit(CART), NOW, seed=3)
    bandit = ContextualBandit(list(CART.action_ids))  # reward objective: no baseline arm
    record = RewardRecord(
        decision=d, reward=1.0, outcome_ids=[], outcome_types=[], expired=True, joined_ts=NOW
    )
    assert d.holdout and learn(bandit, record) is False
    assert bandit.version == 0


def test_trigger_the_campaign_does_not_handle_is_rejected() -> None:
    with pytest.raises(ValueError, match="does not respond to 'lapse'"):
        decide(state(), trigger(kind="lapse"), CART, build_bandit(CART), NOW, 0)
    with pytest.raises(ValueError, match="timezone-aware"):
        decide(state(), trigger(), CART, build_bandit(CART), datetime(2024, 1, 1), 0)


# -- property: the decided action never breaks a guardrail --------------------------------------

ACTIONS = [*CART.action_ids, "other"]
BANDIT = build_bandit(CART)


@st.composite
def cases(draw: st.DrawFn) -> tuple[CustomerState, Trigger, datetime]:
    now = draw(
        st.datetimes(
            min_value=datetime(2024, 1, 1), max_value=datetime(2025, 12, 31), timezones=st.just(UTC)
        )
    )
    customer = draw(st.sampled_from(not_held_out(CART)[:20]))
    offsets = draw(st.lists(st.floats(min_value=0, max_value=8 * 86400), max_size=6))
    sent: list[SentEntry] = sorted(
        (
            now.timestamp() - float(offset),
            draw(st.sampled_from(["email", "sms", "push"])),
            draw(st.sampled_from(ACTIONS)),
            draw(st.sampled_from([CART.name, "other"])),
        )
        for offset in offsets
    )
    tz = draw(st.sampled_from([None, "Europe/Paris", "America/Los_Angeles", "Asia/Tokyo"]))
    cart_value = draw(st.floats(min_value=0, max_value=200))
    s = state(customer, sent=sent, timezone=tz, cart={"p": (1, cart_value)})
    t = Trigger(
        trigger_id=f"t{now.timestamp()}",
        customer_id=customer,
        type="cart_abandoned",
        ts=now,
        source_event_id="e",
        explicit=True,
    )
    return s, t, now


@settings(max_examples=150, deadline=None)
@given(cases(), st.integers(min_value=0, max_value=1000))
def test_decisions_never_break_guardrails(
    case: tuple[CustomerState, Trigger, datetime], seed: int
) -> None:
    s, t, now = case
    d = decide(s, t, CART, BANDIT, now, seed)
    action = CART.action(d.action_id)
    assert blocked_by(CART, action, s.sent, now, s.timezone, s.last_action) is None
    assert action.eligible({"cart_value": sum(q * p for q, p in s.cart.values())})
    for action_id in d.probabilities:  # nothing blocked even had a chance
        assert blocked_by(CART, CART.action(action_id), s.sent, now, s.timezone) is None


# -- runtime --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cart_abandonment", "cross_sell", "win_back"])
def test_runtime_decides_learns_and_restores(name: str) -> None:
    campaign = builtin_campaign(name)
    runtime = CampaignRuntime.from_campaign(campaign, seed=11)
    assert runtime.bandit.action_ids == campaign.action_ids
    expected_baseline = NO_ACTION_ID if campaign.objective == "uplift" else None
    assert runtime.bandit.baseline_action == expected_baseline
    assert runtime.bandit.exploration.kind == campaign.exploration.kind
    customer = not_held_out(campaign)[0]
    decisions: list[Decision] = []
    for n, kind in enumerate(campaign.triggers * 5):
        t = trigger(customer, kind, n)
        d = runtime.decide(state(customer, purchase_count=3, purchase_value=90.0), t, NOW)
        assert (
            d
            == runtime.decide_traced(
                state(customer, purchase_count=3, purchase_value=90.0), t, NOW
            ).decision
        )
        decisions.append(d)
    for d in decisions:
        record = RewardRecord(
            decision=d, reward=0.5, outcome_ids=[], outcome_types=[], expired=False, joined_ts=NOW
        )
        assert runtime.learn(record)
    assert runtime.bandit.version == len(decisions)
    other = RewardRecord(
        decision=msgspec.structs.replace(decisions[0], campaign="someone_else"),
        reward=1.0,
        outcome_ids=[],
        outcome_types=[],
        expired=False,
        joined_ts=NOW,
    )
    assert not runtime.learn(other)
    snapshot = runtime.bandit.snapshot()
    fresh = CampaignRuntime.from_campaign(campaign, seed=11)
    fresh.restore(snapshot)
    assert fresh.bandit.version == runtime.bandit.version
    t = trigger(customer, campaign.triggers[0], 999)
    assert fresh.decide(state(customer), t, NOW) == runtime.decide(state(customer), t, NOW)
    if name == "cart_abandonment":  # another campaign's arms are refused
        with pytest.raises(SnapshotError, match="do not match"):
            CampaignRuntime.from_campaign(builtin_campaign("win_back")).restore(snapshot)


def test_learning_moves_the_choice() -> None:
    """After email-with-no-offer keeps converting, the bandit prefers it (objective: reward)."""
    campaign = builtin_campaign("cross_sell")
    runtime = CampaignRuntime.from_campaign(campaign, seed=0)
    good = "email:no_offer:recommendation:now"
    customer = not_held_out(campaign)[0]
    s = state(customer, purchase_count=1, purchase_value=50.0)
    bandit: ContextualBandit = runtime.bandit
    for n in range(200):
        d = runtime.decide(s, trigger(customer, "purchase", n), NOW)
        reward = 1.0 if d.action_id == good else 0.0
        runtime.learn(
            RewardRecord(
                decision=d,
                reward=reward,
                outcome_ids=[],
                outcome_types=[],
                expired=False,
                joined_ts=NOW,
            )
        )
    chosen = [runtime.decide(s, trigger(customer, "purchase", 1000 + n), NOW) for n in range(50)]
    share = sum(d.action_id == good for d in chosen) / len(chosen)
    assert share > 0.5, share
    assert bandit.version == 200


@pytest.mark.parametrize("name", ["cart_abandonment", "cross_sell", "win_back"])
def test_shipped_rules_name_real_features(name: str) -> None:
    """A typo in a rule's feature would silently read 0: the shipped rules use real features."""
    from engine.features import features

    campaign = builtin_campaign(name)
    known = set(features(state(), trigger(kind=campaign.triggers[0]), NOW))
    used = {rule.feature for action in campaign.actions for rule in action.rules}
    assert used <= known, used - known


def test_a_decision_random_source_repeats_per_decision_and_is_uniform() -> None:
    """Same (seed, decision) -> same draws; other decisions or seeds draw otherwise; uniform."""
    rng = decision_rng(7, "d1")
    first = [rng.random() for _ in range(3)]
    rng = decision_rng(7, "d1")
    assert first == [rng.random() for _ in range(3)]
    assert len(set(first)) == 3  # each draw is a new one
    assert decision_rng(7, "d2").random() != first[0]
    assert decision_rng(8, "d1").random() != first[0]
    draws = [decision_rng(1, f"d{i}").random() for i in range(20_000)]
    assert all(0.0 <= u < 1.0 for u in draws)
    # Each tenth of [0, 1) holds 2,000 +- 5 sigma (sigma ~ 42) of the draws.
    counts = [0] * 10
    for u in draws:
        counts[int(u * 10)] += 1
    assert all(1_790 <= c <= 2_210 for c in counts), counts
    rng = decision_rng(3, "d")
    assert rng.getrandbits(600) < 2**600 and 0 <= rng.randrange(10) < 10
    state = rng.getstate()
    following = rng.random()
    rng.setstate(state)
    assert rng.random() == following

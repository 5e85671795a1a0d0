"""Decision features: values, local time, fatigue, one-hots, and never NaN or infinite."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.features import RAW_FEATURES, TRIGGER_TYPES, features, model_view
from engine.state import CustomerState, apply
from schemas.records import Event, Trigger

T0 = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)  # a Monday
EPOCH0 = int(T0.timestamp())


def trig(kind: str = "cart_abandoned", at: datetime = T0, explicit: bool = False) -> Trigger:
    return Trigger(
        trigger_id="t", customer_id="c1", type=kind, ts=at, source_event_id="e", explicit=explicit
    )


def state_with(**kw: object) -> CustomerState:
    return msgspec.structs.replace(CustomerState(customer_id="c1"), **kw)


def test_a_fresh_customer() -> None:
    state = apply(None, Event(event_id="e", customer_id="c1", type="page_view", ts=T0))
    f = features(state, trig(), T0)
    assert f["bias"] == 1.0
    assert f["has_purchased"] == 0.0 and f["frequency"] == 0.0 and f["recency"] == 1.0
    assert f["cart_value"] == 0.0 and f["fatigue_day"] == 0.0
    assert f["loyalty_none"] == 1.0
    assert f["trigger_cart_abandoned"] == 1.0 and f["trigger_other"] == 0.0
    assert f["open_rate_email"] == pytest.approx(0.2)  # the prior


def test_rfm_and_cart() -> None:
    state = state_with(
        purchase_count=4,
        purchase_value=400.0,
        last_purchase=EPOCH0 - 10 * 86400,
        first_seen=EPOCH0 - 100 * 86400,
        cart={"p1": (2, 15.0), "p2": (1, 20.0)},
        last_cart_activity=EPOCH0 - 1800,
    )
    f = features(state, trig(), T0)
    assert f["frequency"] == 4.0 and f["monetary"] == 400.0 and f["cart_value"] == 50.0
    assert f["recency"] == pytest.approx(math.log1p(10) / 6)
    assert f["cart_value_log"] == pytest.approx(math.log1p(50) / 7)
    assert f["cart_idle"] == pytest.approx(math.log1p(30) / 10)
    assert f["loyalty_silver"] == 1.0 and f["loyalty_gold"] == 0.0
    assert set(model_view(f)) == set(f) - RAW_FEATURES
    assert f["purchase_rate"] == pytest.approx(math.log1p(10 * 4 / 100) / math.log1p(10))
    recent = state_with(purchase_count=2, first_seen=EPOCH0 - 86400)  # a week at least
    assert features(recent, trig(), T0)["purchase_rate"] == pytest.approx(
        math.log1p(10 * 2 / 7) / math.log1p(10)
    )


def test_hour_and_weekday_in_the_customers_zone() -> None:
    utc = features(state_with(), trig(), T0)
    assert utc["hour_sin"] == pytest.approx(0.0, abs=1e-9)  # 12:00
    assert utc["hour_cos"] == pytest.approx(-1.0)
    tokyo = features(state_with(timezone="Asia/Tokyo"), trig(), T0)  # 21:00 local
    assert tokyo["hour_sin"] == pytest.approx(math.sin(2 * math.pi * 21 / 24))
    assert tokyo["weekday_sin"] != pytest.approx(utc["weekday_sin"])
    bogus = features(state_with(timezone="Not/AZone"), trig(), T0)
    assert bogus["hour_cos"] == pytest.approx(-1.0)  # falls back to UTC


def test_fatigue_counts_last_day_and_week() -> None:
    sent = [
        (EPOCH0 - 8 * 86400, "email", "a", "c"),
        (EPOCH0 - 3 * 86400, "email", "a", "c"),
        (EPOCH0 - 3600, "push", "b", "c"),
        (EPOCH0 - 60, "sms", "d", "c"),
    ]
    f = features(state_with(sent=sent), trig(), T0)
    assert f["fatigue_day"] == pytest.approx(math.log1p(2) / 2)
    assert f["fatigue_week"] == pytest.approx(math.log1p(3) / 3)


def test_engagement_rates_are_smoothed_and_bounded() -> None:
    state = state_with(engagement={"email": (10, 5, 2, 1), "all": (10, 30, 0, 0)})
    f = features(state, trig(), T0)
    assert f["open_rate_email"] == pytest.approx((5 + 0.4) / 12)
    assert f["click_rate_email"] == pytest.approx((2 + 0.1) / 12)
    assert f["open_rate_all"] == 1.0


def test_trigger_one_hot_and_category_shares() -> None:
    state = state_with(categories={"shoes": 6, "bags": 2})
    for kind in TRIGGER_TYPES:
        f = features(state, trig(kind), T0)
        assert [f[f"trigger_{t}"] for t in TRIGGER_TYPES].count(1.0) == 1
        assert f[f"trigger_{kind}"] == 1.0
    f = features(state, trig("birthday", explicit=True), T0)
    assert f["trigger_other"] == 1.0 and f["trigger_explicit"] == 1.0
    assert f["category_shoes"] == 0.75 and f["category_bags"] == 0.25


def test_same_keys_whatever_the_state() -> None:
    a = features(state_with(), trig(), T0)
    b = features(
        state_with(purchase_count=3, purchase_value=9.0, timezone="Europe/Paris"),
        trig("lapse"),
        T0 + timedelta(days=3),
    )
    assert list(a) == list(b)


big = st.floats(allow_nan=True, allow_infinity=True)
times = st.none() | st.integers(min_value=-(2**40), max_value=2**40)
counts = st.integers(min_value=0, max_value=2**31)
states = st.builds(
    CustomerState,
    customer_id=st.just("c1"),
    first_seen=st.integers(min_value=-(2**40), max_value=2**40),
    last_seen=st.integers(min_value=-(2**40), max_value=2**40),
    purchase_count=counts,
    purchase_value=big,
    last_purchase=times,
    cart=st.dictionaries(st.text(max_size=4), st.tuples(counts, big), max_size=4),
    last_cart_activity=times,
    categories=st.dictionaries(st.text(max_size=6), counts, max_size=8),
    engagement=st.dictionaries(
        st.sampled_from(["all", "email", "sms", "push", "web"]),
        st.tuples(counts, counts, counts, counts),
        max_size=5,
    ),
    sent=st.lists(
        st.tuples(st.integers(-(2**40), 2**40), st.just("email"), st.just("a"), st.just("c")),
        max_size=6,
    ),
    loyalty_tier=st.none() | st.text(max_size=8),
    timezone=st.none() | st.text(max_size=20) | st.sampled_from(["Asia/Kolkata", "Europe/Paris"]),
)
nows = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)


@given(states, nows, nows, st.text(max_size=15), st.booleans())
def test_features_are_always_finite_and_bounded(
    state: CustomerState, now: datetime, trig_at: datetime, kind: str, explicit: bool
) -> None:
    f = features(state, trig(kind, trig_at, explicit), now)
    for key, value in f.items():
        assert isinstance(value, float), key
        assert math.isfinite(value), key
        assert abs(value) <= 1e6, key


@given(states, nows)
def test_features_are_deterministic(state: CustomerState, now: datetime) -> None:
    assert features(state, trig(), now) == features(state, trig(), now)


def test_the_channel_the_customer_opens() -> None:
    state = state_with(engagement={"email": (4, 0, 0, 0), "sms": (4, 3, 0, 0)})
    f = features(state, trig(), T0)
    rates = {c: f[f"open_rate_{c}"] for c in ("email", "sms", "push")}
    assert f["open_share_sms"] == pytest.approx(rates["sms"] / sum(rates.values()))
    best = [f[f"open_best_{c}"] for c in ("email", "sms", "push")]
    assert sum(best) == pytest.approx(1.0)
    assert best[1] > 0.8 and best[0] < best[2]  # sms: 3 of 4 opened; email: 0 of 4; push: none
    fresh = features(state_with(), trig(), T0)  # every channel at the prior: even shares
    assert fresh["open_share_push"] == pytest.approx(1 / 3)
    assert fresh["open_best_email"] == pytest.approx(1 / 3)
    few = state_with(engagement={"email": (1, 1, 0, 0), "sms": (1, 0, 0, 0)})
    assert 0.5 < features(few, trig(), T0)["open_best_email"] < 0.9  # one open is not proof


def test_evening_activity_is_a_smoothed_share() -> None:
    assert features(state_with(), trig(), T0)["evening_activity"] == 0.5
    f = features(state_with(activity=(2, 6)), trig(), T0)
    assert f["evening_activity"] == pytest.approx(7 / 10)


def test_channel_best_probabilities_are_cached_without_sharing_the_returned_list() -> None:
    """The cache serves equal counts (however they arrive) and callers may change what they get."""
    from engine.features import channel_best_probabilities

    counts = [(10, 4, 0, 0), (10, 1, 0, 0), (0, 0, 0, 0)]
    first = channel_best_probabilities(counts)
    assert first[0] > first[1] and abs(sum(first) - 1.0) < 1e-9
    first[0] = -1.0  # a caller's change must not reach the cache
    again = channel_best_probabilities([list(row) for row in counts])
    assert again[0] > again[1] and again[0] != -1.0
    # Out-of-range counts are cleaned before the lookup: opened above sent counts as sent.
    assert channel_best_probabilities([(3, 9, 0, 0), (3, 3, 0, 0), (0, 0, 0, 0)]) == (
        channel_best_probabilities([(3, 3, 0, 0), (3, 3, 0, 0), (0, 0, 0, 0)])
    )

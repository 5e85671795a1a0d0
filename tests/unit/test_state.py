"""Customer state: folding events, duplicates, sent history, engagement, compact encoding."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.clock import ManualClock
from engine.state import (
    ALL_CHANNELS,
    MAX_CATEGORIES,
    MAX_LAST_ACTIONS,
    RECENT_EVENT_IDS,
    SENT_RETENTION_S,
    CustomerState,
    StateError,
    apply,
    apply_outcome,
    cart_value,
    decode_last_seen,
    decode_state,
    encode_state,
    is_duplicate,
    last_action_ts,
    loyalty_tier,
    record_decision,
)
from schemas.records import EVENT_TYPES, Decision, Event, Outcome

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
EPOCH0 = int(T0.timestamp())


def ev(kind: str, at: datetime = T0, event_id: str | None = None, **kw: object) -> Event:
    return Event(
        event_id=event_id or str(uuid.uuid4()),
        customer_id="c1",
        type=kind,
        ts=at,
        **kw,  # type: ignore[arg-type]
    )


def decision(
    at: datetime, action_id: str = "email:discount_10:reminder:now", **kw: object
) -> Decision:
    channel = action_id.split(":")[0]
    fields: dict[str, object] = {
        "decision_id": str(uuid.uuid4()),
        "customer_id": "c1",
        "campaign": "cart_abandonment",
        "action_id": action_id,
        "action": {"channel": channel},
        "propensity": 0.5,
        "probabilities": {},
        "scores": {},
        "features": {},
        "model_version": 1,
        "explore": False,
        "holdout": False,
        "reason": "policy",
        "cost": 0.0,
        "trigger_id": "t",
        "trigger_type": "cart_abandoned",
        "trigger_event_id": "e",
        "trigger_ts": at,
        "decided_ts": at,
        "attribution_deadline": at + timedelta(days=3),
    }
    fields.update(kw)
    return Decision(**fields)  # type: ignore[arg-type]


def test_first_event_creates_state() -> None:
    state = apply(None, ev("page_view", timezone="Europe/Paris"))
    assert state.customer_id == "c1"
    assert state.first_seen == state.last_seen == EPOCH0
    assert state.timezone == "Europe/Paris"
    assert state.purchase_count == 0


def test_apply_is_pure() -> None:
    prev = apply(None, ev("cart_add", product_id="p1", price=10.0, category="shoes"))
    before = encode_state(prev)
    nxt = apply(prev, ev("cart_add", product_id="p1", price=10.0, category="shoes"))
    assert encode_state(prev) == before
    assert nxt.cart == {"p1": (2, 10.0)} and prev.cart == {"p1": (1, 10.0)}


def test_duplicate_event_returns_same_object() -> None:
    first = ev("purchase", order_value=20.0)
    state = apply(None, first)
    assert is_duplicate(state, first.event_id)
    assert not is_duplicate(state, "other")
    assert not is_duplicate(None, first.event_id)
    assert apply(state, first) is state
    assert state.purchase_count == 1


def test_ring_forgets_old_ids_but_keeps_recent_ones() -> None:
    ids = [f"e{i}" for i in range(RECENT_EVENT_IDS + 5)]
    state = None
    for i, event_id in enumerate(ids):
        state = apply(state, ev("page_view", T0 + timedelta(seconds=i), event_id=event_id))
    assert state is not None
    assert all(is_duplicate(state, e) for e in ids[-RECENT_EVENT_IDS:])
    assert not any(is_duplicate(state, e) for e in ids[:5])


def test_cart_add_remove_and_purchase() -> None:
    state = apply(None, ev("cart_add", product_id="p1", price=10.0, quantity=2))
    state = apply(state, ev("cart_add", T0 + timedelta(minutes=1), product_id="p2", price=5.5))
    assert cart_value(state) == pytest.approx(25.5)
    state = apply(state, ev("cart_remove", T0 + timedelta(minutes=2), product_id="p1"))
    assert state.cart == {"p1": (1, 10.0), "p2": (1, 5.5)}
    state = apply(state, ev("cart_remove", T0 + timedelta(minutes=3), product_id="p2", quantity=5))
    assert state.cart == {"p1": (1, 10.0)}
    assert state.last_cart_activity == EPOCH0 + 180
    state = apply(state, ev("purchase", T0 + timedelta(minutes=4)))
    assert state.cart == {}
    assert state.purchase_count == 1
    assert state.purchase_value == pytest.approx(10.0)  # no order_value: the cart's value
    assert state.last_purchase == EPOCH0 + 240
    state = apply(state, ev("purchase", T0 + timedelta(days=1), order_value=99.0))
    assert (state.purchase_count, state.purchase_value) == (2, pytest.approx(109.0))


def test_out_of_order_event_does_not_move_times_backwards() -> None:
    state = apply(None, ev("purchase", T0, order_value=5.0))
    state = apply(state, ev("purchase", T0 - timedelta(days=2), order_value=5.0))
    assert state.last_purchase == EPOCH0
    assert state.first_seen == EPOCH0 - 2 * 86400
    assert state.last_seen == EPOCH0


def test_loyalty_tier_explicit_or_derived() -> None:
    state = apply(None, ev("page_view"))
    assert loyalty_tier(state) == "none"
    state = apply(state, ev("purchase", order_value=30.0))
    assert loyalty_tier(state) == "bronze"
    state = apply(state, ev("purchase", order_value=800.0))
    assert loyalty_tier(state) == "gold"
    state = apply(state, ev("profile_update", loyalty_tier="silver"))
    assert loyalty_tier(state) == "silver"


def test_category_affinity_is_bounded() -> None:
    state = None
    for i in range(MAX_CATEGORIES + 4):
        for _ in range(i + 1):
            state = apply(state, ev("product_view", category=f"cat{i}"))
    assert state is not None
    assert len(state.categories) == MAX_CATEGORIES
    assert "cat0" not in state.categories and f"cat{MAX_CATEGORIES + 3}" in state.categories
    for _ in range(400):
        state = apply(state, ev("purchase", category="cat11", order_value=1.0))
    assert max(state.categories.values()) <= 1000
    assert state.categories["cat11"] == max(state.categories.values())


def test_record_decision_adds_sent_and_engagement() -> None:
    clock = ManualClock(T0)
    state = apply(None, ev("page_view"))
    state = record_decision(state, decision(clock.now()))
    clock.advance(3600)
    state = record_decision(state, decision(clock.now(), "push:free_shipping:reminder:evening"))
    assert state.sent == [
        (EPOCH0, "email", "email:discount_10:reminder:now", "cart_abandonment"),
        (EPOCH0 + 3600, "push", "push:free_shipping:reminder:evening", "cart_abandonment"),
    ]
    assert state.engagement["email"] == (1, 0, 0, 0)
    assert state.engagement[ALL_CHANNELS] == (2, 0, 0, 0)
    assert last_action_ts(state, "email:discount_10:reminder:now") == EPOCH0
    assert last_action_ts(state, "never") is None


def test_record_decision_replay_is_idempotent() -> None:
    state = apply(None, ev("page_view"))
    d = decision(T0)
    once = record_decision(state, d)
    assert record_decision(once, d) is once


@pytest.mark.parametrize(
    "d",
    [
        decision(T0, action={"channel": "none"}),
        decision(T0, action={}),
        decision(T0, action={"channel": ""}),
        decision(T0, holdout=True, reason="holdout"),
    ],
)
def test_no_action_and_holdout_are_not_messages(d: Decision) -> None:
    state = apply(None, ev("page_view"))
    assert record_decision(state, d) is state


def test_sent_is_pruned_after_retention_but_last_action_remembered() -> None:
    clock = ManualClock(T0)
    state = apply(None, ev("page_view"))
    state = record_decision(state, decision(clock.now()))
    clock.advance(SENT_RETENTION_S + 60)
    state = apply(state, ev("page_view", clock.now()))
    assert state.sent == []
    assert last_action_ts(state, "email:discount_10:reminder:now") == EPOCH0
    for i in range(MAX_LAST_ACTIONS + 3):
        state = record_decision(state, decision(clock.now(), f"email:o{i}:m:now"))
        clock.advance(60)
    clock.advance(SENT_RETENTION_S)
    state = record_decision(state, decision(clock.now(), "sms:x:y:now"))
    assert [entry[2] for entry in state.sent] == ["sms:x:y:now"]
    assert len(state.last_action) == MAX_LAST_ACTIONS
    assert "email:discount_10:reminder:now" not in state.last_action


def test_apply_outcome_counts_overall_and_by_channel() -> None:
    state = apply(None, ev("page_view"))
    opened = Outcome(outcome_id="o1", customer_id="c1", type="opened", ts=T0)
    clicked = Outcome(outcome_id="o2", customer_id="c1", type="clicked", ts=T0)
    delivered = Outcome(outcome_id="o3", customer_id="c1", type="delivered", ts=T0)
    state = apply_outcome(state, opened)
    state = apply_outcome(state, clicked, "email")
    assert apply_outcome(state, delivered, "email") is state
    assert state.engagement[ALL_CHANNELS] == (0, 1, 1, 0)
    assert state.engagement["email"] == (0, 0, 1, 0)
    assert apply_outcome(state, opened, "none").engagement.get("none") is None


def test_an_outcome_id_is_counted_once_and_never_taken_for_an_event_id() -> None:
    state = apply(None, ev("page_view"))
    converted = Outcome(outcome_id="x-1", customer_id="c1", type="converted", ts=T0)
    once = apply_outcome(state, converted, "email")
    assert apply_outcome(once, converted, "email") is once  # a replay counts nothing
    assert once.engagement[ALL_CHANNELS] == (0, 0, 0, 1)
    other = Outcome(outcome_id="x-2", customer_id="c1", type="converted", ts=T0)
    assert apply_outcome(once, other, "email").engagement[ALL_CHANNELS] == (0, 0, 0, 2)
    # Outcome ids have a digest namespace of their own: an event with the same id is new.
    assert not is_duplicate(once, "x-1")
    assert apply(once, ev("page_view", event_id="x-1")) is not once


def typical_state() -> CustomerState:
    """10 purchases, 3 cart items, 5 categories, 5 sent messages, 2 timers; UUID event ids."""
    clock = ManualClock(T0)
    cats = ["electronics", "home_garden", "apparel", "books", "toys"]
    state = None
    for _ in range(20):
        state = apply(state, ev("page_view", clock.now(), timezone="Europe/Paris"))
        clock.advance(3600)
    for i in range(10):
        state = apply(state, ev("purchase", clock.now(), order_value=57.31, category=cats[i % 5]))
        clock.advance(3 * 86400)
    for i in range(3):
        state = apply(
            state, ev("cart_add", clock.now(), product_id=f"sku-{10000 + i}", price=19.99)
        )
    assert state is not None
    for i in range(5):
        action = (
            "email:discount_10:reminder:now" if i % 2 else "push:free_shipping:reminder:evening"
        )
        state = record_decision(state, decision(clock.now() - timedelta(days=5 - i), action))
    timers = {
        "cart_abandoned": (state.last_seen + 1800, str(uuid.uuid4())),
        "lapse": (state.last_seen + 60 * 86400, str(uuid.uuid4())),
    }
    return msgspec.structs.replace(state, timers=timers)


def test_typical_customer_is_under_500_bytes() -> None:
    state = typical_state()
    assert len(state.sent) == 5 and len(state.cart) == 3 and len(state.categories) == 5
    data = encode_state(state)
    assert len(data) < 500, len(data)
    assert decode_state(data) == state


def test_decode_garbage_raises_state_error() -> None:
    with pytest.raises(StateError):
        decode_state(b"\xc1garbage")
    with pytest.raises(StateError):
        decode_state(
            msgspec.msgpack.encode(
                ["c1", 0, 0, b"", 0, 0.0, None, {}, None, {}, {}, [["a"], [[0, 0, 5, 0]]]]
            )
        )


def test_old_rows_without_trailing_fields_still_decode() -> None:
    data = msgspec.msgpack.encode(["c1", 5, 6])
    assert decode_state(data) == CustomerState(customer_id="c1", first_seen=5, last_seen=6)


# ---- properties -------------------------------------------------------------------------------

event_ids = st.sampled_from([f"e{i}" for i in range(40)]) | st.uuids().map(str)
events = st.builds(
    Event,
    event_id=event_ids,
    customer_id=st.just("c1"),
    type=st.sampled_from(sorted(EVENT_TYPES)),
    ts=st.integers(min_value=0, max_value=30 * 86400).map(lambda s: T0 + timedelta(seconds=s)),
    product_id=st.none() | st.sampled_from(["p1", "p2", "p3"]),
    category=st.none() | st.sampled_from(["a", "b", "c", "d"]),
    price=st.none() | st.floats(min_value=0, max_value=1000, allow_nan=False),
    quantity=st.integers(min_value=1, max_value=5),
    order_value=st.none() | st.floats(min_value=0, max_value=1000, allow_nan=False),
    timezone=st.none() | st.sampled_from(["Europe/Paris", "Nowhere/Land"]),
    loyalty_tier=st.none() | st.sampled_from(["gold"]),
)


def fold(evs: list[Event]) -> CustomerState | None:
    state = None
    for e in evs:
        state = apply(state, e)
    return state


@given(st.lists(events, min_size=1, max_size=30), st.data())
def test_reapplying_any_recent_event_is_a_no_op(evs: list[Event], data: st.DataObject) -> None:
    state = fold(evs)
    assert state is not None
    recent = {e.event_id for e in evs}
    again = data.draw(st.sampled_from(evs))
    if again.event_id in recent and is_duplicate(state, again.event_id):
        assert apply(state, again) is state
    # Within the ring's reach every applied id is remembered.
    if len(evs) <= RECENT_EVENT_IDS:
        assert all(is_duplicate(state, e.event_id) for e in evs)


@given(st.lists(events, min_size=1, max_size=30))
def test_duplicates_anywhere_in_the_stream_change_nothing(evs: list[Event]) -> None:
    doubled = [e for e in evs for _ in range(2)]
    assert fold(doubled) == fold(evs)


@given(st.lists(events, min_size=1, max_size=30), st.lists(st.integers(0, 10 * 86400), max_size=6))
def test_state_round_trips(evs: list[Event], sends: list[int]) -> None:
    state = fold(evs)
    assert state is not None
    for offset in sends:
        state = record_decision(state, decision(T0 + timedelta(seconds=offset)))
    state = msgspec.structs.replace(
        state, timers={"cart_abandoned": (EPOCH0 + 1800, str(uuid.uuid4())), "x": (1, "e")}
    )
    assert decode_state(encode_state(state)) == state


def test_the_idle_scan_reads_last_seen_without_decoding_the_whole_state() -> None:
    state = CustomerState(customer_id="c", first_seen=10, last_seen=1234, categories={"x": 3})
    assert decode_last_seen(encode_state(state)) == 1234
    with pytest.raises(StateError):
        decode_last_seen(b"\xc1not msgpack")


def test_activity_counts_day_and_evening_events_in_local_time() -> None:
    noon_utc = datetime(2025, 3, 3, 12, tzinfo=UTC)
    state = apply(None, ev("page_view", noon_utc))  # no zone yet: 12:00 UTC is day
    assert state.activity == (1, 0)
    state = apply(state, ev("page_view", noon_utc, timezone="Asia/Tokyo"))  # 21:00 in Tokyo
    state = apply(state, ev("page_view", noon_utc + timedelta(hours=1)))  # the zone is kept
    assert state.activity == (1, 2)
    many = msgspec.structs.replace(state, activity=(1000, 7))
    assert apply(many, ev("page_view", noon_utc - timedelta(hours=6))).activity == (500, 3)


def test_an_unsubscribe_is_remembered_per_channel_and_survives_encoding() -> None:
    state = apply(None, ev("page_view"))
    unsub = Outcome(outcome_id="u1", customer_id="c1", type="unsubscribed", ts=T0)
    state = apply_outcome(state, unsub, "sms")
    state = apply_outcome(state, unsub, "email")
    assert state.unsubscribed == ["email", "sms"]
    assert apply_outcome(state, unsub, "sms") is state
    told = msgspec.structs.replace(unsub, channel="push")  # the sender named the channel
    assert apply_outcome(state, told).unsubscribed == ["email", "push", "sms"]
    assert apply_outcome(state, told, "sms") is state  # the decision's channel comes first
    # No channel known anywhere (a late report, no decision id): every channel, not none
    everywhere = apply_outcome(state, unsub)
    assert everywhere.unsubscribed == ["all", "email", "sms"]
    assert apply_outcome(everywhere, told) is everywhere
    assert state.engagement == {}  # an unsubscribe is not an engagement count
    assert decode_state(encode_state(state)) == state
    typical = msgspec.structs.replace(typical_state(), unsubscribed=["sms"])
    assert len(encode_state(typical)) < 500

"""Triggers: explicit events, first purchase, cart abandonment and lapse timers that survive restarts."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from engine.clock import ManualClock
from engine.state import CustomerState, apply, decode_state, encode_state
from engine.triggers import (
    TriggerConfig,
    detect,
    due,
    next_due,
    trigger_id,
)
from schemas.records import Event, Trigger

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
EPOCH0 = int(T0.timestamp())
CONFIG = TriggerConfig()


def ev(kind: str, at: datetime, event_id: str | None = None, **kw: object) -> Event:
    return Event(
        event_id=event_id or str(uuid.uuid4()),
        customer_id="c1",
        type=kind,
        ts=at,
        **kw,  # type: ignore[arg-type]
    )


def step(state: CustomerState | None, event: Event) -> tuple[list[Trigger], CustomerState]:
    """What the stream layer does per event: apply, then detect."""
    return detect(state, apply(state, event), event, CONFIG)


def test_config_defaults() -> None:
    assert (CONFIG.cart_abandon_after_s, CONFIG.lapse_after_days) == (1800.0, 60.0)


def test_explicit_cart_abandoned_fires_at_once_and_clears_the_timer() -> None:
    _, state = step(None, ev("cart_add", T0, product_id="p1", price=5.0))
    assert "cart_abandoned" in state.timers
    explicit = ev("cart_abandoned", T0 + timedelta(minutes=5), event_id="ab-1")
    triggers, state = step(state, explicit)
    assert triggers == [
        Trigger(
            trigger_id=trigger_id("c1", "cart_abandoned", "ab-1"),
            customer_id="c1",
            type="cart_abandoned",
            ts=explicit.ts,
            source_event_id="ab-1",
            explicit=True,
        )
    ]
    assert "cart_abandoned" not in state.timers


def test_first_purchase_then_purchase_triggers() -> None:
    triggers, state = step(None, ev("purchase", T0, event_id="p-1", order_value=10.0))
    assert [t.type for t in triggers] == ["first_purchase"]
    assert triggers[0].source_event_id == "p-1" and not triggers[0].explicit
    triggers, state = step(state, ev("purchase", T0 + timedelta(days=1), order_value=10.0))
    assert [t.type for t in triggers] == ["purchase"]


def test_nothing_for_a_duplicate() -> None:
    event = ev("purchase", T0, order_value=10.0)
    _, state = step(None, event)
    assert detect(state, apply(state, event), event, CONFIG) == ([], state)


def test_cart_timer_fires_after_inactivity() -> None:
    clock = ManualClock(T0)
    triggers, state = step(None, ev("cart_add", clock.now(), event_id="add-1", product_id="p1"))
    assert triggers == []
    assert state.timers["cart_abandoned"] == (EPOCH0 + 1800, "add-1")
    clock.advance(1799)
    assert due(state, clock.now(), CONFIG) == ([], state)
    clock.advance(1)
    fired, after = due(state, clock.now(), CONFIG)
    assert [(t.type, t.ts, t.source_event_id, t.explicit) for t in fired] == [
        ("cart_abandoned", T0 + timedelta(seconds=1800), "add-1", False)
    ]
    assert fired[0].trigger_id == trigger_id("c1", "cart_abandoned", "add-1")
    assert after.timers == {}
    assert due(after, clock.now() + timedelta(days=1), CONFIG) == ([], after)


def test_an_explicit_abandonment_of_a_cart_inactivity_already_signalled_is_no_second_trigger() -> (
    None
):
    _, state = step(None, ev("cart_add", T0, event_id="add-1", product_id="p1", price=5.0))
    fired, state = due(state, T0 + timedelta(seconds=1800), CONFIG)
    assert [t.type for t in fired] == ["cart_abandoned"]
    assert state.cart_abandoned_at == EPOCH0 + 1800
    # The shop's own abandonment signal for the same cart, later: one decision per cart.
    late = ev("cart_abandoned", T0 + timedelta(hours=1), event_id="ab-1")
    triggers, after = step(state, late)
    assert triggers == []
    assert after.cart_abandoned_at is None and after.last_seen > state.last_seen
    # The signal survives a restart (the state row keeps it).
    assert decode_state(encode_state(state)).cart_abandoned_at == EPOCH0 + 1800


def test_a_cart_that_moves_after_its_abandonment_can_be_abandoned_again() -> None:
    _, state = step(None, ev("cart_add", T0, product_id="p1", price=5.0))
    _, state = due(state, T0 + timedelta(seconds=1800), CONFIG)
    # A product view is no cart activity: still signalled.
    _, state = step(state, ev("product_view", T0 + timedelta(seconds=1900), product_id="p2"))
    assert state.cart_abandoned_at is not None
    _, state = step(state, ev("cart_add", T0 + timedelta(seconds=2000), product_id="p2"))
    assert state.cart_abandoned_at is None
    explicit = ev("cart_abandoned", T0 + timedelta(seconds=2100), event_id="ab-2")
    triggers, _ = step(state, explicit)
    assert [(t.type, t.explicit) for t in triggers] == [("cart_abandoned", True)]


def test_an_empty_cart_timer_signals_nothing() -> None:
    _, state = step(None, ev("cart_add", T0, product_id="p1", price=5.0))
    state = msgspec.structs.replace(state, cart={})
    fired, state = due(state, T0 + timedelta(seconds=1800), CONFIG)
    assert fired == [] and state.cart_abandoned_at is None


def test_timers_of_the_same_second_fall_due_apart_at_their_exact_delay() -> None:
    """Kept to the fraction of a second: never early, and not all at the second's start."""
    early, late = T0 + timedelta(milliseconds=120), T0 + timedelta(milliseconds=870)
    _, first = step(None, ev("cart_add", early, event_id="a1", product_id="p1"))
    _, second = step(None, ev("cart_add", late, event_id="a2", product_id="p1"))
    assert next_due(first) == early.timestamp() + 1800.0
    assert next_due(second) == late.timestamp() + 1800.0
    at = late + timedelta(seconds=1800) - timedelta(milliseconds=1)
    assert [t.ts for t in due(first, at, CONFIG)[0]] == [early + timedelta(seconds=1800)]
    assert due(second, at, CONFIG)[0] == []
    restored = decode_state(encode_state(second))
    assert restored.timers == second.timers


def test_a_state_row_with_whole_second_timers_reads_back_unchanged() -> None:
    """Rows written before timers kept fractions (due as an int) decode to the same due time."""
    _, state = step(None, ev("cart_add", T0, event_id="a1", product_id="p1"))
    whole = msgspec.structs.replace(state, timers={"cart_abandoned": (EPOCH0 + 1800, "a1")})
    restored = decode_state(encode_state(whole))
    assert restored.timers == {"cart_abandoned": (float(EPOCH0 + 1800), "a1")}
    fired, _ = due(restored, T0 + timedelta(seconds=1800), CONFIG)
    assert [t.ts for t in fired] == [T0 + timedelta(seconds=1800)]


def test_cart_activity_pushes_the_timer() -> None:
    _, state = step(None, ev("cart_add", T0, event_id="a1", product_id="p1"))
    _, state = step(
        state, ev("cart_add", T0 + timedelta(minutes=20), event_id="a2", product_id="p2")
    )
    assert state.timers["cart_abandoned"] == (EPOCH0 + 1200 + 1800, "a2")
    _, state = step(
        state, ev("cart_remove", T0 + timedelta(minutes=25), event_id="r1", product_id="p2")
    )
    assert state.timers["cart_abandoned"] == (EPOCH0 + 1500 + 1800, "r1")
    assert due(state, T0 + timedelta(minutes=31), CONFIG)[0] == []
    # An older event delivered late does not pull the timer earlier.
    _, late = step(state, ev("cart_add", T0 + timedelta(minutes=1), product_id="p3"))
    assert late.timers["cart_abandoned"] == (EPOCH0 + 1500 + 1800, "r1")


def test_cart_timer_cleared_by_empty_cart_checkout_or_purchase() -> None:
    _, base = step(None, ev("cart_add", T0, product_id="p1"))
    at = T0 + timedelta(minutes=1)
    _, emptied = step(base, ev("cart_remove", at, product_id="p1"))
    _, checkout = step(base, ev("checkout_started", at))
    _, bought = step(base, ev("purchase", at, order_value=3.0))
    for state in (emptied, checkout, bought):
        assert "cart_abandoned" not in state.timers
        assert due(state, T0 + timedelta(hours=2), CONFIG)[0] == []


def test_unrelated_events_keep_the_same_state_object() -> None:
    _, state = step(None, ev("cart_add", T0, product_id="p1"))
    view = ev("page_view", T0 + timedelta(minutes=1))
    applied = apply(state, view)
    assert detect(state, applied, view, CONFIG) == ([], applied)


def test_lapse_timer_armed_by_purchase_and_pushed_by_the_next() -> None:
    config = TriggerConfig(lapse_after_days=30)
    state = apply(None, ev("purchase", T0, event_id="p1", order_value=1.0))
    _, state = detect(None, state, ev("purchase", T0, event_id="p1"), config)
    assert state.timers["lapse"] == (EPOCH0 + 30 * 86400, "p1")
    second = ev("purchase", T0 + timedelta(days=10), event_id="p2", order_value=1.0)
    _, state = detect(state, apply(state, second), second, config)
    assert next_due(state) == EPOCH0 + 40 * 86400
    fired, state = due(state, T0 + timedelta(days=40), config)
    assert [(t.type, t.source_event_id) for t in fired] == [("lapse", "p2")]
    assert next_due(state) is None


def test_timers_survive_a_restart_and_replay_gives_the_same_id() -> None:
    add = ev("cart_add", T0, product_id="p1")
    _, state = step(None, add)
    restored = decode_state(encode_state(state))
    assert restored.timers == state.timers
    now = T0 + timedelta(hours=1)
    assert due(restored, now, CONFIG) == due(state, now, CONFIG)
    # A crash before the fired timer was stored: replaying the same event arms the same id.
    _, replayed = step(None, add)
    assert due(replayed, now, CONFIG)[0][0].trigger_id == due(state, now, CONFIG)[0][0].trigger_id


def test_several_due_timers_fire_oldest_first() -> None:
    _, state = step(None, ev("purchase", T0, order_value=1.0))
    _, state = step(state, ev("cart_add", T0 + timedelta(days=59), product_id="p1"))
    fired, state = due(state, T0 + timedelta(days=61), CONFIG)
    assert [t.type for t in fired] == ["cart_abandoned", "lapse"]
    assert [t.ts for t in fired] == sorted(t.ts for t in fired)
    assert state.timers == {}


def test_trigger_id_is_deterministic_and_distinct() -> None:
    a = trigger_id("c1", "lapse", "e1")
    assert a == trigger_id("c1", "lapse", "e1")
    assert len(a) == 20 and int(a, 16) >= 0
    assert (
        len(
            {
                a,
                trigger_id("c2", "lapse", "e1"),
                trigger_id("c1", "cart_abandoned", "e1"),
                trigger_id("c1", "lapse", "e2"),
            }
        )
        == 4
    )


kinds = st.sampled_from(
    ["cart_add", "cart_remove", "checkout_started", "purchase", "page_view", "cart_abandoned"]
)


@given(st.lists(st.tuples(kinds, st.integers(0, 90 * 86400)), min_size=1, max_size=25))
def test_timers_round_trip_and_due_matches(steps: list[tuple[str, int]]) -> None:
    state: CustomerState | None = None
    for i, (kind, offset) in enumerate(steps):
        event = ev(
            kind, T0 + timedelta(seconds=offset), event_id=f"e{i}", product_id="p1", order_value=1.0
        )
        _, state = step(state, event)
    assert state is not None
    restored = decode_state(encode_state(state))
    assert restored.timers == state.timers
    for due_at, _ in state.timers.values():
        assert isinstance(due_at, float)
    now = T0 + timedelta(days=200)
    fired, after = due(restored, now, CONFIG)
    assert after.timers == {}
    if not state.cart:
        assert all(t.type != "cart_abandoned" for t in fired)

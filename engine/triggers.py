"""Triggers: explicit events and timers derived from state (cart abandonment, lapse, first purchase).

Timers live in `CustomerState.timers` (kind -> (due epoch seconds, arming event id)) so they survive
restarts; a timer is due exactly its delay after the event that armed it (fractions of a second
kept); the stream layer only has to call `due()` for a customer at or after the earliest due time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import msgspec

from engine.state import CustomerState
from schemas.records import Event, Trigger

CART_ABANDONED: Final[str] = "cart_abandoned"
FIRST_PURCHASE: Final[str] = "first_purchase"
PURCHASE: Final[str] = "purchase"
LAPSE: Final[str] = "lapse"
#: Every trigger type this module makes: what a campaign's `triggers` may name.
TRIGGER_TYPES: Final[tuple[str, ...]] = (CART_ABANDONED, FIRST_PURCHASE, LAPSE, PURCHASE)
#: Timer kinds this module arms (each is also the type of the trigger it fires).
TIMER_KINDS: Final[tuple[str, ...]] = (CART_ABANDONED, LAPSE)
#: Event types that keep a cart alive (arm or push the abandonment timer).
_CART_ACTIVITY: Final[frozenset[str]] = frozenset({"cart_add", "cart_remove"})
#: Event types that end a cart episode (no abandonment trigger for it).
_CART_END: Final[frozenset[str]] = frozenset({"checkout_started", "purchase", CART_ABANDONED})


@dataclass(frozen=True, slots=True)
class TriggerConfig:
    """Timeouts of the derived triggers."""

    cart_abandon_after_s: float = 1800.0
    lapse_after_days: float = 60.0


def trigger_id(customer_id: str, kind: str, event_id: str) -> str:
    """Deterministic id (20 hex chars of blake2b) from customer, kind and the arming event id."""
    key = f"{customer_id}\x1f{kind}\x1f{event_id}".encode()
    return hashlib.blake2b(key, digest_size=10, person=b"kairos-trigger").hexdigest()


def _make(customer_id: str, kind: str, ts: datetime, event_id: str, explicit: bool) -> Trigger:
    """Build a Trigger with its deterministic id."""
    return Trigger(
        trigger_id=trigger_id(customer_id, kind, event_id),
        customer_id=customer_id,
        type=kind,
        ts=ts,
        source_event_id=event_id,
        explicit=explicit,
    )


def _arm(timers: dict[str, tuple[float, str]], kind: str, due_at: float, event_id: str) -> None:
    """Arm or push a timer in place; an out-of-order older event never pulls it earlier."""
    current = timers.get(kind)
    if current is None or due_at >= current[0]:
        timers[kind] = (due_at, event_id)


def arm_timers(state: CustomerState, event: Event, config: TriggerConfig) -> CustomerState:
    """Arm, push or clear the timers this event affects; returns the same object if none changed."""
    kind = event.type
    if kind not in _CART_ACTIVITY and kind not in _CART_END:
        return state
    ts = event.ts.timestamp()
    if state.cart_abandoned_at is not None:  # the cart moved, or its episode ended
        state = msgspec.structs.replace(state, cart_abandoned_at=None)
    timers = dict(state.timers)
    if kind in _CART_ACTIVITY:
        if state.cart:
            due_at = ts + config.cart_abandon_after_s
            _arm(timers, CART_ABANDONED, due_at, event.event_id)
        else:
            timers.pop(CART_ABANDONED, None)
    else:
        timers.pop(CART_ABANDONED, None)
    if kind == PURCHASE:
        _arm(timers, LAPSE, ts + config.lapse_after_days * 86400.0, event.event_id)
    if timers == state.timers:
        return state
    return msgspec.structs.replace(state, timers=timers)


def detect(
    prev: CustomerState | None, state: CustomerState, event: Event, config: TriggerConfig
) -> tuple[list[Trigger], CustomerState]:
    """Immediate triggers of an applied event, and the state with its timers armed or cleared.

    `state` is `apply(prev, event)`; when it is `prev` itself (a duplicate) nothing happens.
    """
    if state is prev:
        return [], state
    triggers: list[Trigger] = []
    kind = event.type
    if kind == CART_ABANDONED:
        # Not when inactivity already signalled this cart (no cart activity since): one
        # abandonment decision per cart, whichever signal comes first.
        if prev is None or prev.cart_abandoned_at is None:
            triggers.append(
                _make(event.customer_id, CART_ABANDONED, event.ts, event.event_id, True)
            )
    elif kind == PURCHASE:
        before = prev.purchase_count if prev is not None else 0
        if before == 0 and state.purchase_count == 1:
            triggers.append(
                _make(event.customer_id, FIRST_PURCHASE, event.ts, event.event_id, False)
            )
        else:
            triggers.append(_make(event.customer_id, PURCHASE, event.ts, event.event_id, False))
    return triggers, arm_timers(state, event, config)


def next_due(state: CustomerState) -> float | None:
    """The earliest timer due time (epoch seconds), for scheduling the next `due()` call."""
    return min((due_at for due_at, _ in state.timers.values()), default=None)


def due(
    state: CustomerState, now: datetime, config: TriggerConfig
) -> tuple[list[Trigger], CustomerState]:
    """Fire the timers due at `now` (oldest first) and return the state without them."""
    if not state.timers:
        return [], state
    now_s = now.timestamp()
    fired = sorted(
        (due_at, kind, event_id)
        for kind, (due_at, event_id) in state.timers.items()
        if due_at <= now_s
    )
    if not fired:
        return [], state
    timers = {k: v for k, v in state.timers.items() if v[0] > now_s}
    triggers = [
        _make(state.customer_id, kind, datetime.fromtimestamp(due_at, UTC), event_id, False)
        for due_at, kind, event_id in fired
        if not (kind == CART_ABANDONED and not state.cart)
    ]
    signalled = state.cart_abandoned_at
    for trigger in triggers:
        if trigger.type == CART_ABANDONED:
            signalled = trigger.ts.timestamp()
    return triggers, msgspec.structs.replace(state, timers=timers, cart_abandoned_at=signalled)

"""Per-customer state: a compact msgpack Struct updated by pure functions from events and decisions.

Times inside the state are whole epoch seconds (UTC) held as `int` (which types as `float`, and
msgpack writes in 5 bytes instead of 9). The stored form is `_Wire`: the same fields by position,
with the strings of `sent` interned and UUID-shaped timer event ids packed to 16 bytes, so a
typical customer stays under 500 bytes. New fields must only ever be appended, with defaults.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from schemas.records import Decision, Event, Outcome

#: How long sent messages are kept: the longest guardrail window (frequency caps per week).
SENT_RETENTION_S: Final[float] = 7 * 86400.0
#: Hard bound on the sent list, whatever the timestamps say.
MAX_SENT: Final[int] = 64
#: How many recent event ids are remembered to drop redelivered duplicates. Redelivery replays
#: the seconds since the last offset commit, which hold far fewer events of one customer.
RECENT_EVENT_IDS: Final[int] = 16
#: Bytes of blake2b kept per remembered event id (40 bits: a false duplicate ~1.5e-11 per event).
EVENT_DIGEST_BYTES: Final[int] = 5
#: Categories kept in the affinity map (the weakest is dropped to make room).
MAX_CATEGORIES: Final[int] = 8
#: When a category's count passes this, every count is halved (exponential forgetting).
CATEGORY_CAP: Final[int] = 1000
#: Affinity weight of each event type towards its category.
CATEGORY_WEIGHTS: Final[Mapping[str, int]] = {"product_view": 1, "cart_add": 2, "purchase": 3}
#: Action ids whose last send time is remembered after the send leaves `sent`.
MAX_LAST_ACTIONS: Final[int] = 16
#: Local hour from which an event counts as evening activity (see CustomerState.activity).
EVENING_HOUR: Final[int] = 18
#: When an activity count passes this, both are halved (exponential forgetting).
ACTIVITY_CAP: Final[int] = 1000
#: Engagement counter positions: engagement[channel] = (sent, opened, clicked, converted).
SENT, OPENED, CLICKED, CONVERTED = 0, 1, 2, 3
#: Engagement key for totals over all channels (outcomes whose channel is unknown count here only).
ALL_CHANNELS: Final[str] = "all"
#: Loyalty tiers, lowest first; `loyalty_tier(state)` returns one of these or an explicit value.
LOYALTY_TIERS: Final[tuple[str, ...]] = ("none", "bronze", "silver", "gold", "platinum")
#: Channel values that mean "no message" (the no-action arm).
NO_CHANNELS: Final[frozenset[str | None]] = frozenset({None, "", "none"})

_OUTCOME_SLOT: Final[Mapping[str, int]] = {
    "opened": OPENED,
    "clicked": CLICKED,
    "converted": CONVERTED,
}

SentEntry = tuple[int, str, str, str]
"""One sent message: (ts epoch seconds, channel, action_id, campaign)."""
Engagement = tuple[int, int, int, int]
"""Counters of one channel: (sent, opened, clicked, converted)."""


class StateError(ValueError):
    """Stored state bytes that cannot be decoded."""


class CustomerState(msgspec.Struct, frozen=True, array_like=True):
    """Everything the core remembers about one customer; every field has a default."""

    customer_id: str = ""
    first_seen: int = 0
    last_seen: int = 0
    recent_ids: bytes = b""
    """Ring of blake2b digests (EVENT_DIGEST_BYTES each) of the last RECENT_EVENT_IDS event ids
    and counted outcome ids (outcome_digest: a namespace of its own)."""
    purchase_count: int = 0
    purchase_value: float = 0.0
    last_purchase: int | None = None
    cart: dict[str, tuple[int, float]] = {}
    """Product id -> (quantity, unit price)."""
    last_cart_activity: int | None = None
    categories: dict[str, int] = {}
    """Category -> affinity count (bounded to MAX_CATEGORIES, halved past CATEGORY_CAP)."""
    engagement: dict[str, Engagement] = {}
    """Channel (or ALL_CHANNELS) -> (sent, opened, clicked, converted), lifetime counts."""
    sent: list[SentEntry] = []
    """Messages of the last SENT_RETENTION_S, oldest first."""
    last_action: dict[str, int] = {}
    """Action id -> last send time, only for sends that have left `sent` (see last_action_ts)."""
    loyalty_tier: str | None = None
    """Tier given explicitly by events; None means derive it (see loyalty_tier())."""
    timezone: str | None = None
    timers: dict[str, tuple[float, str]] = {}
    """Timer kind -> (due epoch seconds, id of the event that armed it).

    The one time in the state kept to the fraction of a second: a timer is due exactly its delay
    after the event that armed it. In whole seconds every timer armed within the same second fell
    due at once, a burst of decisions at each second's start, up to a second early. Rows written
    with whole seconds read back unchanged (an int is a valid float).
    """
    activity: tuple[int, int] = (0, 0)
    """Events before / from EVENING_HOUR in the customer's local time (halved past ACTIVITY_CAP)."""
    unsubscribed: list[str] = []
    """Channels the customer unsubscribed from (an `unsubscribed` outcome of a message there)."""
    cart_abandoned_at: float | None = None
    """When the inactivity timer signalled this cart's abandonment (epoch s); None once the cart
    moves again or its episode ends. An explicit `cart_abandoned` event for a cart already
    signalled is no second trigger (triggers.detect)."""


def epoch_seconds(ts: datetime) -> int:
    """Whole epoch seconds (floor) of an aware datetime: the unit of every time in the state."""
    return math.floor(ts.timestamp())


class _Wire(msgspec.Struct, array_like=True):
    """The stored layout of CustomerState: same positions, `sent` interned, timer ids packed."""

    customer_id: str = ""
    first_seen: int = 0
    last_seen: int = 0
    recent_ids: bytes = b""
    purchase_count: int = 0
    purchase_value: float = 0.0
    last_purchase: int | None = None
    cart: dict[str, tuple[int, float]] = {}
    last_cart_activity: int | None = None
    categories: dict[str, int] = {}
    engagement: dict[str, Engagement] = {}
    sent: tuple[list[str], list[tuple[int, int, int, int]]] = ([], [])
    last_action: dict[str, int] = {}
    loyalty_tier: str | None = None
    timezone: str | None = None
    timers: dict[str, tuple[float, str, bytes]] = {}
    activity: tuple[int, int] = (0, 0)
    unsubscribed: list[str] = []
    cart_abandoned_at: float | None = None


_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(_Wire)
_FIELDS: Final[tuple[str, ...]] = CustomerState.__struct_fields__
_SENT_AT: Final[int] = _FIELDS.index("sent")
_TIMERS_AT: Final[int] = _FIELDS.index("timers")
assert _Wire.__struct_fields__ == _FIELDS, "_Wire must mirror CustomerState field by field"


def _pack_timer(due: float, event_id: str) -> tuple[float, str, bytes]:
    """(due, "", 16 raw bytes) for a canonical lowercase UUID id (37 -> 19 bytes), else (due, id, b"")."""
    if len(event_id) == 36 and event_id[8] == "-":
        try:
            packed = uuid.UUID(event_id)
        except ValueError:
            return (due, event_id, b"")
        if str(packed) == event_id:
            return (due, "", packed.bytes)
    return (due, event_id, b"")


def _unpack_timer(due: float, event_id: str, packed: bytes) -> tuple[float, str]:
    """Inverse of _pack_timer."""
    return (due, str(uuid.UUID(bytes=packed)) if packed else event_id)


# Stored one-letter codes of the timer kinds triggers.py arms; other kinds are stored verbatim
# (a one-letter one escaped with "=", so it can never be read back as a code).
_KIND_CODES: Final[dict[str, str]] = {"cart_abandoned": "a", "lapse": "l"}
_CODE_KINDS: Final[dict[str, str]] = {code: kind for kind, code in _KIND_CODES.items()}


def _kind_key(kind: str) -> str:
    """The stored key of a timer kind."""
    code = _KIND_CODES.get(kind)
    if code is not None:
        return code
    return "=" + kind if len(kind) <= 1 or kind[0] == "=" else kind


def _key_kind(key: str) -> str:
    """Inverse of _kind_key."""
    if key[:1] == "=":
        return key[1:]
    return _CODE_KINDS.get(key, key)


def encode_state(state: CustomerState) -> bytes:
    """Serialize state to compact msgpack for the state table (see the module doc for layout)."""
    values = list(msgspec.structs.astuple(state))
    if state.sent:
        names: dict[str, int] = {}
        rows = [
            (
                ts,
                names.setdefault(channel, len(names)),
                names.setdefault(action_id, len(names)),
                names.setdefault(campaign, len(names)),
            )
            for ts, channel, action_id, campaign in state.sent
        ]
        values[_SENT_AT] = (list(names), rows)
    else:
        values[_SENT_AT] = ([], [])
    if state.timers:
        values[_TIMERS_AT] = {
            _kind_key(kind): _pack_timer(due, eid) for kind, (due, eid) in state.timers.items()
        }
    return _ENCODER.encode(_Wire(*values))


class _Activity(msgspec.Struct, array_like=True):
    """The leading fields of the stored layout: enough to tell how long a customer was idle."""

    customer_id: str = ""
    first_seen: int = 0
    last_seen: int = 0


_ACTIVITY_DECODER: Final = msgspec.msgpack.Decoder(_Activity)
assert _Activity.__struct_fields__ == _FIELDS[:3], "_Activity must be a prefix of the layout"


def decode_last_seen(data: bytes | bytearray | memoryview) -> int:
    """Last event time (epoch s) of stored state, decoding only its first fields: a cheap scan.

    Used by the sweep that finds idle customers to expire, which reads every row of the table.
    """
    try:
        return _ACTIVITY_DECODER.decode(data).last_seen
    except msgspec.DecodeError as exc:
        raise StateError(f"cannot decode customer state: {exc}") from None


def decode_state(data: bytes | bytearray | memoryview) -> CustomerState:
    """Deserialize state written by encode_state; raises StateError on corrupt bytes."""
    try:
        wire = _DECODER.decode(data)
    except msgspec.DecodeError as exc:
        raise StateError(f"cannot decode customer state: {exc}") from None
    values = list(msgspec.structs.astuple(wire))
    names, rows = wire.sent
    try:
        values[_SENT_AT] = [(ts, names[c], names[a], names[k]) for ts, c, a, k in rows]
    except IndexError:
        raise StateError("cannot decode customer state: bad string index in sent") from None
    if wire.timers:
        try:
            values[_TIMERS_AT] = {_key_kind(k): _unpack_timer(*t) for k, t in wire.timers.items()}
        except ValueError as exc:
            raise StateError(f"cannot decode customer state: bad timer id: {exc}") from None
    return CustomerState(*values)


def event_digest(event_id: str) -> bytes:
    """The short digest under which an event id is remembered for duplicate detection."""
    return hashlib.blake2b(event_id.encode(), digest_size=EVENT_DIGEST_BYTES).digest()


def outcome_digest(outcome_id: str) -> bytes:
    """The short digest under which a counted outcome id is remembered (never an event's)."""
    return hashlib.blake2b(
        outcome_id.encode(), digest_size=EVENT_DIGEST_BYTES, person=b"kairos-outcome"
    ).digest()


def _ring_has(ring: bytes, digest: bytes) -> bool:
    """Find digest at an aligned position in the ring."""
    i = ring.find(digest)
    while i != -1:
        if i % EVENT_DIGEST_BYTES == 0:
            return True
        i = ring.find(digest, i + 1)
    return False


def _ring_push(ring: bytes, digest: bytes) -> bytes:
    """The ring with digest appended, the oldest dropped past RECENT_EVENT_IDS."""
    return (ring + digest)[-RECENT_EVENT_IDS * EVENT_DIGEST_BYTES :]


def is_duplicate(state: CustomerState | None, event_id: str) -> bool:
    """Tell whether this event id is among the last RECENT_EVENT_IDS applied to the state."""
    return state is not None and _ring_has(state.recent_ids, event_digest(event_id))


def cart_value(state: CustomerState) -> float:
    """Value of the cart: sum of quantity x unit price."""
    return sum(qty * price for qty, price in state.cart.values())


def loyalty_tier(state: CustomerState) -> str:
    """The explicit tier when an event gave one, else one derived from purchase count and value."""
    if state.loyalty_tier:
        return state.loyalty_tier
    n, value = state.purchase_count, state.purchase_value
    if n == 0:
        return "none"
    if n >= 20 or value >= 2000.0:
        return "platinum"
    if n >= 10 or value >= 750.0:
        return "gold"
    if n >= 4 or value >= 250.0:
        return "silver"
    return "bronze"


def _add_category(categories: dict[str, int], category: str, weight: int) -> dict[str, int]:
    """Return a copy of the affinity map with weight added, bounded in size and magnitude."""
    out = dict(categories)
    if category not in out and len(out) >= MAX_CATEGORIES:
        weakest = min(out, key=lambda name: (out[name], name))
        del out[weakest]
    count = out.get(category, 0) + weight
    out[category] = count
    if count > CATEGORY_CAP:
        out = {name: c // 2 for name, c in out.items() if c // 2 > 0}
    return out


def _prune_sent(
    sent: list[SentEntry], last_action: dict[str, int], now: int
) -> tuple[list[SentEntry], dict[str, int]]:
    """Drop sends older than SENT_RETENTION_S (and beyond MAX_SENT), remembering their action times."""
    cutoff = now - SENT_RETENTION_S
    keep_from = 0
    while keep_from < len(sent) and sent[keep_from][0] < cutoff:
        keep_from += 1
    keep_from = max(keep_from, len(sent) - MAX_SENT)
    if keep_from == 0:
        return sent, last_action
    actions = dict(last_action)
    for ts, _channel, action_id, _campaign in sent[:keep_from]:
        if action_id not in actions or ts > actions[action_id]:
            actions.pop(action_id, None)
            actions[action_id] = ts
    while len(actions) > MAX_LAST_ACTIONS:
        del actions[min(actions, key=lambda a: (actions[a], a))]
    return sent[keep_from:], actions


def last_action_ts(state: CustomerState, action_id: str) -> int | None:
    """When this action was last sent to the customer (epoch seconds), from `sent` or older memory."""
    for ts, _channel, sent_action, _campaign in reversed(state.sent):
        if sent_action == action_id:
            return ts
    return state.last_action.get(action_id)


@lru_cache(maxsize=1024)
def zone_named(name: str) -> ZoneInfo | None:
    """The ZoneInfo of an IANA name, None when unknown (cached: lookups are slow)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def _count_activity(
    activity: tuple[int, int], ts: datetime, timezone: str | None
) -> tuple[int, int]:
    """Count one event as day or evening activity in the customer's local time (UTC if unknown)."""
    zone = zone_named(timezone) if timezone else None
    hour = (ts.astimezone(zone) if zone is not None else ts.astimezone(UTC)).hour
    day, evening = activity
    if hour >= EVENING_HOUR:
        evening += 1
    else:
        day += 1
    if max(day, evening) > ACTIVITY_CAP:
        day, evening = day // 2, evening // 2
    return (day, evening)


def apply(state: CustomerState | None, event: Event) -> CustomerState:
    """Fold one event into the state (pure); a duplicate event id returns the same object."""
    digest = event_digest(event.event_id)
    ts = epoch_seconds(event.ts)
    if state is None:
        state = CustomerState(customer_id=event.customer_id, first_seen=ts, last_seen=ts)
    elif _ring_has(state.recent_ids, digest):
        return state
    changes: dict[str, object] = {
        "recent_ids": _ring_push(state.recent_ids, digest),
        "first_seen": min(state.first_seen, ts),
        "last_seen": max(state.last_seen, ts),
    }
    if event.timezone:
        changes["timezone"] = event.timezone
    changes["activity"] = _count_activity(
        state.activity, event.ts, event.timezone or state.timezone
    )
    if event.loyalty_tier:
        changes["loyalty_tier"] = event.loyalty_tier
    kind = event.type
    weight = CATEGORY_WEIGHTS.get(kind)
    if weight is not None and event.category:
        changes["categories"] = _add_category(state.categories, event.category, weight)
    if kind == "cart_add":
        key = event.product_id or event.category or "?"
        qty, price = state.cart.get(key, (0, 0.0))
        cart = dict(state.cart)
        cart[key] = (qty + event.quantity, event.price if event.price is not None else price)
        changes["cart"] = cart
        changes["last_cart_activity"] = max(state.last_cart_activity or ts, ts)
    elif kind == "cart_remove":
        key = event.product_id or event.category or "?"
        cart = dict(state.cart)
        if key in cart:
            qty, price = cart[key]
            if qty - event.quantity > 0:
                cart[key] = (qty - event.quantity, price)
            else:
                del cart[key]
        changes["cart"] = cart
        changes["last_cart_activity"] = max(state.last_cart_activity or ts, ts)
    elif kind == "checkout_started":
        changes["last_cart_activity"] = max(state.last_cart_activity or ts, ts)
    elif kind == "purchase":
        if event.order_value is not None:
            value = event.order_value
        elif event.price is not None:
            value = event.price * event.quantity
        else:
            value = cart_value(state)
        changes["purchase_count"] = state.purchase_count + 1
        changes["purchase_value"] = state.purchase_value + value
        changes["last_purchase"] = max(state.last_purchase or ts, ts)
        changes["cart"] = {}
        changes["last_cart_activity"] = max(state.last_cart_activity or ts, ts)
    if state.sent and state.sent[0][0] < ts - SENT_RETENTION_S:
        changes["sent"], changes["last_action"] = _prune_sent(state.sent, state.last_action, ts)
    return msgspec.structs.replace(state, **changes)


def _bump(engagement: dict[str, Engagement], key: str, slot: int) -> None:
    """Increment one counter of one channel in place (on a copy owned by the caller)."""
    counts = list(engagement.get(key, (0, 0, 0, 0)))
    counts[slot] += 1
    engagement[key] = (counts[0], counts[1], counts[2], counts[3])


def is_message(decision: Decision) -> bool:
    """True when the decision sends something (not the no-action arm, not a holdout)."""
    return not decision.holdout and decision.action.get("channel") not in NO_CHANNELS


def record_decision(state: CustomerState, decision: Decision) -> CustomerState:
    """Count a sent message for caps, cooldowns and engagement rates; no-action/holdout is a no-op."""
    if not is_message(decision):
        return state
    channel = decision.action["channel"]
    ts = epoch_seconds(decision.decided_ts)
    entry: SentEntry = (ts, channel, decision.action_id, decision.campaign)
    if entry in state.sent:
        return state
    sent = list(state.sent)
    bisect.insort(sent, entry)
    sent, last_action = _prune_sent(sent, state.last_action, max(ts, state.last_seen))
    engagement = dict(state.engagement)
    _bump(engagement, channel, SENT)
    _bump(engagement, ALL_CHANNELS, SENT)
    return msgspec.structs.replace(state, sent=sent, last_action=last_action, engagement=engagement)


def apply_outcome(
    state: CustomerState, outcome: Outcome, channel: str | None = None
) -> CustomerState:
    """Count an open, click or conversion overall, and for its channel when the caller knows it.

    Counted once per outcome id: the id joins the state's ring of recent ids, so an outcome
    replayed after a crash that kept this state row but lost the pending row's note of the
    outcome (the Faust runtime writes the two tables one after the other) is not counted again.
    An unsubscribe is remembered (`unsubscribed`) so that no campaign messages the customer there
    again (engine.guardrails): from the decision's channel, else the outcome's own `channel`, else
    from every channel (ALL_CHANNELS): a customer who asked to hear nothing more must not be
    messaged because the sender's report could not be tied to one message.
    """
    known = channel not in NO_CHANNELS and channel is not None and channel != ALL_CHANNELS
    if outcome.type == "unsubscribed":
        if not known:
            channel = ALL_CHANNELS if outcome.channel in NO_CHANNELS else outcome.channel
        if channel in state.unsubscribed or ALL_CHANNELS in state.unsubscribed:
            return state
        return msgspec.structs.replace(
            state, unsubscribed=sorted([*state.unsubscribed, str(channel)])
        )
    slot = _OUTCOME_SLOT.get(outcome.type)
    if slot is None:
        return state
    digest = outcome_digest(outcome.outcome_id)
    if _ring_has(state.recent_ids, digest):
        return state
    engagement = dict(state.engagement)
    _bump(engagement, ALL_CHANNELS, slot)
    if known and channel is not None:
        _bump(engagement, channel, slot)
    return msgspec.structs.replace(
        state, engagement=engagement, recent_ids=_ring_push(state.recent_ids, digest)
    )

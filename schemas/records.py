"""Wire records: the msgspec Structs that travel as JSON on the Kafka topics."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final

import msgspec

#: Event types a producer may send; anything else is rejected as ``unknown_type``.
EVENT_TYPES: Final[frozenset[str]] = frozenset(
    {
        "page_view",
        "product_view",
        "cart_add",
        "cart_remove",
        "checkout_started",
        "purchase",
        "cart_abandoned",
        "session_start",
        "profile_update",
        "erasure_requested",
    }
)

#: The event that asks for a customer's data to be deleted (right to erasure): the worker removes
#: the customer's table rows, whatever they hold, instead of applying it.
ERASURE_REQUESTED: Final[str] = "erasure_requested"

#: Outcome types a sender or analytics system may report.
OUTCOME_TYPES: Final[frozenset[str]] = frozenset(
    {"delivered", "opened", "clicked", "converted", "unsubscribed", "bounced"}
)

#: Channels a customer can be seen on or reached through: the usual values of Event.channel, which
#: is free text and not checked against them (an event from a new source is not worth losing).
CHANNELS: Final[frozenset[str]] = frozenset({"web", "app", "email", "sms", "push"})

#: The only wire schema version this code reads and writes.
SCHEMA_VERSION: Final[int] = 1

# Constrained scalar types: they become JSON Schema constraints and are checked on decode.
UtcDatetime = Annotated[datetime, msgspec.Meta(tz=True, description="ISO 8601 with Z or offset")]
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Money = Annotated[float, msgspec.Meta(ge=0.0, le=1e12)]
SignedMoney = Annotated[float, msgspec.Meta(ge=-1e12, le=1e12)]
Quantity = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
Probability = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
PropertyValue = str | int | float | bool


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """A customer event from web, app or shop; keyed by customer_id on events.v1."""

    schema_version: int = SCHEMA_VERSION
    event_id: Id
    customer_id: Id
    type: str
    ts: UtcDatetime
    product_id: Id | None = None
    category: Name | None = None
    price: Money | None = None
    quantity: Quantity = 1
    order_value: Money | None = None
    channel: str | None = None
    timezone: Name | None = None
    loyalty_tier: Name | None = None
    properties: dict[str, PropertyValue] = {}


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """What happened after a message (delivery, open, click, conversion...); outcomes.v1."""

    schema_version: int = SCHEMA_VERSION
    outcome_id: Id
    customer_id: Id
    type: str
    ts: UtcDatetime
    decision_id: Id | None = None
    campaign: Name | None = None
    value: SignedMoney = 0.0
    channel: Name | None = None
    """The channel of the message, when the sender knows it: an unsubscribe that cannot be tied
    to an open decision (late, or without decision id) blocks this channel, or every channel."""


class Trigger(msgspec.Struct, frozen=True, kw_only=True):
    """A reason to decide: an explicit event or a timer derived from state (not on a topic)."""

    trigger_id: Id
    customer_id: Id
    type: str
    ts: UtcDatetime
    source_event_id: Id
    explicit: bool


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """A decision with everything needed to learn from it and evaluate it later; decisions.v1.

    `features` (the model's inputs, about half the record) is always in the pending table and
    in rewards.v1, where learning and evaluation read it. On the action topic, which senders
    read, it is left out unless the worker is asked for it: see `codec.encode_action`.
    """

    schema_version: int = SCHEMA_VERSION
    decision_id: Id
    customer_id: Id
    campaign: Name
    action_id: Name
    action: dict[str, str]
    propensity: Probability
    probabilities: dict[str, float]
    scores: dict[str, float]
    features: dict[str, float] = {}
    model_version: int
    explore: bool
    holdout: bool
    reason: str
    cost: float
    trigger_id: Id
    trigger_type: str
    trigger_event_id: Id
    trigger_ts: UtcDatetime
    decided_ts: UtcDatetime
    attribution_deadline: UtcDatetime
    send_at: UtcDatetime | None = None
    """When the sender should deliver the message: decided_ts for the "now" slot, the next local
    slot hour (the customer's zone) for a deferred one. Absent from records made before it."""


class RewardRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A decision joined with its outcomes (or its expiry) and the reward; rewards.v1."""

    schema_version: int = SCHEMA_VERSION
    decision: Decision
    reward: float
    outcome_ids: list[str]
    outcome_types: list[str]
    expired: bool
    joined_ts: UtcDatetime
    learned_version: int | None = None
    """The campaign's model version once the worker that joined this reward had learned it
    (local learning); None when a learner is left to learn it. A learner that starts from a
    snapshot of version V skips the rewards with learned_version <= V: they are in it."""


#: Every wire record type, by the file stem of its JSON Schema.
RECORD_TYPES: Final[dict[str, type[msgspec.Struct]]] = {
    "event": Event,
    "outcome": Outcome,
    "trigger": Trigger,
    "decision": Decision,
    "reward": RewardRecord,
}

"""A seeded synthetic customer population: hidden personas and the event streams they produce.

Every customer belongs to a persona that Kairos never sees. What Kairos does see is behaviour
that correlates with it, as in a real shop: what they browse (category affinities), how much they
spend per order (average order value), how often they buy (frequency, loyalty tier), when they
shop (hour of day), and, once messaged, which channel they open (engagement rates). The hidden
responses to messages live in engine.simulator.responses.

Customers are pure data (`Customer`) plus a small mutable life (`Life`: cart, purchases, messages
received, unsubscribed channels) that only the simulator owns. Event ids are deterministic.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo

from schemas.records import Event

__all__ = [
    "CHANNELS",
    "PERSONAS",
    "TIMEZONES",
    "Customer",
    "Life",
    "Persona",
    "loyalty_tier_of",
    "make_population",
    "next_session_at",
    "persona",
    "purchase_event",
    "session_events",
]

#: Message channels the simulated customers can prefer.
CHANNELS: Final[tuple[str, ...]] = ("email", "sms", "push")
#: Time zones of the simulated customers.
TIMEZONES: Final[tuple[str, ...]] = ("Europe/Paris", "America/New_York", "Asia/Tokyo", "UTC")
#: Every category a customer may browse (each persona prefers a few).
ALL_CATEGORIES: Final[tuple[str, ...]] = (
    "designer",
    "jewelry",
    "basics",
    "deals",
    "electronics",
    "gadgets",
    "essentials",
    "beauty",
    "home",
    "books",
)
#: Loyalty points window: tiers count the order value of the last LOYALTY_WINDOW_DAYS.
LOYALTY_WINDOW_DAYS: Final[float] = 120.0
#: Points needed for each tier, highest first.
LOYALTY_THRESHOLDS: Final[tuple[tuple[str, float], ...]] = (
    ("platinum", 2500.0),
    ("gold", 900.0),
    ("silver", 250.0),
    ("bronze", 0.01),
)


@dataclass(frozen=True, slots=True)
class Persona:
    """A hidden customer type: how it shops and how it answers messages."""

    name: str
    share: float
    """Fraction of the population."""
    sessions_per_day: float
    price: tuple[float, float]
    """Range of product prices it buys (drives average order value)."""
    categories: tuple[str, ...]
    """Categories it mostly browses."""
    cart_rate: float
    """Probability a session adds to the cart."""
    buy_rate: float
    """Probability a session with a cart buys at once (else it abandons)."""
    explicit_abandon: float
    """Probability the shop sends an explicit cart_abandoned event (else Kairos derives it)."""
    organic: Mapping[str, float]
    """Probability of buying within the window with no message, by trigger kind (cart, purchase)."""
    offer_lift: Mapping[str, float]
    """Probability a message with this offer converts someone who would not have bought."""
    channel_weights: Mapping[str, float]
    """How likely each channel is the customer's preferred one."""
    open_rate: float
    """Probability of opening a message on the preferred channel."""
    fatigue: float
    """Response lost per message received in the last 7 days (multiplicative)."""
    do_not_disturb: bool = False
    """Any message makes the customer less likely to buy (and may unsubscribe them)."""
    cart_window_h: float = 2.0
    """A cart reminder works only if it arrives within this many hours of the abandonment."""
    evening_share: float = 0.5
    """Share of customers who shop (and read messages) in the evening rather than by day."""


def _offers(
    no_offer: float, free_shipping: float, discount_10: float, exclusive_preview: float
) -> dict[str, float]:
    """Offer -> conversion lift, in the campaign's offer names."""
    return {
        "no_offer": no_offer,
        "free_shipping": free_shipping,
        "discount_10": discount_10,
        "exclusive_preview": exclusive_preview,
    }


#: The hidden personas (shares sum to 1).
PERSONAS: Final[tuple[Persona, ...]] = (
    Persona(
        name="premium",
        share=0.15,
        sessions_per_day=0.35,
        price=(120.0, 400.0),
        categories=("designer", "jewelry"),
        cart_rate=0.6,
        buy_rate=0.35,
        explicit_abandon=0.5,
        organic={"cart": 0.12, "purchase": 0.04},
        offer_lift=_offers(0.05, 0.04, 0.0, 0.40),
        channel_weights={"email": 0.75, "sms": 0.05, "push": 0.20},
        open_rate=0.5,
        fatigue=0.15,
        evening_share=0.7,
    ),
    Persona(
        name="price_conscious",
        share=0.25,
        sessions_per_day=0.5,
        price=(8.0, 45.0),
        categories=("basics", "deals"),
        cart_rate=0.6,
        buy_rate=0.3,
        explicit_abandon=0.5,
        organic={"cart": 0.06, "purchase": 0.03},
        offer_lift=_offers(0.03, 0.14, 0.38, 0.02),
        channel_weights={"email": 0.15, "sms": 0.15, "push": 0.70},
        open_rate=0.45,
        fatigue=0.12,
        evening_share=0.5,
    ),
    Persona(
        name="cart_abandoner",
        share=0.15,
        sessions_per_day=0.6,
        price=(30.0, 150.0),
        categories=("electronics", "gadgets"),
        cart_rate=0.8,
        buy_rate=0.15,
        explicit_abandon=0.4,
        organic={"cart": 0.08, "purchase": 0.02},
        offer_lift=_offers(0.30, 0.32, 0.34, 0.05),
        channel_weights={"email": 0.2, "sms": 0.6, "push": 0.2},
        open_rate=0.55,
        fatigue=0.10,
        evening_share=0.3,
    ),
    Persona(
        name="sure_thing",
        share=0.15,
        sessions_per_day=0.5,
        price=(20.0, 90.0),
        categories=("essentials", "beauty"),
        cart_rate=0.7,
        buy_rate=0.5,
        explicit_abandon=0.5,
        organic={"cart": 0.65, "purchase": 0.25},
        offer_lift=_offers(0.02, 0.02, 0.03, 0.01),
        channel_weights={"email": 0.34, "sms": 0.33, "push": 0.33},
        open_rate=0.35,
        fatigue=0.10,
        evening_share=0.5,
    ),
    Persona(
        name="do_not_disturb",
        share=0.10,
        sessions_per_day=0.35,
        price=(25.0, 120.0),
        categories=("home", "books"),
        cart_rate=0.6,
        buy_rate=0.4,
        explicit_abandon=0.5,
        organic={"cart": 0.35, "purchase": 0.10},
        offer_lift=_offers(0.0, 0.0, 0.0, 0.0),
        channel_weights={"email": 0.34, "sms": 0.33, "push": 0.33},
        open_rate=0.04,
        fatigue=0.0,
        do_not_disturb=True,
        evening_share=0.5,
    ),
    Persona(
        name="browser",
        share=0.20,
        sessions_per_day=0.45,
        price=(10.0, 200.0),
        categories=ALL_CATEGORIES,
        cart_rate=0.4,
        buy_rate=0.2,
        explicit_abandon=0.5,
        organic={"cart": 0.03, "purchase": 0.01},
        offer_lift=_offers(0.01, 0.05, 0.07, 0.01),
        channel_weights={"email": 0.34, "sms": 0.33, "push": 0.33},
        open_rate=0.15,
        fatigue=0.2,
        evening_share=0.5,
    ),
)
_BY_NAME: Final[dict[str, Persona]] = {p.name: p for p in PERSONAS}


@dataclass(frozen=True, slots=True)
class Customer:
    """One simulated customer: its hidden persona and preferences, and its own random seed."""

    customer_id: str
    persona: Persona
    timezone: str
    channel: str
    """Preferred channel: messages elsewhere are opened and acted on far less."""
    evening: bool
    """Shops and reads in the evening (18-21 local) rather than by day (9-18 local)."""
    seed: int

    @property
    def active_hours(self) -> tuple[int, int]:
        """Local [start, end) hours when the customer shops and reads messages."""
        return (18, 21) if self.evening else (9, 18)


@dataclass(slots=True)
class Life:
    """What the simulator remembers of one customer as the simulation runs (mutable, private)."""

    rng: random.Random
    cart: dict[str, tuple[int, float]] = field(default_factory=dict)
    purchases: list[tuple[float, float]] = field(default_factory=list)
    """(epoch seconds, order value) of every purchase (for loyalty points)."""
    messages: list[float] = field(default_factory=list)
    """Epoch seconds of every message received (for fatigue)."""
    unsubscribed: set[str] = field(default_factory=set)
    """Channels the customer unsubscribed from: messages there are not delivered."""
    events: int = 0
    """Events emitted so far (for deterministic event ids)."""

    def cart_value(self) -> float:
        """Value of the cart: quantity x unit price."""
        return sum(q * p for q, p in self.cart.values())

    def messages_since(self, since: float) -> int:
        """Messages received after `since` (epoch seconds)."""
        return sum(1 for ts in self.messages if ts > since)

    def order_value(self) -> float:
        """Value of the next order: the cart, or the average past order when the cart is empty."""
        value = self.cart_value()
        if value > 0:
            return value
        if self.purchases:
            return sum(v for _, v in self.purchases) / len(self.purchases)
        return 50.0


def persona(name: str) -> Persona:
    """Look a persona up by name (KeyError when unknown)."""
    return _BY_NAME[name]


def _pick(rng: random.Random, weights: Mapping[str, float]) -> str:
    """Draw a key with probability proportional to its weight."""
    names = list(weights)
    return rng.choices(names, weights=[weights[n] for n in names])[0]


def make_population(size: int, seed: int, prefix: str = "sim") -> list[Customer]:
    """Draw `size` customers from the personas, reproducibly from the seed."""
    rng = random.Random(f"population:{seed}")
    customers: list[Customer] = []
    shares = {p.name: p.share for p in PERSONAS}
    for i in range(size):
        kind = _BY_NAME[_pick(rng, shares)]
        customers.append(
            Customer(
                customer_id=f"{prefix}-{i:06d}",
                persona=kind,
                timezone=rng.choice(TIMEZONES),
                channel=_pick(rng, kind.channel_weights),
                evening=rng.random() < kind.evening_share,
                seed=rng.getrandbits(63),
            )
        )
    return customers


def loyalty_tier_of(life: Life, now_s: float) -> str:
    """The loyalty programme's tier: order value of the last 120 days (rises and falls)."""
    since = now_s - LOYALTY_WINDOW_DAYS * 86400.0
    points = sum(value for ts, value in life.purchases if ts > since)
    for tier, threshold in LOYALTY_THRESHOLDS:
        if points >= threshold:
            return tier
    return "none"


def next_session_at(customer: Customer, life: Life, after: datetime) -> datetime:
    """When the customer next visits: exponential gaps, mostly inside their active hours."""
    rng = life.rng
    gap_days = rng.expovariate(customer.persona.sessions_per_day)
    local = (after + timedelta(days=gap_days)).astimezone(ZoneInfo(customer.timezone))
    if rng.random() < 0.8:
        start, end = customer.active_hours
        hour = rng.uniform(start, end - 0.5)
    else:
        hour = rng.uniform(8.0, 22.5)
    local = local.replace(hour=int(hour), minute=int((hour % 1) * 60), second=rng.randrange(60))
    at = local.astimezone(UTC)
    if at <= after:
        at += timedelta(days=1)
    return at


def _event(customer: Customer, life: Life, kind: str, ts: datetime, **fields: object) -> Event:
    """Build the customer's next event with a deterministic id and the current loyalty tier."""
    life.events += 1
    return Event(
        event_id=f"{customer.customer_id}-e{life.events}",
        customer_id=customer.customer_id,
        type=kind,
        ts=ts,
        timezone=customer.timezone,
        loyalty_tier=loyalty_tier_of(life, ts.timestamp()),
        **fields,  # type: ignore[arg-type]
    )


def purchase_event(
    customer: Customer, life: Life, ts: datetime, rng: random.Random | None = None
) -> Event:
    """A purchase of the cart (or of a typical order when it is empty); updates the life."""
    value = round(life.order_value(), 2)
    category = _category(customer, rng or life.rng)
    life.purchases.append((ts.timestamp(), value))
    life.cart.clear()
    return _event(customer, life, "purchase", ts, order_value=value, category=category)


def _category(customer: Customer, rng: random.Random) -> str:
    """A category to browse: mostly the persona's, sometimes any."""
    if rng.random() < 0.8:
        return rng.choice(customer.persona.categories)
    return rng.choice(ALL_CATEGORIES)


def session_events(customer: Customer, life: Life, start: datetime) -> list[Event]:
    """One visit: stale cart items removed, views, maybe a cart add, then a purchase or not.

    An abandoned cart ends either with an explicit `cart_abandoned` event (from the shop) or in
    silence (Kairos derives the abandonment from its inactivity timer).
    """
    rng = life.rng
    kind = customer.persona
    ts = start
    out: list[Event] = []
    for product in list(life.cart):
        quantity = life.cart.pop(product)[0]
        out.append(_event(customer, life, "cart_remove", ts, product_id=product, quantity=quantity))
    out.append(_event(customer, life, "session_start", ts, channel=rng.choice(("web", "app"))))
    viewed: list[tuple[str, str, float]] = []
    for _ in range(1 + int(rng.random() * 3)):
        ts += timedelta(seconds=rng.randrange(20, 240))
        category = _category(customer, rng)
        low, high = kind.price
        price = round(math.exp(rng.uniform(math.log(low), math.log(high))), 2)
        product = f"p-{category}-{rng.randrange(500):03d}"
        viewed.append((product, category, price))
        out.append(
            _event(
                customer,
                life,
                "product_view",
                ts,
                product_id=product,
                category=category,
                price=price,
            )
        )
    if rng.random() >= kind.cart_rate:
        return out
    product, category, price = viewed[-1]
    ts += timedelta(seconds=rng.randrange(30, 180))
    life.cart[product] = (1, price)
    out.append(
        _event(customer, life, "cart_add", ts, product_id=product, category=category, price=price)
    )
    if rng.random() < kind.buy_rate:
        ts += timedelta(seconds=rng.randrange(60, 600))
        out.append(_event(customer, life, "checkout_started", ts))
        ts += timedelta(seconds=rng.randrange(30, 300))
        out.append(purchase_event(customer, life, ts))
    elif rng.random() < kind.explicit_abandon:
        ts += timedelta(minutes=rng.uniform(10.0, 25.0))
        out.append(_event(customer, life, "cart_abandoned", ts))
    return out

"""The hidden truth: how a simulated customer answers an action, as exact outcome probabilities.

`response()` turns (customer, what the simulator knows of their life, trigger, action, when) into
`Response`: the probabilities of the outcomes a message can cause. The outcomes are independent
draws (opened, then clicked given opened; converted; unsubscribed), so the expected reward of an
action under any campaign reward definition is an exact finite sum (`expected_reward`), and
`sample()` draws the outcomes that sum is the expectation of. The oracle and the regret use the
expectation, so they are exact, not estimated.

The model, per message (no-action keeps only the organic purchase):

    p(convert) = organic * (1 - dnd_loss) + (1 - organic) * lift
    lift = offer_lift[offer] * channel * time_of_day * fatigue * cart_intent

- channel: 1 on the customer's preferred channel, 0.3 elsewhere, 0 once unsubscribed there;
- time of day: 1 when the message arrives in the customer's active hours, 0.5 otherwise;
- fatigue: (1 - persona.fatigue) ** messages received in the last 7 days;
- cart intent: a cart reminder works fully within `cart_window_h` of the abandonment, 0.3 later;
- do-not-disturb customers: lift 0, a message removes 60% of their organic purchase and
  unsubscribes 8% of them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from typing import Final
from zoneinfo import ZoneInfo

from engine.campaign import Action, Campaign
from engine.rewards import outcome_reward, reward_of
from engine.simulator.population import Customer, Life
from schemas.records import Outcome

__all__ = ["Response", "expected_reward", "response", "sample"]

OTHER_CHANNEL: Final[float] = 0.3
OFF_HOURS: Final[float] = 0.5
LATE_CART_REMINDER: Final[float] = 0.3
DND_LOSS: Final[float] = 0.6
DND_UNSUBSCRIBE: Final[float] = 0.08
BASE_UNSUBSCRIBE: Final[float] = 0.002
UNSUBSCRIBE_PER_MESSAGE: Final[float] = 0.003
CLICK_GIVEN_OPEN: Final[float] = 0.3
MAX_CONVERT: Final[float] = 0.95
WEEK_S: Final[float] = 7 * 86400.0


@dataclass(frozen=True, slots=True)
class Response:
    """Outcome probabilities of one action for one customer at one moment, and the order value."""

    opened: float
    clicked: float
    """Probability of a click (a click implies an open)."""
    converted: float
    unsubscribed: float
    value: float
    """Order value of a conversion (the converted outcome's value)."""
    message: bool


def response(
    customer: Customer,
    life: Life,
    trigger_type: str,
    trigger_ts: datetime,
    action: Action,
    send_ts: datetime,
) -> Response:
    """The hidden outcome probabilities of `action` sent at `send_ts` for this trigger."""
    kind = customer.persona
    cart = trigger_type == "cart_abandoned"
    organic = kind.organic["cart" if cart else "purchase"]
    value = life.order_value()
    if not action.is_message:
        return Response(0.0, 0.0, organic, 0.0, value, False)
    if action.channel in life.unsubscribed:
        return Response(0.0, 0.0, organic, 0.0, value, True)
    recent = life.messages_since(send_ts.timestamp() - WEEK_S)
    channel = 1.0 if action.channel == customer.channel else OTHER_CHANNEL
    hour = send_ts.astimezone(ZoneInfo(customer.timezone)).hour
    start, end = customer.active_hours
    time_of_day = 1.0 if start <= hour < end else OFF_HOURS
    fatigue = (1.0 - kind.fatigue) ** recent
    opened = min(1.0, kind.open_rate * channel * fatigue)
    if kind.do_not_disturb:
        converted = organic * (1.0 - DND_LOSS)
        unsubscribed = DND_UNSUBSCRIBE
    else:
        intent = 1.0
        if cart and (send_ts - trigger_ts).total_seconds() > kind.cart_window_h * 3600.0:
            intent = LATE_CART_REMINDER
        lift = kind.offer_lift.get(action.offer, 0.0) * channel * time_of_day * fatigue * intent
        converted = organic + (1.0 - organic) * lift
        unsubscribed = BASE_UNSUBSCRIBE + UNSUBSCRIBE_PER_MESSAGE * recent
    return Response(
        opened=opened,
        clicked=opened * CLICK_GIVEN_OPEN,
        converted=min(converted, MAX_CONVERT),
        unsubscribed=min(unsubscribed, 1.0),
        value=value,
        message=True,
    )


@dataclass(frozen=True, slots=True)
class _Stub:
    """An outcome as reward_of reads it."""

    outcome_id: str
    type: str
    value: float


def _scenarios(r: Response) -> list[tuple[float, tuple[_Stub, ...]]]:
    """Every joint outcome (open/click, convert, unsubscribe) with its probability."""
    engagement = [
        (1.0 - r.opened, ()),
        (r.opened - r.clicked, (_Stub("o", "opened", 0.0),)),
        (r.clicked, (_Stub("o", "opened", 0.0), _Stub("c", "clicked", 0.0))),
    ]
    out: list[tuple[float, tuple[_Stub, ...]]] = []
    for p_e, e in engagement:
        for conv in (False, True):
            p_c = r.converted if conv else 1.0 - r.converted
            c = (_Stub("v", "converted", r.value),) if conv else ()
            for unsub in (False, True):
                p_u = r.unsubscribed if unsub else 1.0 - r.unsubscribed
                u = (_Stub("u", "unsubscribed", 0.0),) if unsub else ()
                p = p_e * p_c * p_u
                if p > 0.0:
                    out.append((p, (*e, *c, *u)))
    return out


def expected_reward(campaign: Campaign, r: Response) -> float:
    """The exact expected reward of the response under the campaign's reward definition."""
    spec = campaign.reward
    if spec.combine == "sum" and spec.default == 0.0:
        # Each type appears at most once and contributes a fixed amount: linearity applies.
        total = 0.0
        for kind, p in (
            ("opened", r.opened),
            ("clicked", r.clicked),
            ("converted", r.converted),
            ("unsubscribed", r.unsubscribed),
        ):
            if p > 0.0:
                contribution = outcome_reward(
                    campaign, _Stub("x", kind, r.value if kind == "converted" else 0.0)
                )
                if contribution is not None:
                    total += p * contribution
        return total
    return sum(p * reward_of(campaign, outcomes) for p, outcomes in _scenarios(r))


def sample(
    r: Response,
    rng: random.Random,
    customer_id: str,
    decision_id: str,
    campaign: str,
    send_ts: datetime,
) -> list[Outcome]:
    """Draw the outcomes of one decision (ids derived from the decision id), oldest first."""
    from datetime import timedelta

    out: list[Outcome] = []

    def add(kind: str, minutes: float, value: float = 0.0) -> None:
        out.append(
            Outcome(
                outcome_id=f"{decision_id}-{kind}",
                customer_id=customer_id,
                type=kind,
                ts=send_ts + timedelta(minutes=minutes),
                decision_id=decision_id,
                campaign=campaign,
                value=value,
            )
        )

    u_open, u_click, u_conv, u_unsub = rng.random(), rng.random(), rng.random(), rng.random()
    if r.message:
        add("delivered", 0.5)
    if u_open < r.opened:
        add("opened", rng.uniform(2.0, 30.0))
        if u_click * r.opened < r.clicked:
            add("clicked", 31.0 + rng.uniform(0.0, 10.0))
    if u_conv < r.converted:
        add("converted", 45.0 + rng.uniform(0.0, 60.0), round(r.value, 2))
    if u_unsub < r.unsubscribed:
        add("unsubscribed", 40.0 + rng.uniform(0.0, 5.0))
    out.sort(key=lambda o: o.ts)
    return out

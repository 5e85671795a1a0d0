"""The campaign the simulator evaluates Kairos on: one lifecycle nudge over every dimension it models.

It is not one of the shipped examples (engine/campaigns/): it exists so that every hidden
preference of the simulated customers (offer, channel, send time, doing nothing) has an arm, and
it is kept as TOML text so a worker can run the very same file (`kairos simulate --kafka`).

Its model settings were chosen on this simulator (seeds 0-2, runs of 30,000-100,000
decisions; BENCHMARKS.md, Simulation): the factored model (one ridge model shared by the 21 arms,
so the baseline and each channel's and offer's effect are learned from every decision), a short
list of context features (fewer weights to learn from noisy conversions), the purchase rate
crossed with the trigger type (`model_crosses`: buying anyway after an abandoned cart and after a
purchase are different habits; 67% -> 71% of the oracle at 100,000 decisions), message blocks with
twins scaled by P(the action's channel is the customer's most opened) (`model_scale`: one weight
for an offer's effect on whichever channel they read), and squarecb with gamma 100 instead of
30. They use nothing hidden: every feature comes from the events, outcomes and messages a
worker sees.
"""

from __future__ import annotations

import re
import tomllib
from typing import Final

from engine.campaign import Campaign, parse_campaign

__all__ = ["SIMULATION_CAMPAIGN_TOML", "simulation_campaign", "simulation_campaign_toml"]

SIMULATION_CAMPAIGN_TOML: Final[str] = """\
# The customer simulator's campaign (engine/simulator): after an abandoned cart or a purchase,
# nudge by email, SMS or push, now or this evening, with no offer, free shipping, 10% off or an
# exclusive preview -- or do nothing ("sure things" buy anyway, "do-not-disturbs" buy less).
name = "simulated_nudge"
description = "Nudge after a cart abandonment or a purchase (customer simulator)"
salt = "simulated-nudge"
triggers = ["cart_abandoned", "first_purchase", "purchase"]
objective = "uplift"
# One ridge model over (context x action dimensions), shared by every arm (engine.models).
model = "factored"
# Each message's blocks also get a twin scaled by P(its channel is the one they open most):
# an offer works on the channel they read, one weight for all three channels.
model_scale = "open_best_{channel}"
# What the model sees: who they are (categories, order value, purchases a day), which channel
# they open (shares and P(best) of open rates), when they are active, the trigger, fatigue.
model_features = [
  "bias", "category_*", "avg_order_log", "purchase_rate", "open_share_*", "open_best_*",
  "evening_activity", "hour_*", "trigger_cart_abandoned", "trigger_purchase",
  "trigger_first_purchase", "trigger_age", "fatigue_week",
]
# How often they buy, apart for each trigger: who buys anyway after an abandoned cart is not who
# buys again after a purchase.
model_crosses = ["trigger_cart_abandoned*purchase_rate", "trigger_purchase*purchase_rate"]

[actions.dimensions]
channel = ["email", "sms", "push"]
offer = ["no_offer", "free_shipping", "discount_10", "exclusive_preview"]
message = ["nudge"]
slot = ["now", "evening"]

[[actions.exclude]]
channel = "sms"
slot = "evening"

[actions.slot_hours]
evening = 19

[costs]
channel = { email = 0.002, sms = 0.03, push = 0.001 }
offer = { free_shipping = 0.05, discount_10 = 0.1, exclusive_preview = 0.02 }

[exploration]
kind = "squarecb"
gamma = 100

[guardrails]
cooldown_s = 14400
quiet_hours = { start = 21, end = 8 }
holdout_share = 0.1
caps = [
  { scope = "overall", max = 3, window_s = 86400 },
  { scope = "channel", max = 2, window_s = 86400 },
]

[reward]
combine = "sum"
attribution_window_s = 86400
default = 0.0

[reward.outcomes]
converted = 1.0
unsubscribed = -1.0
"""

_WINDOW_RE: Final = re.compile(r"^attribution_window_s = \d+$", re.M)


def simulation_campaign_toml(attribution_window_s: int | None = None) -> str:
    """The campaign's TOML text, optionally with a shorter attribution window (compressed time)."""
    if attribution_window_s is None:
        return SIMULATION_CAMPAIGN_TOML
    return _WINDOW_RE.sub(
        f"attribution_window_s = {int(attribution_window_s)}", SIMULATION_CAMPAIGN_TOML
    )


def simulation_campaign(attribution_window_s: int | None = None) -> Campaign:
    """Parse the simulator's campaign (validated like any campaign file)."""
    return parse_campaign(tomllib.loads(simulation_campaign_toml(attribution_window_s)))

"""The decision context: a flat dict of small, finite floats built from customer state and trigger.

Most values are scaled to about [0, 1] (log1p for money and counts, sin/cos for cycles), so linear
models learn without a scaler. The few raw values that campaign eligibility rules are written in
(`cart_value >= 30`, `frequency >= 2`) are listed in RAW_FEATURES; drop them with `model_view()`
where a model should only see scaled inputs.
"""

from __future__ import annotations

import math
from datetime import datetime
from functools import lru_cache
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from engine.state import (
    ALL_CHANNELS,
    CLICKED,
    CONVERTED,
    LOYALTY_TIERS,
    OPENED,
    SENT,
    CustomerState,
    Engagement,
    loyalty_tier,
)
from engine.triggers import TRIGGER_TYPES  # each has a one-hot feature; others: trigger_other
from schemas.records import Trigger

#: Channels with engagement-rate features.
MESSAGE_CHANNELS: Final[tuple[str, ...]] = ("email", "sms", "push")
#: Categories with an affinity-share feature (the strongest first).
TOP_CATEGORIES: Final[int] = 5
#: Unscaled features kept for eligibility rules (currency units, counts, days).
RAW_FEATURES: Final[frozenset[str]] = frozenset({"cart_value", "frequency", "monetary"})
#: Bound on every feature's absolute value (and the value of anything non-finite).
FEATURE_LIMIT: Final[float] = 1e6

_DAY: Final[float] = 86400.0
_TWO_PI: Final[float] = 2.0 * math.pi
# Prior rates (and their weight in pseudo-messages) for smoothed engagement rates.
_PRIOR_N: Final[float] = 2.0
_PRIOR: Final[tuple[tuple[str, int, float], ...]] = (
    ("open", OPENED, 0.2),  # = _OPEN_PRIOR
    ("click", CLICKED, 0.05),
    ("convert", CONVERTED, 0.02),
)
# purchase_rate: tenure floor (days) and log scale (log1p of ten purchases a day is about 2.4).
_MIN_RATE_DAYS: Final[float] = 7.0
_RATE_SCALE: Final[float] = math.log1p(10.0)
# channel_best_probabilities: the open-rate grid (cell midpoints) and the open rate prior.
_GRID: Final = (np.arange(200) + 0.5) / 200
_LOG_X: Final = np.log(_GRID)
_LOG_1X: Final = np.log1p(-_GRID)
_OPEN_PRIOR: Final[float] = 0.2
_TIER_KEYS: Final[dict[str, str]] = {tier: f"loyalty_{tier}" for tier in LOYALTY_TIERS}
_TRIGGER_KEYS: Final[dict[str, str]] = {t: f"trigger_{t}" for t in TRIGGER_TYPES}
_UTC: Final[ZoneInfo] = ZoneInfo("UTC")
_NO_COUNTS: Final[Engagement] = (0, 0, 0, 0)
# Engagement feature names, spelled once: per channel, (name, counter slot, prior pseudo-count).
_RATE_KEYS: Final[tuple[tuple[str, tuple[tuple[str, int, float], ...]], ...]] = tuple(
    (
        channel,
        tuple((f"{name}_rate_{channel}", slot, prior * _PRIOR_N) for name, slot, prior in _PRIOR),
    )
    for channel in (ALL_CHANNELS, *MESSAGE_CHANNELS)
)
_OPEN_RATE_KEYS: Final[tuple[str, ...]] = tuple(f"open_rate_{c}" for c in MESSAGE_CHANNELS)
_CHANNEL_KEYS: Final[tuple[tuple[str, str], ...]] = tuple(
    (f"open_share_{c}", f"open_best_{c}") for c in MESSAGE_CHANNELS
)
# The one-hot blocks of each tier and trigger type (None: unknown), built once per value.
_TIER_ONE_HOT: Final[dict[str | None, dict[str, float]]] = {
    tier_key: {key: 1.0 if key == tier_key else 0.0 for key in _TIER_KEYS.values()}
    for tier_key in (*_TIER_KEYS.values(), None)
}
_TRIGGER_ONE_HOT: Final[dict[str | None, dict[str, float]]] = {
    trigger_key: {
        **{key: 1.0 if key == trigger_key else 0.0 for key in _TRIGGER_KEYS.values()},
        "trigger_other": 0.0 if trigger_key else 1.0,
    }
    for trigger_key in (*_TRIGGER_KEYS.values(), None)
}


@lru_cache(maxsize=1024)
def _zone(name: str | None) -> ZoneInfo:
    """The customer's ZoneInfo, UTC when absent or unknown (cached: lookups are slow)."""
    if not name:
        return _UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return _UTC


def _log_scaled(value: float, scale: float) -> float:
    """log1p of a non-negative value divided by scale (values below 0 count as 0)."""
    return math.log1p(value) / scale if value > 0.0 else 0.0


def _days_since(now_s: float, then: float | None) -> float:
    """Non-negative days between then and now."""
    if then is None:
        return 0.0
    days = (now_s - then) / _DAY
    return days if days > 0.0 else 0.0  # max(0.0, days), NaN included


def channel_best_probabilities(counts: list[Engagement]) -> list[float]:
    """P(each channel has the highest open rate), from Beta posteriors of the open counts.

    Each channel's open rate gets a Beta posterior (the smoothed rates' prior: mean 0.2, weight
    2 messages) from its (sent, opened) counts; the probability that it beats every other
    channel is integrated on a grid. Few messages give about equal shares, many a clear winner:
    unlike an argmax of the rates, it says how sure the evidence is, which is what a linear
    model needs to weigh a channel's value by.
    """
    clean = []
    for row in counts:
        sent = max(row[SENT], 0)
        clean.append((sent, min(max(row[OPENED], 0), sent)))
    return list(_best_probabilities(tuple(clean)))


@lru_cache(maxsize=16384)
def _best_probabilities(counts: tuple[tuple[int, int], ...]) -> tuple[float, ...]:
    """channel_best_probabilities for clean (sent, opened) pairs, cached.

    Most customers have few messages, so the same small counts recur across decisions; the grid
    integration (~60 us) was the largest single cost of a decision (profile of a mixed stream).
    """
    prior = _OPEN_PRIOR * _PRIOR_N
    pmfs = []
    for sent, opened in counts:
        log_pdf = (opened + prior - 1.0) * _LOG_X + (
            sent - opened + _PRIOR_N - prior - 1.0
        ) * _LOG_1X
        pdf = np.exp(log_pdf - log_pdf.max())
        pmfs.append(pdf / pdf.sum())
    # P(X_k < x) at each grid point, a tie at the same point counting half.
    cdfs = [np.cumsum(pmf) - 0.5 * pmf for pmf in pmfs]
    out = []
    for i, pmf in enumerate(pmfs):
        beat = pmf.copy()
        for j, cdf in enumerate(cdfs):
            if j != i:
                beat *= cdf
        out.append(float(beat.sum()))
    total = sum(out)
    return tuple(p / total for p in out) if total > 0.0 else (1.0 / len(out),) * len(out)


def features(state: CustomerState, trigger: Trigger, now: datetime) -> dict[str, float]:
    """Build the context for a decision: RFM, cart, categories, time, engagement, fatigue, tier.

    Engagement includes which channel the customer opens most (open_share_*, open_best_*) and
    RFM includes purchases per day (purchase_rate): the observable traces of channel preference
    and of buying without being asked.
    """
    now_s = now.timestamp()
    count = state.purchase_count
    value = state.purchase_value
    cart_total = 0.0
    cart_items = 0
    for qty, price in state.cart.values():
        cart_total += qty * price
        cart_items += qty
    out: dict[str, float] = {
        "bias": 1.0,
        "has_purchased": 1.0 if count > 0 else 0.0,
        "recency": _log_scaled(_days_since(now_s, state.last_purchase), 6.0) if count else 1.0,
        "last_seen": _log_scaled(_days_since(now_s, state.last_seen), 6.0),
        "tenure": _log_scaled(_days_since(now_s, state.first_seen), 7.0),
        "frequency": float(count),
        "frequency_log": _log_scaled(count, 4.0),
        "monetary": value,
        "monetary_log": _log_scaled(value, 10.0),
        "avg_order_log": _log_scaled(value / count, 7.0) if count else 0.0,
        # Purchases per day since first seen (a week at least): who buys often buys anyway.
        "purchase_rate": _log_scaled(
            10.0 * count / max(_days_since(now_s, state.first_seen), _MIN_RATE_DAYS), _RATE_SCALE
        ),
        "cart_value": cart_total,
        "cart_value_log": _log_scaled(cart_total, 7.0),
        "cart_items": _log_scaled(cart_items, 3.0),
        "cart_idle": _log_scaled(_days_since(now_s, state.last_cart_activity) * 1440.0, 10.0),
    }
    # Category affinities: share of the strongest categories, and how spread the interest is.
    cats = state.categories
    if cats:
        total = sum(cats.values())
        top = sorted(cats.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_CATEGORIES]
        for name, c in top:
            out[f"category_{name}"] = c / total if total > 0 else 0.0
        out["category_count"] = len(cats) / 8.0
    else:
        out["category_count"] = 0.0
    # Local time of day and weekday, cyclic.
    local = now.astimezone(_zone(state.timezone))
    hour = (local.hour + local.minute / 60.0) * (_TWO_PI / 24.0)
    weekday = (local.weekday() + hour / _TWO_PI) * (_TWO_PI / 7.0)
    # When the customer is usually active: the share of their events in the local evening.
    day_events, evening_events = state.activity
    out["evening_activity"] = (max(evening_events, 0) + 1.0) / (
        max(day_events, 0) + max(evening_events, 0) + 2.0
    )
    out["hour_sin"] = math.sin(hour)
    out["hour_cos"] = math.cos(hour)
    out["weekday_sin"] = math.sin(weekday)
    out["weekday_cos"] = math.cos(weekday)
    # Engagement: smoothed rates overall and per message channel, and message volume.
    # (Comparisons below spell out max(x, 0) / min(x, 1.0) without the builtins' call cost.)
    engagement = state.engagement
    for channel, rates in _RATE_KEYS:
        counts = engagement.get(channel, _NO_COUNTS)
        sent = counts[SENT]
        denom = (0 if sent < 0 else sent) + _PRIOR_N
        for key, slot, pseudo in rates:
            n = counts[slot]
            rate = ((0 if n < 0 else n) + pseudo) / denom
            out[key] = 1.0 if rate > 1.0 else rate
    # Which channel the customer reads: each channel's share of the smoothed open rates, and
    # the probability that it is the one they open most (see channel_best_probabilities).
    opens = [out[key] for key in _OPEN_RATE_KEYS]
    total_open = sum(opens)
    best = channel_best_probabilities(
        [engagement.get(channel, _NO_COUNTS) for channel in MESSAGE_CHANNELS]
    )
    for (share_key, best_key), rate, p_best in zip(_CHANNEL_KEYS, opens, best, strict=True):
        out[share_key] = rate / total_open if total_open > 0.0 else 0.0
        out[best_key] = p_best
    out["messages_total"] = _log_scaled(engagement.get(ALL_CHANNELS, _NO_COUNTS)[SENT], 5.0)
    # Fatigue: messages in the last day and week.
    day_ago, week_ago = now_s - _DAY, now_s - 7 * _DAY
    last_day = last_week = 0
    for entry in state.sent:
        ts = entry[0]
        if ts >= week_ago:
            last_week += 1
            if ts >= day_ago:
                last_day += 1
    out["fatigue_day"] = _log_scaled(last_day, 2.0)
    out["fatigue_week"] = _log_scaled(last_week, 3.0)
    # Loyalty tier one-hot (an unknown explicit tier sets none of them).
    out.update(_TIER_ONE_HOT[_TIER_KEYS.get(loyalty_tier(state))])
    # Trigger type one-hot (trigger_other for the rest), explicit flag, age.
    out.update(_TRIGGER_ONE_HOT[_TRIGGER_KEYS.get(trigger.type)])
    out["trigger_explicit"] = 1.0 if trigger.explicit else 0.0
    age_min = (now - trigger.ts).total_seconds() / 60.0
    out["trigger_age"] = _log_scaled(age_min if age_min > 0.0 else 0.0, 10.0)
    # Guarantee finite, bounded values whatever the state holds (e.g. corrupt or extreme numbers).
    limit = FEATURE_LIMIT
    for key, v in out.items():
        if not -limit <= v <= limit:
            out[key] = 0.0 if v != v else math.copysign(limit, v)
    return out


@lru_cache(maxsize=1)
def feature_names() -> frozenset[str]:
    """Every feature name `features()` sets, but the per-category `category_<name>` shares.

    What a campaign's eligibility rules may name: a rule on any other name would read 0 forever.
    """
    epoch = datetime(2026, 1, 1, tzinfo=ZoneInfo("UTC"))
    trigger = Trigger(
        trigger_id="",
        customer_id="",
        type=TRIGGER_TYPES[0],
        ts=epoch,
        source_event_id="",
        explicit=True,
    )
    return frozenset(features(CustomerState(), trigger, epoch))


def model_view(feats: dict[str, float]) -> dict[str, float]:
    """The features without the raw (unscaled) ones, for models that want only scaled inputs.

    A copy with the few raw keys deleted: same order as filtering every key, a fraction of the cost.
    """
    out = dict(feats)
    for key in RAW_FEATURES:
        out.pop(key, None)
    return out

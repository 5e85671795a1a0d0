"""Guardrails: pure filters that take actions out of the eligible set before the bandit chooses.

The history is the customer's recent messages, `sent` entries `(ts_epoch, channel, action_id,
campaign)`; entries whose channel is "none" or whose action is "no_action" are not messages and
are ignored.

- Frequency caps count messages from every campaign (fatigue is per customer): an action is
  removed when one more message on its channel would exceed an overall or per-channel cap, i.e.
  when the cap's window (ending now) already holds `max` messages that the cap counts.
- Cooldown counts this campaign's own sends of the same action: an action sent less than
  `cooldown_s` ago is removed. Sends older than the history (the state keeps a week) are given
  as `last_sent` (action id -> epoch seconds, without the campaign): those count for any
  campaign with that action id, erring on the side of not messaging.
- Quiet hours are judged in the customer's local time (their IANA time zone, else the
  campaign's `default_timezone`) at the moment the message would go out: immediately for slot
  "now", at the slot's local send hour for a deferred slot ("evening", "next_morning"). So during
  quiet hours only deferred slots whose hour lies outside them survive; a campaign with only
  "now" sends nothing then.
- Unsubscribed: a channel the customer unsubscribed from (CustomerState.unsubscribed) is never
  messaged again.
- The holdout group is stable: blake2b(salt, customer id) mapped to [0, 1), below the share.

The no-action arm is never removed.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from engine.campaign import IMMEDIATE_SLOT, NO_ACTION_ID, NO_CHANNEL, Action, Campaign, Cap
from engine.state import zone_named

__all__ = [
    "GUARDRAIL_ORDER",
    "GuardrailResult",
    "SentEntry",
    "apply_guardrails",
    "blocked_by",
    "customer_zone",
    "holdout_draw",
    "in_holdout",
    "is_message",
    "send_time",
]

SentEntry = tuple[float, str, str, str]
"""One past message: (ts epoch seconds, channel, action_id, campaign)."""

GUARDRAIL_ORDER: tuple[str, ...] = (
    "unsubscribed",
    "quiet_hours",
    "frequency_cap",
    "channel_cap",
    "cooldown",
)
"""The order guardrails are checked in; an action is charged to the first that blocks it."""


@dataclass(frozen=True, slots=True)
class GuardrailResult:
    """The actions left after guardrails, and which guardrail removed each of the others."""

    allowed: tuple[str, ...]
    removed: Mapping[str, str] = field(default_factory=dict)
    """Removed action id -> guardrail name (unsubscribed, quiet_hours, caps, cooldown)."""

    def counts(self) -> dict[str, int]:
        """Return how many actions each guardrail removed (for metrics)."""
        return dict(Counter(self.removed.values()))

    def main_reason(self) -> str | None:
        """Name the guardrail that removed the most actions (ties in check order), if any."""
        counts = self.counts()
        if not counts:
            return None
        return max(GUARDRAIL_ORDER, key=lambda name: counts.get(name, 0))


def is_message(entry: SentEntry) -> bool:
    """Tell whether a history entry is a real message (not a no-action or holdout record)."""
    return entry[1] != NO_CHANNEL and entry[2] != NO_ACTION_ID


def customer_zone(timezone: str | None, default: str = "UTC") -> ZoneInfo:
    """Resolve the customer's time zone, falling back to the default for unknown or bad names."""
    zone = zone_named(timezone) if timezone else None
    if zone is None:
        zone = zone_named(default)
    return zone if zone is not None else ZoneInfo("UTC")


def send_time(campaign: Campaign, action: Action, now: datetime, timezone: str | None) -> datetime:
    """Return when the action would go out (UTC): now, or the next local slot hour from now on."""
    hour = campaign.slot_hours.get(action.slot)
    if hour is None or action.slot == IMMEDIATE_SLOT or not action.is_message:
        return now.astimezone(UTC)
    zone = customer_zone(timezone, campaign.guardrails.default_timezone)
    local = now.astimezone(zone)
    if local.hour == hour:
        return now.astimezone(UTC)
    candidate = local.replace(hour=hour, minute=0, second=0, microsecond=0)
    if candidate <= local:
        candidate += timedelta(days=1)
    # Wall-clock arithmetic may land in a DST gap: normalise through UTC and back.
    return candidate.astimezone(UTC)


def _send_local_hour(
    campaign: Campaign, action: Action, now: datetime, timezone: str | None
) -> int:
    """Return the customer's local hour at which the action would be delivered."""
    hour = campaign.slot_hours.get(action.slot)
    if hour is not None and action.slot != IMMEDIATE_SLOT:
        return hour
    zone = customer_zone(timezone, campaign.guardrails.default_timezone)
    return now.astimezone(zone).hour


def _cap_full(cap: Cap, channel: str, messages: Sequence[SentEntry], now_ts: float) -> bool:
    """Tell whether one more message on `channel` would exceed the cap."""
    if not cap.applies_to(channel):
        return False
    since = now_ts - cap.window_s
    count = 0
    for ts, sent_channel, _action, _campaign in messages:
        if ts <= since:
            continue
        if cap.scope == "channel" and sent_channel != channel:
            continue
        count += 1
    return count >= cap.max


def _cooling_down(
    campaign: Campaign,
    action: Action,
    messages: Sequence[SentEntry],
    now_ts: float,
    last_sent: Mapping[str, float],
) -> bool:
    """Tell whether this campaign sent this action less than cooldown_s ago."""
    cooldown = campaign.guardrails.cooldown_s
    if cooldown <= 0:
        return False
    older = last_sent.get(action.id)
    if older is not None and older > now_ts - cooldown:
        return True
    return any(
        ts > now_ts - cooldown and action_id == action.id and name == campaign.name
        for ts, _channel, action_id, name in messages
    )


def blocked_by(
    campaign: Campaign,
    action: Action,
    sent: Sequence[SentEntry],
    now: datetime,
    timezone: str | None,
    last_sent: Mapping[str, float] | None = None,
    unsubscribed: Collection[str] = (),
) -> str | None:
    """Name the first guardrail that forbids sending this action now, or None if none does."""
    if not action.is_message:
        return None
    if action.channel in unsubscribed:
        return "unsubscribed"
    messages = [entry for entry in sent if is_message(entry)]
    return _blocked(campaign, action, messages, now, timezone, last_sent or {})


def _blocked(
    campaign: Campaign,
    action: Action,
    messages: Sequence[SentEntry],
    now: datetime,
    timezone: str | None,
    last_sent: Mapping[str, float],
) -> str | None:
    """Check one messaging action against the guardrails, in GUARDRAIL_ORDER."""
    rails = campaign.guardrails
    now_ts = now.timestamp()
    if rails.quiet_hours is not None and rails.quiet_hours.contains(
        _send_local_hour(campaign, action, now, timezone)
    ):
        return "quiet_hours"
    for cap in rails.caps:
        if cap.scope == "overall" and _cap_full(cap, action.channel, messages, now_ts):
            return cap.name
    for cap in rails.caps:
        if cap.scope == "channel" and _cap_full(cap, action.channel, messages, now_ts):
            return cap.name
    if _cooling_down(campaign, action, messages, now_ts, last_sent):
        return "cooldown"
    return None


def apply_guardrails(
    campaign: Campaign,
    action_ids: Iterable[str],
    sent: Sequence[SentEntry],
    now: datetime,
    timezone: str | None,
    last_sent: Mapping[str, float] | None = None,
    unsubscribed: Collection[str] = (),
) -> GuardrailResult:
    """Filter eligible action ids by unsubscribes, quiet hours, caps, cooldown; no-action stays."""
    messages = [entry for entry in sent if is_message(entry)]
    older = last_sent or {}
    allowed: list[str] = []
    removed: dict[str, str] = {}
    for action_id in action_ids:
        action = campaign.action(action_id)
        if not action.is_message:
            reason = None
        elif action.channel in unsubscribed:
            reason = "unsubscribed"
        else:
            reason = _blocked(campaign, action, messages, now, timezone, older)
        if reason is None:
            allowed.append(action_id)
        else:
            removed[action_id] = reason
    if NO_ACTION_ID not in allowed:
        allowed.insert(0, NO_ACTION_ID)
    return GuardrailResult(tuple(allowed), removed)


def holdout_draw(customer_id: str, salt: str) -> float:
    """Map (salt, customer id) to a stable uniform number in [0, 1) with blake2b."""
    data = salt.encode("utf-8") + b"\x1f" + customer_id.encode("utf-8")
    digest = hashlib.blake2b(data, digest_size=8, person=b"kairos-holdout").digest()
    return int.from_bytes(digest, "big") / 2.0**64


def in_holdout(customer_id: str, campaign: Campaign) -> bool:
    """Tell whether the customer belongs to the campaign's holdout group (always no-action)."""
    share = campaign.guardrails.holdout_share
    return share > 0 and holdout_draw(customer_id, campaign.salt) < share

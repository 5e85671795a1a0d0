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
  messaged again; ALL_CHANNELS there (an unsubscribe not tied to a channel) blocks every one.
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
from engine.state import ALL_CHANNELS, zone_named

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


def _messages(sent: Iterable[SentEntry]) -> list[SentEntry]:
    """The history entries that are real messages (is_message, inlined: one pass per decision)."""
    return [entry for entry in sent if entry[1] != NO_CHANNEL and entry[2] != NO_ACTION_ID]


class _Checks:
    """One guardrail pass over a customer's history at one moment, shared by every action checked.

    The quiet-hours verdict depends only on the action's slot, the caps' only on its channel and
    the cooldown's history scan not on the action at all: each is computed on first use and kept,
    instead of once per action.
    """

    __slots__ = (
        "_cap_reasons",
        "_local_hour",
        "_quiet",
        "_recent",
        "campaign",
        "last_sent",
        "messages",
        "now",
        "now_ts",
        "timezone",
    )

    def __init__(
        self,
        campaign: Campaign,
        messages: Sequence[SentEntry],
        now: datetime,
        timezone: str | None,
        last_sent: Mapping[str, float],
    ) -> None:
        """Keep the pass's inputs (messages: the history's real messages only)."""
        self.campaign = campaign
        self.messages = messages
        self.now = now
        self.now_ts = now.timestamp()
        self.timezone = timezone
        self.last_sent = last_sent
        self._local_hour: int | None = None
        self._quiet: dict[str, bool] = {}
        self._cap_reasons: dict[str, str | None] = {}
        self._recent: set[str] | None = None

    def send_local_hour(self, action: Action) -> int:
        """Return the customer's local hour at which the action would be delivered."""
        hour = self.campaign.slot_hours.get(action.slot)
        if hour is not None and action.slot != IMMEDIATE_SLOT:
            return hour
        if self._local_hour is None:
            zone = customer_zone(self.timezone, self.campaign.guardrails.default_timezone)
            self._local_hour = self.now.astimezone(zone).hour
        return self._local_hour

    def quiet(self, action: Action) -> bool:
        """Tell whether the action would be delivered inside the quiet hours."""
        verdict = self._quiet.get(action.slot)
        if verdict is None:
            quiet_hours = self.campaign.guardrails.quiet_hours
            verdict = quiet_hours is not None and quiet_hours.contains(self.send_local_hour(action))
            self._quiet[action.slot] = verdict
        return verdict

    def _cap_full(self, cap: Cap, channel: str) -> bool:
        """Tell whether one more message on `channel` would exceed the cap."""
        if not cap.applies_to(channel):
            return False
        since = self.now_ts - cap.window_s
        count = 0
        for ts, sent_channel, _action, _campaign in self.messages:
            if ts <= since:
                continue
            if cap.scope == "channel" and sent_channel != channel:
                continue
            count += 1
        return count >= cap.max

    def cap_reason(self, channel: str) -> str | None:
        """Name the first full cap for a message on this channel (overall caps first), if any."""
        if channel in self._cap_reasons:
            return self._cap_reasons[channel]
        caps = self.campaign.guardrails.caps
        reason = next(
            (cap.name for cap in caps if cap.scope == "overall" and self._cap_full(cap, channel)),
            None,
        )
        if reason is None:
            reason = next(
                (
                    cap.name
                    for cap in caps
                    if cap.scope == "channel" and self._cap_full(cap, channel)
                ),
                None,
            )
        self._cap_reasons[channel] = reason
        return reason

    def cooling_down(self, action: Action) -> bool:
        """Tell whether this campaign sent this action less than cooldown_s ago."""
        cooldown = self.campaign.guardrails.cooldown_s
        if cooldown <= 0:
            return False
        older = self.last_sent.get(action.id)
        if older is not None and older > self.now_ts - cooldown:
            return True
        if self._recent is None:
            since = self.now_ts - cooldown
            name = self.campaign.name
            self._recent = {
                action_id
                for ts, _channel, action_id, sender in self.messages
                if ts > since and sender == name
            }
        return action.id in self._recent

    def blocked(self, action: Action) -> str | None:
        """Check one messaging action against the guardrails, in GUARDRAIL_ORDER."""
        if self.quiet(action):
            return "quiet_hours"
        reason = self.cap_reason(action.channel)
        if reason is not None:
            return reason
        if self.cooling_down(action):
            return "cooldown"
        return None


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
    if action.channel in unsubscribed or ALL_CHANNELS in unsubscribed:
        return "unsubscribed"
    return _Checks(campaign, _messages(sent), now, timezone, last_sent or {}).blocked(action)


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
    checks = _Checks(campaign, _messages(sent), now, timezone, last_sent or {})
    everywhere = ALL_CHANNELS in unsubscribed
    allowed: list[str] = []
    removed: dict[str, str] = {}
    for action_id in action_ids:
        action = campaign.action(action_id)
        if not action.is_message:
            reason = None
        elif action.channel in unsubscribed or everywhere:
            reason = "unsubscribed"
        else:
            reason = checks.blocked(action)
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

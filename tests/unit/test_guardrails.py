"""Guardrails: caps, cooldown, quiet hours and the holdout group are never violated."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.campaign import NO_ACTION_ID, Campaign, builtin_campaign, parse_campaign
from engine.guardrails import (
    GuardrailResult,
    SentEntry,
    apply_guardrails,
    blocked_by,
    customer_zone,
    holdout_draw,
    in_holdout,
    send_time,
)


def make_campaign(**guardrails: Any) -> Campaign:
    """A small campaign: email/sms/push x now/evening, with the given guardrails."""
    rails: dict[str, Any] = {
        "cooldown_s": 6 * 3600,
        "quiet_hours": {"start": 21, "end": 8},
        "holdout_share": 0.1,
        "caps": [
            {"scope": "overall", "max": 3, "window_s": 86400},
            {"scope": "channel", "max": 1, "window_s": 86400},
        ],
    }
    rails.update(guardrails)
    return parse_campaign(
        {
            "name": "test",
            "salt": "salt-1",
            "triggers": ["cart_abandoned"],
            "actions": {
                "dimensions": {
                    "channel": ["email", "sms", "push"],
                    "offer": ["no_offer", "discount_10"],
                    "slot": ["now", "evening"],
                }
            },
            "guardrails": rails,
            "reward": {"outcomes": {"converted": 1.0}},
        }
    )


CAMPAIGN = make_campaign()
NOW = datetime(2024, 6, 3, 12, 0, tzinfo=UTC)  # 14:00 in Paris, 08:00 in New York


def test_nothing_sent_leaves_everything_by_day() -> None:
    result = apply_guardrails(CAMPAIGN, CAMPAIGN.action_ids, [], NOW, "Europe/Paris")
    assert result.allowed == CAMPAIGN.action_ids
    assert result.removed == {}
    assert result.main_reason() is None


def test_overall_cap_removes_every_message() -> None:
    ts = NOW.timestamp()
    sent: list[SentEntry] = [
        (ts - 3600, "email", "x", "other"),
        (ts - 7200, "sms", "y", "other"),
        (ts - 10800, "push", "z", "other"),
    ]
    result = apply_guardrails(CAMPAIGN, CAMPAIGN.action_ids, sent, NOW, "Europe/Paris")
    assert result.allowed == (NO_ACTION_ID,)
    assert set(result.removed.values()) == {"frequency_cap"}
    assert result.main_reason() == "frequency_cap"
    assert result.counts() == {"frequency_cap": len(CAMPAIGN.actions) - 1}


def test_old_messages_and_non_messages_do_not_count() -> None:
    ts = NOW.timestamp()
    sent: list[SentEntry] = [
        (ts - 86400 - 1, "email", "x", "other"),
        (ts - 86400, "sms", "y", "other"),  # exactly at the window edge: outside
        (ts - 10, "none", NO_ACTION_ID, "test"),
    ]
    result = apply_guardrails(CAMPAIGN, CAMPAIGN.action_ids, sent, NOW, "Europe/Paris")
    assert result.removed == {}


def test_channel_cap_removes_that_channel_only() -> None:
    sent: list[SentEntry] = [(NOW.timestamp() - 60, "sms", "x", "other")]
    result = apply_guardrails(CAMPAIGN, CAMPAIGN.action_ids, sent, NOW, "Europe/Paris")
    assert {a for a in result.removed} == {a for a in CAMPAIGN.action_ids if a.startswith("sms:")}
    assert set(result.removed.values()) == {"channel_cap"}


def test_channel_cap_limited_to_named_channels() -> None:
    campaign = make_campaign(
        caps=[{"scope": "channel", "channels": ["sms"], "max": 1, "window_s": 3600}]
    )
    sent: list[SentEntry] = [
        (NOW.timestamp() - 60, "sms", "x", "other"),
        (NOW.timestamp() - 60, "email", "y", "other"),
    ]
    result = apply_guardrails(campaign, campaign.action_ids, sent, NOW, None)
    assert {a.split(":")[0] for a in result.removed} == {"sms"}


def test_cooldown_counts_this_campaigns_action_only() -> None:
    campaign = make_campaign(caps=[])
    action = "email:no_offer:default:now"
    ts = NOW.timestamp()
    sent: list[SentEntry] = [(ts - 3600, "email", action, "test"), (ts - 60, "sms", "x", "other")]
    result = apply_guardrails(campaign, campaign.action_ids, sent, NOW, None)
    assert result.removed == {action: "cooldown"}
    later = NOW + timedelta(hours=5, seconds=1)
    assert apply_guardrails(campaign, campaign.action_ids, sent, later, None).removed == {}
    other: list[SentEntry] = [(ts - 3600, "email", action, "another_campaign")]
    assert apply_guardrails(campaign, campaign.action_ids, other, NOW, None).removed == {}


def test_cooldown_remembers_sends_older_than_the_history() -> None:
    campaign = make_campaign(caps=[], cooldown_s=14 * 86400)
    action = "email:no_offer:default:now"
    older = {action: NOW.timestamp() - 10 * 86400}
    result = apply_guardrails(campaign, campaign.action_ids, [], NOW, None, last_sent=older)
    assert result.removed == {action: "cooldown"}
    assert blocked_by(campaign, campaign.action(action), [], NOW, None, older) == "cooldown"
    later = NOW + timedelta(days=5)
    assert apply_guardrails(campaign, campaign.action_ids, [], later, None, older).removed == {}


def test_quiet_hours_leave_deferred_slots() -> None:
    night = datetime(2024, 6, 3, 21, 30, tzinfo=UTC)  # 23:30 in Paris
    result = apply_guardrails(CAMPAIGN, CAMPAIGN.action_ids, [], night, "Europe/Paris")
    assert set(result.allowed) == {NO_ACTION_ID} | {
        a for a in CAMPAIGN.action_ids if a.endswith(":evening")
    }
    assert set(result.removed.values()) == {"quiet_hours"}
    # Same instant, 17:30 in New York: not quiet there.
    assert (
        apply_guardrails(CAMPAIGN, CAMPAIGN.action_ids, [], night, "America/New_York").removed == {}
    )


def test_quiet_hours_without_deferred_slot_leave_no_action() -> None:
    campaign = builtin_campaign("cart_abandonment")
    only_now = [a for a in campaign.action_ids if not a.endswith(":evening")]
    night = datetime(2024, 6, 3, 2, 0, tzinfo=UTC)
    result = apply_guardrails(campaign, only_now, [], night, None)
    assert result.allowed == (NO_ACTION_ID,)
    assert result.main_reason() == "quiet_hours"


def test_bad_timezone_falls_back_to_default() -> None:
    assert customer_zone("Not/AZone") == ZoneInfo("UTC")
    assert customer_zone(None, "Europe/Paris") == ZoneInfo("Europe/Paris")
    assert customer_zone("../../etc/passwd") == ZoneInfo("UTC")
    night = datetime(2024, 6, 3, 23, 0, tzinfo=UTC)
    result = apply_guardrails(CAMPAIGN, CAMPAIGN.action_ids, [], night, "Not/AZone")
    assert "quiet_hours" in result.removed.values()


def test_send_time_of_deferred_slot() -> None:
    evening = CAMPAIGN.action("email:no_offer:default:evening")
    now_action = CAMPAIGN.action("email:no_offer:default:now")
    paris = ZoneInfo("Europe/Paris")
    assert send_time(CAMPAIGN, now_action, NOW, "Europe/Paris") == NOW
    at = send_time(CAMPAIGN, evening, NOW, "Europe/Paris")
    assert at.astimezone(paris) == datetime(2024, 6, 3, 19, 0, tzinfo=paris)
    late = datetime(2024, 6, 3, 20, 30, tzinfo=UTC)  # 22:30 Paris -> tomorrow 19:00
    at = send_time(CAMPAIGN, evening, late, "Europe/Paris")
    assert at.astimezone(paris) == datetime(2024, 6, 4, 19, 0, tzinfo=paris)
    during = datetime(2024, 6, 3, 17, 10, tzinfo=UTC)  # 19:10 Paris: right away
    assert send_time(CAMPAIGN, evening, during, "Europe/Paris") == during


def test_no_action_is_never_removed() -> None:
    ts = NOW.timestamp()
    sent: list[SentEntry] = [(ts - i, "email", "x", "o") for i in range(10)]
    assert blocked_by(CAMPAIGN, CAMPAIGN.no_action, sent, NOW, None) is None
    result = apply_guardrails(CAMPAIGN, [a for a in CAMPAIGN.action_ids[1:]], sent, NOW, None)
    assert result.allowed[0] == NO_ACTION_ID


# -- property: whatever the history and the time, nothing allowed breaks a guardrail -----------

ZONES = [
    None,
    "UTC",
    "Europe/Paris",
    "America/New_York",
    "Asia/Kolkata",
    "Pacific/Chatham",
    "Bad/X",
]
CHANNELS = ["email", "sms", "push", "none"]


def violates(
    campaign: Campaign, action_id: str, sent: list[SentEntry], now: datetime, tz: str | None
) -> bool:
    """An independent, naive check of every guardrail for one action."""
    action = campaign.action(action_id)
    if not action.is_message:
        return False
    rails = campaign.guardrails
    now_ts = now.timestamp()
    messages = [e for e in sent if e[1] != "none" and e[2] != NO_ACTION_ID]
    for cap in rails.caps:
        in_window = [e for e in messages if e[0] > now_ts - cap.window_s]
        if cap.scope == "overall" and len(in_window) + 1 > cap.max:
            return True
        if cap.scope == "channel" and (cap.channels is None or action.channel in cap.channels):
            same = [e for e in in_window if e[1] == action.channel]
            if len(same) + 1 > cap.max:
                return True
    for ts, _ch, sent_action, name in messages:
        if sent_action == action_id and name == campaign.name and now_ts - ts < rails.cooldown_s:
            return True
    if rails.quiet_hours is not None:
        delivered = send_time(campaign, action, now, tz)
        zone = ZoneInfo(tz) if tz is not None and tz in ZONES[1:-1] else ZoneInfo("UTC")
        if rails.quiet_hours.contains(delivered.astimezone(zone).hour):
            return True
    return False


@st.composite
def histories(draw: st.DrawFn) -> tuple[datetime, list[SentEntry], str | None]:
    now = draw(
        st.datetimes(
            min_value=datetime(2023, 1, 1), max_value=datetime(2026, 1, 1), timezones=st.just(UTC)
        )
    )
    actions = [*CAMPAIGN.action_ids, "other:action"]
    entries = draw(
        st.lists(
            st.tuples(
                st.floats(min_value=-3 * 86400, max_value=0, allow_nan=False),
                st.sampled_from(CHANNELS),
                st.sampled_from(actions),
                st.sampled_from(["test", "other"]),
            ),
            max_size=8,
        )
    )
    sent = [(now.timestamp() + dt, ch, a, c) for dt, ch, a, c in entries]
    return now, sent, draw(st.sampled_from(ZONES))


@settings(max_examples=300, deadline=None)
@given(histories(), st.integers(min_value=0, max_value=2**32))
def test_guardrails_are_never_violated(
    case: tuple[datetime, list[SentEntry], str | None], seed: int
) -> None:
    now, sent, tz = case
    result: GuardrailResult = apply_guardrails(CAMPAIGN, CAMPAIGN.action_ids, sent, now, tz)
    assert NO_ACTION_ID in result.allowed
    for action_id in result.allowed:
        assert not violates(CAMPAIGN, action_id, sent, now, tz), action_id
    for action_id in result.removed:  # and nothing is removed without cause
        assert violates(CAMPAIGN, action_id, sent, now, tz), action_id
    chosen = random.Random(seed).choice(result.allowed)
    assert not violates(CAMPAIGN, chosen, sent, now, tz)


# -- holdout ----------------------------------------------------------------------------------


def test_holdout_is_stable_and_close_to_its_share() -> None:
    ids = [f"customer-{i}" for i in range(10_000)]
    members = [c for c in ids if in_holdout(c, CAMPAIGN)]
    assert 0.09 <= len(members) / len(ids) <= 0.11
    assert members == [c for c in ids if in_holdout(c, CAMPAIGN)]  # stable
    draws = [holdout_draw(c, "salt-1") for c in ids]
    assert all(0.0 <= d < 1.0 for d in draws)
    assert draws[:3] == [holdout_draw(c, "salt-1") for c in ids[:3]]


def test_holdout_depends_on_the_salt() -> None:
    ids = [f"c{i}" for i in range(2000)]
    a = {c for c in ids if holdout_draw(c, "salt-1") < 0.1}
    b = {c for c in ids if holdout_draw(c, "salt-2") < 0.1}
    assert a != b
    assert len(a & b) < len(a) // 2  # roughly independent groups


def test_zero_share_holds_out_nobody() -> None:
    campaign = make_campaign(holdout_share=0.0)
    assert not any(in_holdout(f"c{i}", campaign) for i in range(1000))


def test_unsubscribed_channels_are_never_messaged() -> None:
    """An unsubscribed channel's actions go first, named so; other channels and no-action stay."""
    result = apply_guardrails(CAMPAIGN, CAMPAIGN.action_ids, [], NOW, None, unsubscribed=["email"])
    removed = {a for a, why in result.removed.items() if why == "unsubscribed"}
    emails = {a.id for a in CAMPAIGN.actions if a.is_message and a.channel == "email"}
    assert emails and removed == emails
    assert NO_ACTION_ID in result.allowed and not emails & set(result.allowed)
    assert any(a.startswith("sms") or a.startswith("push") for a in result.allowed)
    action = CAMPAIGN.action(sorted(emails)[0])
    assert blocked_by(CAMPAIGN, action, [], NOW, None, unsubscribed=("email",)) == "unsubscribed"
    assert blocked_by(CAMPAIGN, action, [], NOW, None) is None
    # An unsubscribe not tied to a channel blocks every message; no-action stays
    everywhere = apply_guardrails(
        CAMPAIGN, CAMPAIGN.action_ids, [], NOW, None, unsubscribed=["all"]
    )
    assert everywhere.allowed == (NO_ACTION_ID,)
    assert blocked_by(CAMPAIGN, action, [], NOW, None, unsubscribed=("all",)) == "unsubscribed"

"""Campaign config: the shipped campaigns load, and bad configs fail naming the bad field."""

from __future__ import annotations

import copy
import itertools
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.campaign import (
    NO_ACTION_ID,
    CampaignError,
    Rule,
    builtin_campaign,
    builtin_campaign_names,
    contradictory_rules,
    load_campaign,
    load_campaigns,
    parse_campaign,
    parse_rule,
)

BASE = """
name = "test"
salt = "s"
triggers = ["cart_abandoned"]
objective = "uplift"

[actions.dimensions]
channel = ["email", "sms"]
offer = ["no_offer", "discount_10"]
slot = ["now", "evening"]

[[actions.rules]]
match = { offer = "discount_10" }
eligible = ["cart_value >= 20", "loyalty_gold == 1"]

[costs]
channel = { email = 0.01, sms = 0.05 }
offer = { discount_10 = 0.1 }
action = { "sms:discount_10:default:now" = 1.0 }

[exploration]
kind = "epsilon_greedy"
epsilon = 0.1

[guardrails]
cooldown_s = 3600
quiet_hours = { start = 21, end = 8 }
holdout_share = 0.1
caps = [
  { scope = "overall", max = 3, window_s = 86400 },
  { scope = "channel", max = 1, window_s = 86400 },
]

[reward]
attribution_window_s = 7200
[reward.outcomes]
opened = 0.1
clicked = 0.3
converted = "value"
unsubscribed = -1.0
"""


def base() -> dict[str, Any]:
    """A fresh valid campaign mapping."""
    return copy.deepcopy(tomllib.loads(BASE))


def test_base_parses_into_the_cross_product_plus_no_action() -> None:
    campaign = parse_campaign(base())
    assert campaign.action_ids[0] == NO_ACTION_ID
    assert len(campaign.actions) == 1 + 2 * 2 * 2
    assert campaign.no_action.channel == "none"
    assert campaign.no_action.dimensions() == {
        "channel": "none",
        "offer": "none",
        "message": "none",
        "slot": "none",
    }
    email = campaign.action("email:discount_10:default:evening")
    assert email.dimensions()["message"] == "default"  # the default of an unlisted dimension
    assert email.cost == pytest.approx(0.11)
    assert campaign.action("sms:discount_10:default:now").cost == 1.0  # per-action override
    assert campaign.no_action.cost == 0.0
    assert [str(r) for r in email.rules] == ["cart_value >= 20", "loyalty_gold == 1"]
    assert not campaign.action("email:no_offer:default:now").rules
    assert campaign.slot_hours == {"evening": 19}
    assert campaign.responds_to("cart_abandoned") and not campaign.responds_to("lapse")
    assert campaign.guardrails.longest_window_s == 86400
    assert campaign.exploration.params == {"epsilon": 0.1}


def test_eligibility_rules_evaluate_without_eval() -> None:
    campaign = parse_campaign(base())
    action = campaign.action("email:discount_10:default:now")
    assert action.eligible({"cart_value": 25.0, "loyalty_gold": 1.0})
    assert not action.eligible({"cart_value": 19.99, "loyalty_gold": 1.0})
    assert not action.eligible({"cart_value": 25.0})  # a missing feature counts as 0
    assert campaign.no_action.eligible({})


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("x >= 1", Rule("x", ">=", 1.0)),
        ("  a_b<2.5", Rule("a_b", "<", 2.5)),
        ("y != -3e2", Rule("y", "!=", -300.0)),
        ("z == .5", Rule("z", "==", 0.5)),
    ],
)
def test_parse_rule(text: str, rule: Rule) -> None:
    assert parse_rule(text) == rule


@pytest.mark.parametrize(
    "text",
    ["__import__('os')", "x >= y", "x = 1", "x >= 1 and y < 2", "1 < x", "x >=", "x >= nan"],
)
def test_parse_rule_rejects_anything_else(text: str) -> None:
    with pytest.raises(CampaignError, match=r"^r\[0\]: "):
        parse_rule(text, "r[0]")


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for key in keys[:-1]:
        data = data[key]
    data[keys[-1]] = value


def _delete(data: dict[str, Any], dotted: str) -> None:
    keys = dotted.split(".")
    for key in keys[:-1]:
        data = data[key]
    del data[keys[-1]]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("name", "Has Spaces", "name: "),
        ("salt", "", "salt: must be a non-empty string"),
        ("triggers", [], "triggers: must be a non-empty list of strings"),
        ("triggers", ["cart_abandon"], "triggers[0]: 'cart_abandon' is not a trigger; one of"),
        ("objective", "profit", "objective: 'profit' must be one of reward, uplift"),
        ("actions.dimensions.channel", [], "actions.dimensions.channel: must be a non-empty list"),
        ("actions.dimensions.channel", "email", "actions.dimensions.channel: must be a non-empty"),
        ("actions.dimensions.channel", ["email", "email"], "actions.dimensions.channel: must not"),
        ("actions.dimensions.channel", ["none"], "actions.dimensions.channel: 'none' is reserved"),
        ("actions.dimensions.colour", ["red"], "actions.dimensions.colour: unknown key"),
        ("actions.dimensions.slot", ["now", "midnight"], "actions.slot_hours.midnight: deferred"),
        ("actions.slot_hours", {"evening": 22}, "actions.slot_hours.evening: send hour 22 falls"),
        ("actions.slot_hours", {"evening": 25}, "actions.slot_hours.evening: must be an integer"),
        ("actions.slot_hours", {"now": 9}, "actions.slot_hours.now: "),
        ("actions.exclude", [{"channel": "fax"}], "actions.exclude[0].channel: 'fax' is not"),
        (
            "actions.include",
            [{"channel": "email", "offr": "x"}],
            "actions.include[0].offr: unknown key",
        ),
        ("actions.exclude", [{}], "actions.dimensions: include/exclude leave no action"),
        (
            "actions.rules",
            [{"match": {"offer": "discount_10"}, "eligible": ["cart_value => 20"]}],
            "actions.rules[0].eligible[0]: 'cart_value => 20' is not a rule",
        ),
        (
            "actions.rules",
            [
                {"match": {"offer": "discount_10"}, "eligible": ["cart_value >= 30"]},
                {"match": {"channel": "sms"}, "eligible": ["cart_value < 10"]},
            ],
            "actions.rules: action sms:discount_10:default:now can never be eligible: "
            "cart_value >= 30 and cart_value < 10",
        ),
        (
            "actions.rules",
            [{"match": {"offer": "discount_10"}, "eligible": ["cart_valu >= 20"]}],
            "actions.rules[0].eligible[0]: 'cart_valu' is not a feature; did you mean 'cart_value'?",
        ),
        (
            "actions.rules",
            [{"match": {"offer": "discount_10"}, "eligible": ["category_ > 0"]}],
            "actions.rules[0].eligible[0]: 'category_' is not a feature",
        ),
        (
            "actions.rules",
            [{"match": {"offer": "discount_10"}, "eligble": ["x > 1"]}],
            "actions.rules[0].eligible: is required",
        ),
        ("costs.channel", {"fax": 1.0}, "costs.channel.fax: 'fax' is not a value"),
        ("costs.offer", {"discount_10": -1}, "costs.offer.discount_10: must be in [0, inf]"),
        ("costs.action", {"nope": 1.0}, "costs.action.nope: is not an action id"),
        ("exploration.kind", "ucb", "exploration.kind: 'ucb' must be one of"),
        ("exploration.epsilon", 1.5, "exploration.epsilon: must be in [0, 1]"),
        ("exploration.epsilom", 0.1, "exploration.epsilom: unknown key"),
        # a parameter the kind does not read was accepted and did nothing (QA, campaign author)
        (
            "exploration.temperature",
            0.1,
            "exploration: epsilon_greedy ignores temperature: it reads epsilon, min_propensity",
        ),
        ("exploration.n_bootstrap", 2.5, "exploration.n_bootstrap: must be an integer"),
        ("guardrails.holdout_share", 0.7, "guardrails.holdout_share: must be in [0, 0.5]"),
        ("guardrails.holdout_share", "10%", "guardrails.holdout_share: must be a number"),
        ("guardrails.cooldown_s", -1, "guardrails.cooldown_s: must be in [0, "),
        ("guardrails.quiet_hours", {"start": 21}, "guardrails.quiet_hours.end: is required"),
        ("guardrails.quiet_hours", {"start": 8, "end": 8}, "guardrails.quiet_hours.end: must"),
        ("guardrails.quiet_hours", {"start": 24, "end": 8}, "guardrails.quiet_hours.start: must"),
        ("guardrails.default_timezone", "Mars/Olympus", "guardrails.default_timezone: 'Mars"),
        (
            "guardrails.caps",
            [{"scope": "galaxy", "max": 1, "window_s": 60}],
            "guardrails.caps[0].scope: 'galaxy' must be",
        ),
        (
            "guardrails.caps",
            [{"scope": "overall", "max": 1, "window_s": 0}],
            "guardrails.caps[0].window_s: must be in (0, ",
        ),
        (
            "guardrails.caps",
            [{"scope": "overall", "max": 1, "window_s": 60, "channels": ["sms"]}],
            "guardrails.caps[0].channels: only a 'channel' cap",
        ),
        (
            "guardrails.caps",
            [{"scope": "overall", "max": 1, "window_s": 30 * 86400}],
            "guardrails.caps[0].window_s: must be in (0, 604800]",
        ),
        (
            "guardrails.caps",
            [{"scope": "overall", "max": 1000, "window_s": 60}],
            "guardrails.caps[0].max: must be an integer in [0, 64]",
        ),
        (
            "guardrails.caps",
            [{"scope": "channel", "max": 1, "window_s": 60, "channels": ["sms", "smss"]}],
            "guardrails.caps[0].channels: 'smss' is no channel of this campaign's actions "
            "(email, sms): the cap would never apply",
        ),
        ("guardrails.cap", [], "guardrails.cap: unknown key"),
        ("model", "xgboost", "model: 'xgboost' must be one of"),
        ("model_features", [], "model_features: must be a non-empty list"),
        ("model_l2", 0, "model_l2: must be in (0, 1e+06]"),
        ("model_features", ["Open rate"], "model_features[0]: 'Open rate' must match"),
        ("exploration.gamma_exponent", 2, "exploration.gamma_exponent: must be in [0, 1]"),
        ("reward.outcomes", {}, "reward.outcomes: must give a value"),
        ("reward.outcomes.purchased", 1.0, "reward.outcomes.purchased: 'purchased' must be one"),
        ("reward.outcomes.opened", "lots", "reward.outcomes.opened: must be a number"),
        ("reward.outcomes.opened", {"bse": 1}, "reward.outcomes.opened.bse: unknown key"),
        ("reward.combine", "avg", "reward.combine: 'avg' must be 'sum' or 'max'"),
        ("reward.attribution_window_s", 0, "reward.attribution_window_s: must be in (0, "),
        ("rewrd", {}, "rewrd: unknown key"),
    ],
)
def test_invalid_config_names_the_field(field: str, value: Any, message: str) -> None:
    data = base()
    _set(data, field, value)
    with pytest.raises(CampaignError) as excinfo:
        parse_campaign(data)
    assert str(excinfo.value).startswith(message), str(excinfo.value)


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("name", "name: is required"),
        ("actions", "actions: is required"),
        ("actions.dimensions", "actions.dimensions: is required"),
        ("actions.dimensions.channel", "actions.dimensions.channel: is required"),
        ("reward.outcomes", "reward.outcomes: is required"),
    ],
)
def test_missing_field_is_named(field: str, message: str) -> None:
    data = base()
    _delete(data, field)
    with pytest.raises(CampaignError, match=f"^{message}"):
        parse_campaign(data)


def test_rule_matching_no_action_is_an_error() -> None:
    data = base()
    data["actions"]["exclude"] = [{"offer": "discount_10"}]
    with pytest.raises(CampaignError, match=r"^actions\.rules\[0\]\.match: matches no action"):
        parse_campaign(data)


def test_include_restricts_and_exclude_removes() -> None:
    data = base()
    data["actions"]["include"] = [{"channel": "email"}, {"channel": "sms", "slot": "now"}]
    data["actions"]["exclude"] = [{"channel": "email", "offer": "discount_10", "slot": "evening"}]
    del data["costs"]["action"]
    campaign = parse_campaign(data)
    assert set(campaign.action_ids) == {
        "no_action",
        "email:no_offer:default:now",
        "email:no_offer:default:evening",
        "email:discount_10:default:now",
        "sms:no_offer:default:now",
        "sms:discount_10:default:now",
    }


def test_too_many_actions_is_an_error() -> None:
    data = base()
    data["actions"]["dimensions"]["offer"] = [f"o{i}" for i in range(30)]
    del data["actions"]["rules"]
    del data["costs"]
    with pytest.raises(CampaignError, match=r"^actions\.dimensions: 121 actions"):
        parse_campaign(data)


def test_builtin_campaigns_load() -> None:
    names = builtin_campaign_names()
    assert names == ["cart_abandonment", "cross_sell", "win_back"]
    expected_triggers = {
        "cart_abandonment": ("cart_abandoned",),
        "cross_sell": ("first_purchase", "purchase"),
        "win_back": ("lapse",),
    }
    for name in names:
        campaign = builtin_campaign(name)
        assert campaign.name == name
        assert campaign.triggers == expected_triggers[name]
        assert 8 <= len(campaign.actions) <= 20
        assert campaign.action_ids[0] == NO_ACTION_ID
        assert len(set(campaign.action_ids)) == len(campaign.action_ids)
        assert campaign.guardrails.holdout_share > 0
        assert campaign.reward.outcomes["unsubscribed"].of(0.0) < 0
    assert builtin_campaign("cart_abandonment").reward.attribution_window_s == 7200


def test_unknown_builtin_campaign() -> None:
    with pytest.raises(CampaignError, match="no built-in campaign 'nope'"):
        builtin_campaign("nope")


def test_load_campaign_and_directory(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(BASE)
    (tmp_path / "b.toml").write_text(BASE.replace('name = "test"', 'name = "other"'))
    assert load_campaign(tmp_path / "a.toml").name == "test"
    assert sorted(load_campaigns(tmp_path)) == ["other", "test"]
    (tmp_path / "c.toml").write_text(BASE)
    with pytest.raises(CampaignError, match=r"^c\.toml: name: 'test' is already defined"):
        load_campaigns(tmp_path)


def test_load_campaign_errors_name_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(BASE.replace("holdout_share = 0.1", "holdout_share = 0.9"))
    with pytest.raises(CampaignError, match=r"^bad\.toml: guardrails\.holdout_share: must be in"):
        load_campaign(bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("name = ")
    with pytest.raises(CampaignError, match="invalid TOML"):
        load_campaign(broken)
    with pytest.raises(CampaignError, match="cannot read"):
        load_campaign(tmp_path / "missing.toml")


def test_model_features_keep_named_features_and_prefixes() -> None:
    data = base()
    data["model_features"] = ["bias", "open_best_*"]
    campaign = parse_campaign(data)
    assert campaign.name == data["name"]  # the check of the names once renamed the campaign
    context = {"bias": 1.0, "open_best_sms": 1.0, "open_best_email": 0.0, "hour_sin": 0.5}
    assert campaign.model_context(context) == {
        "bias": 1.0,
        "open_best_sms": 1.0,
        "open_best_email": 0.0,
    }
    assert parse_campaign(base()).model_context(context) == context


@pytest.mark.parametrize(
    ("key", "names", "message"),
    [
        ("model_features", ["cart_valu"], "'cart_valu' is not a feature the models see"),
        ("model_features", ["cart_value"], "'cart_value' is a raw value the models never see"),
        ("model_features", ["open_top_*"], "'open_top_*' is not a feature the models see"),
        ("model_crosses", ["trigger_purchse*purchase_rate"], "did you mean 'trigger_purchase'"),
    ],
)
def test_model_inputs_the_models_never_see_are_refused(
    key: str, names: list[str], message: str
) -> None:
    """Accepted before, they left the model without the input (QA: model_features naming the
    raw cart_value and frequency gave the models an empty context)."""
    data = base()
    data[key] = names
    with pytest.raises(CampaignError, match=re.escape(message)):
        parse_campaign(data)
    data[key] = ["category_*", "category_shoes"] if key == "model_features" else ["bias*recency"]
    parse_campaign(data)


def test_model_crosses_add_products_of_two_context_features() -> None:
    data = base()
    data["model_features"] = ["bias"]
    data["model_crosses"] = ["trigger_purchase*purchase_rate", "trigger_lapse*purchase_rate"]
    campaign = parse_campaign(data)
    context = {"bias": 1.0, "trigger_purchase": 1.0, "purchase_rate": 0.4}
    assert campaign.model_context(context) == {
        "bias": 1.0,
        "trigger_purchase*purchase_rate": 0.4,
        "trigger_lapse*purchase_rate": 0.0,  # a missing feature counts as 0
    }
    for bad in (["purchase_rate"], ["a*b*c"], ["Trigger*rate"], ["a*"]):
        data["model_crosses"] = bad
        with pytest.raises(CampaignError, match="model_crosses"):
            parse_campaign(data)


def test_model_scale_names_each_message_a_feature_of_its_channel() -> None:
    data = base()
    data["model"] = "factored"
    data["model_scale"] = "open_best_{channel}"
    campaign = parse_campaign(data)
    messages = [a for a in campaign.actions if a.is_message]
    assert messages
    for action in messages:
        assert campaign.scale_feature(action) == f"open_best_{action.channel}"
    assert campaign.scale_feature(campaign.no_action) is None
    assert parse_campaign(base()).scale_feature(messages[0]) is None
    for bad in ("open_best_{colour}", "Open {channel}", "open_*"):
        data["model_scale"] = bad
        with pytest.raises(CampaignError, match="model_scale"):
            parse_campaign(data)
    # A template every action fills, but with names no feature has: the twin would be all 0.
    data["model_scale"] = "open_best_{offer}"
    with pytest.raises(CampaignError) as excinfo:
        parse_campaign(data)
    assert str(excinfo.value).startswith(
        "model_scale: 'open_best_{offer}' gives action email:no_offer:default:now "
        "'open_best_no_offer' is not a feature the models see"
    ), str(excinfo.value)
    data["model_scale"] = "open_best_{channel}"
    data["actions"]["dimensions"]["channel"] = ["email", "whatsapp"]
    data["costs"]["channel"] = {"email": 0.01}
    data["costs"]["action"] = {}
    with pytest.raises(CampaignError, match="'open_best_whatsapp' is not a feature"):
        parse_campaign(data)
    data = base()
    data["model_scale"] = "open_best_{channel}"
    data["model"] = "ridge"
    with pytest.raises(CampaignError, match="model_scale: needs"):
        parse_campaign(data)


def test_rules_may_name_any_feature_the_engine_computes_and_any_category_share() -> None:
    data = base()
    data["actions"]["rules"] = [
        {"match": {"offer": "discount_10"}, "eligible": ["category_shoes >= 0.5", "tenure > 0"]}
    ]
    campaign = parse_campaign(data)
    action = campaign.action("email:discount_10:default:now")
    assert action.eligible({"category_shoes": 0.6, "tenure": 1.0})
    assert not action.eligible({"category_shoes": 0.4, "tenure": 1.0})


def test_a_category_whose_name_is_no_identifier_is_named_in_double_quotes() -> None:
    data = base()
    data["actions"]["rules"] = [
        {"match": {"offer": "discount_10"}, "eligible": ['"category_home-garden" >= 0.5']}
    ]
    action = parse_campaign(data).action("email:discount_10:default:now")
    assert action.rules == (Rule("category_home-garden", ">=", 0.5),)
    assert action.eligible({"category_home-garden": 0.6})
    assert not action.eligible({"category_home": 0.6})
    # Written back the same way (errors and logs quote it), and read again to the same rule.
    assert str(action.rules[0]) == '"category_home-garden" >= 0.5'
    assert parse_rule(str(action.rules[0])) == action.rules[0]
    assert parse_rule('"category_Home & Garden" < 1').feature == "category_Home & Garden"
    # Unquoted, the name stops at the dash: not a rule, and the error says how to write it.
    with pytest.raises(CampaignError, match="in double quotes"):
        parse_rule("category_home-garden >= 0.5")


def test_a_default_slot_hour_inside_quiet_hours_is_named_as_the_default() -> None:
    """The error named an hour the author never wrote (QA, campaign author)."""
    data = base()
    data["actions"]["dimensions"]["slot"] = ["now", "morning"]
    data["guardrails"]["quiet_hours"] = {"start": 22, "end": 10}
    message = "actions.slot_hours.morning: send hour 9 (the default for 'morning') falls inside"
    with pytest.raises(CampaignError, match=re.escape(message)):
        parse_campaign(data)


_RULES = st.lists(
    st.builds(
        Rule,
        feature=st.just("cart_value"),
        op=st.sampled_from([">=", ">", "<=", "<", "==", "!="]),
        value=st.integers(-3, 3).map(float),
    ),
    max_size=5,
)


@given(_RULES)
def test_rules_contradict_exactly_when_no_value_meets_them_all(rules: list[Rule]) -> None:
    # Every rule's region is bounded by rule values: the values, the midpoints between them and
    # a point beyond each end stand for every real number.
    points = sorted({r.value for r in rules} | {0.0})
    candidates = set(points) | {points[0] - 1, points[-1] + 1}
    candidates |= {(a + b) / 2 for a, b in itertools.pairwise(points)}
    met = any(all(r.holds({"cart_value": x}) for r in rules) for x in candidates)
    assert (contradictory_rules(rules) == ()) == met


def test_rules_on_different_features_never_contradict_each_other() -> None:
    rules = [Rule("cart_value", ">=", 30.0), Rule("loyalty_gold", "<", 10.0)]
    assert contradictory_rules(rules) == ()
    assert contradictory_rules([*rules, Rule("cart_value", "==", 5.0)]) == (
        Rule("cart_value", ">=", 30.0),
        Rule("cart_value", "==", 5.0),
    )

"""Campaign configuration: a declarative TOML file parsed and validated into frozen dataclasses.

A campaign says which triggers it answers, which actions it may take (the cross product of
dimension values, plus the explicit no-action arm), who is eligible for what, what each action
costs, how the bandit explores, which guardrails apply and how outcomes become reward. Every
validation error raises `CampaignError` whose message starts with the path of the bad field, and
unknown keys are errors too, so that a typo cannot pass silently.
"""

from __future__ import annotations

import difflib
import itertools
import math
import operator
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from engine.features import RAW_FEATURES, feature_names
from engine.models import MODEL_NAMES
from engine.policies import POLICY_KINDS, ExplorationConfig, ignored_parameters
from engine.state import MAX_SENT, SENT_RETENTION_S
from engine.triggers import TRIGGER_TYPES
from schemas import records

__all__ = [
    "DIMENSIONS",
    "NO_ACTION_ID",
    "NO_CHANNEL",
    "OBJECTIVES",
    "Action",
    "Campaign",
    "CampaignError",
    "Cap",
    "ExplorationSpec",
    "Guardrails",
    "OutcomeValue",
    "QuietHours",
    "RewardDefinition",
    "Rule",
    "builtin_campaign",
    "builtin_campaign_names",
    "load_campaign",
    "load_campaigns",
    "parse_campaign",
    "parse_rule",
]

DIMENSIONS: tuple[str, ...] = ("channel", "offer", "message", "slot")
"""The dimensions an action is built from, in the order used for action ids."""

DIMENSION_DEFAULTS: Mapping[str, str] = {"offer": "no_offer", "message": "default", "slot": "now"}
"""The single value a dimension takes when the campaign does not list it (channel is required)."""

NO_ACTION_ID = "no_action"
NO_CHANNEL = "none"
IMMEDIATE_SLOT = "now"
DEFAULT_SLOT_HOURS: Mapping[str, int] = {"morning": 9, "next_morning": 9, "evening": 19}
"""Local send hour of the deferred slots a campaign does not give an hour for."""

OBJECTIVES: tuple[str, ...] = ("reward", "uplift")
EXPLORATION_KINDS: tuple[str, ...] = POLICY_KINDS
OUTCOME_TYPES: tuple[str, ...] = tuple(sorted(records.OUTCOME_TYPES))
MAX_ACTIONS = 100
"""Upper bound on a campaign's arms, so that a careless cross product fails loudly."""

_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_FEATURE_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}\*?$")
_SCALE_DIM_RE = re.compile(r"\{([a-z]+)\}")
_CROSS_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}\*[a-z][a-z0-9_]{0,63}$")
_DIMENSIONS = ("channel", "offer", "message", "slot")
_VALUE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
#: A rule's feature: a bare name, or one in double quotes for a category share whose name is
#: not an identifier ("category_home-garden", "category_Home & Garden").
_BARE_FEATURE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RULE_RE = re.compile(
    r'^\s*(?:(?P<feature>[A-Za-z_][A-Za-z0-9_]*)|"(?P<quoted>[^"]+)")\s*(?P<op>>=|<=|==|!=|>|<)\s*'
    r"(?P<value>[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*$"
)
_OPS: Mapping[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}


class CampaignError(ValueError):
    """A campaign file is invalid; the message starts with the path of the offending field."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path else problem)


@dataclass(frozen=True, slots=True)
class Rule:
    """One eligibility condition `feature op number`; a missing feature counts as 0.0."""

    feature: str
    op: str
    value: float

    def holds(self, features: Mapping[str, float]) -> bool:
        """Tell whether the condition is true for these features."""
        return _OPS[self.op](float(features.get(self.feature, 0.0)), self.value)

    def __str__(self) -> str:
        name = self.feature if _BARE_FEATURE_RE.match(self.feature) else f'"{self.feature}"'
        return f"{name} {self.op} {self.value:g}"


@dataclass(frozen=True, slots=True)
class Action:
    """One arm: its id, its dimension values, its cost and the rules that make it eligible."""

    id: str
    channel: str
    offer: str
    message: str
    slot: str
    cost: float = 0.0
    rules: tuple[Rule, ...] = ()

    @property
    def is_message(self) -> bool:
        """Tell whether the action sends something (every arm but no-action does)."""
        return self.channel != NO_CHANNEL

    def dimensions(self) -> dict[str, str]:
        """Return the dimension values as the Decision's `action` mapping."""
        return {
            "channel": self.channel,
            "offer": self.offer,
            "message": self.message,
            "slot": self.slot,
        }

    def eligible(self, features: Mapping[str, float]) -> bool:
        """Tell whether every eligibility rule holds (the no-action arm is always eligible)."""
        return all(rule.holds(features) for rule in self.rules)


@dataclass(frozen=True, slots=True)
class Cap:
    """A frequency cap: at most `max` messages per `window_s` seconds, overall or per channel."""

    scope: Literal["overall", "channel"]
    max: int
    window_s: float
    channels: tuple[str, ...] | None = None
    """For a per-channel cap, the channels it applies to (None: every channel)."""

    def applies_to(self, channel: str) -> bool:
        """Tell whether a message on this channel counts against the cap."""
        if self.scope == "overall":
            return True
        return self.channels is None or channel in self.channels

    @property
    def name(self) -> str:
        """Name the guardrail for decision reasons and metrics."""
        return "frequency_cap" if self.scope == "overall" else "channel_cap"


@dataclass(frozen=True, slots=True)
class QuietHours:
    """Local hours [start, end) in which nothing is sent; wraps around midnight if start > end."""

    start: int
    end: int

    def contains(self, hour: int) -> bool:
        """Tell whether a local hour (0-23) falls inside the quiet hours."""
        if self.start < self.end:
            return self.start <= hour < self.end
        return hour >= self.start or hour < self.end


@dataclass(frozen=True, slots=True)
class Guardrails:
    """Per-customer limits applied after eligibility and before the bandit chooses."""

    caps: tuple[Cap, ...] = ()
    cooldown_s: float = 0.0
    quiet_hours: QuietHours | None = None
    holdout_share: float = 0.0
    default_timezone: str = "UTC"
    """Time zone for quiet hours when the customer's is unknown or invalid."""

    @property
    def longest_window_s(self) -> float:
        """Return how far back the send history must reach for every cap and the cooldown."""
        return max([self.cooldown_s, *(cap.window_s for cap in self.caps)])


@dataclass(frozen=True, slots=True)
class OutcomeValue:
    """The reward of one outcome type: `base + per_value * outcome.value`, within [floor, cap].

    Bounds matter when the value comes from a sender: one outcome with a wrong sign or scale
    (value -1e12, which the schema accepts) gave a reward of -1e10 and wrecked its arm's model.
    """

    base: float = 0.0
    per_value: float = 0.0
    cap: float | None = None
    floor: float | None = None

    def of(self, value: float) -> float:
        """Return the reward contributed by one outcome carrying `value`."""
        reward = self.base + self.per_value * value
        if self.floor is not None and reward < self.floor:
            reward = self.floor
        return min(reward, self.cap) if self.cap is not None else reward


@dataclass(frozen=True, slots=True)
class RewardDefinition:
    """How outcomes attributed to a decision become one reward."""

    outcomes: Mapping[str, OutcomeValue]
    combine: Literal["sum", "max"] = "sum"
    attribution_window_s: float = 86_400.0
    default: float = 0.0


@dataclass(frozen=True, slots=True)
class ExplorationSpec:
    """The exploration policy's kind and the parameters given (the rest keep their defaults)."""

    kind: str = "epsilon_greedy"
    params: Mapping[str, float | int] = field(default_factory=dict)


class _EligibilityTable:
    """Every action's eligibility from one evaluation of each distinct rule.

    Arms share rules (all discount_10 arms: `cart_value >= 30`), so a decision evaluates each
    distinct rule once and looks the outcome up: the eligible and ineligible ids for that pattern
    of rule results are computed on first sight and kept (at most MAX_PATTERNS of them).
    """

    MAX_PATTERNS = 4096

    __slots__ = ("_actions", "_by_pattern", "_rule_indices", "_rules")

    def __init__(self, actions: tuple[Action, ...]) -> None:
        """Collect the distinct rules of the messaging actions and each action's rule positions."""
        rules: dict[Rule, int] = {}
        for action in actions:
            if action.is_message:
                for rule in action.rules:
                    rules.setdefault(rule, len(rules))
        self._actions = actions
        self._rules: tuple[Rule, ...] = tuple(rules)
        # None: always eligible (no-action and other non-messages, whatever their rules).
        self._rule_indices: tuple[tuple[int, ...] | None, ...] = tuple(
            tuple(rules[rule] for rule in action.rules) if action.is_message else None
            for action in actions
        )
        self._by_pattern: dict[tuple[bool, ...], tuple[tuple[str, ...], tuple[str, ...]]] = {}

    def split(self, features: Mapping[str, float]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Return (eligible ids, ineligible ids), each in action order (see Campaign.eligibility)."""
        pattern = tuple([rule.holds(features) for rule in self._rules])
        known = self._by_pattern.get(pattern)
        if known is not None:
            return known
        eligible = tuple(
            action.id
            for action, indices in zip(self._actions, self._rule_indices, strict=True)
            if indices is None or all(pattern[i] for i in indices)
        )
        ineligible = tuple(a.id for a in self._actions if a.id not in eligible)
        if len(self._by_pattern) < self.MAX_PATTERNS:
            self._by_pattern[pattern] = (eligible, ineligible)
        return eligible, ineligible


@dataclass(frozen=True, slots=True)
class Campaign:
    """A validated campaign: everything decide() and the reward join need."""

    name: str
    salt: str
    triggers: tuple[str, ...]
    actions: tuple[Action, ...]
    """Every arm; the no-action arm comes first."""
    objective: Literal["reward", "uplift"]
    exploration: ExplorationSpec
    guardrails: Guardrails
    reward: RewardDefinition
    slot_hours: Mapping[str, int]
    """Local send hour of each deferred slot; slots not listed are sent immediately."""
    model: str = "default"
    description: str = ""
    model_features: tuple[str, ...] = ()
    """Context features the models see: names, or prefixes ending in "*"; empty means all."""
    model_crosses: tuple[str, ...] = ()
    """Products of two context features the models also see, as "a*b" (e.g. the purchase rate
    after each trigger type: "trigger_purchase*purchase_rate")."""
    model_l2: float = 1.0
    """Prior precision (ridge penalty) of the ridge and factored models' weights."""
    model_scale: str = ""
    """Factored model: a feature name template such as "open_best_{channel}"; each message's
    blocks get a twin scaled by that feature of the action's dimension values ("" for none)."""
    _by_id: dict[str, Action] = field(init=False, repr=False, compare=False)
    _action_ids: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _eligibility: _EligibilityTable = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Derive the per-decision lookups once (not compared, not shown, rebuilt by replace)."""
        by_id: dict[str, Action] = {}
        for action in self.actions:
            by_id.setdefault(action.id, action)  # the first arm of an id, as action() finds it
        object.__setattr__(self, "_by_id", by_id)
        object.__setattr__(self, "_action_ids", tuple(action.id for action in self.actions))
        object.__setattr__(self, "_eligibility", _EligibilityTable(self.actions))

    def scale_feature(self, action: Action) -> str | None:
        """The model_scale feature of one message action (None without model_scale)."""
        if not self.model_scale or not action.is_message:
            return None
        name = self.model_scale
        for dim, value in action.dimensions().items():
            name = name.replace("{" + dim + "}", value)
        return name

    def model_context(self, context: Mapping[str, float]) -> dict[str, float]:
        """Keep the context features `model_features` names (all when it names none), then add
        the products `model_crosses` names (from the whole context)."""
        if not self.model_features:
            out = dict(context)
        else:
            exact = {f for f in self.model_features if not f.endswith("*")}
            prefixes = tuple(f[:-1] for f in self.model_features if f.endswith("*"))
            out = {k: v for k, v in context.items() if k in exact or k.startswith(prefixes)}
        for cross in self.model_crosses:
            left, right = cross.split("*")
            out[cross] = context.get(left, 0.0) * context.get(right, 0.0)
        return out

    @property
    def action_ids(self) -> tuple[str, ...]:
        """Return every arm's id, no-action first."""
        return self._action_ids

    @property
    def no_action(self) -> Action:
        """Return the explicit no-action arm."""
        return self.actions[0]

    def action(self, action_id: str) -> Action:
        """Return the arm with this id (KeyError if the campaign has none)."""
        return self._by_id[action_id]

    def eligibility(self, features: Mapping[str, float]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Split the arm ids into (eligible, ineligible) for these features, in action order.

        The same as `Action.eligible` for every messaging arm (non-messages, no-action among
        them, are always eligible), with each distinct rule evaluated once.
        """
        return self._eligibility.split(features)

    def costs(self) -> dict[str, float]:
        """Return the cost of every arm by id."""
        return {action.id: action.cost for action in self.actions}

    def responds_to(self, trigger_type: str) -> bool:
        """Tell whether this campaign decides on a trigger of this type."""
        return trigger_type in self.triggers


def parse_rule(text: str, path: str = "rule") -> Rule:
    """Parse `feature op number` (ops >=, >, <=, <, ==, !=) without eval, naming `path` on error."""
    match = _RULE_RE.match(text) if isinstance(text, str) else None
    if match is None:
        raise CampaignError(
            path,
            f"{text!r} is not a rule of the form '<feature> <op> <number>' "
            "with op one of >=, >, <=, <, ==, != (a feature name that is not an identifier, "
            'such as a category share, in double quotes: "category_home-garden" >= 0.2)',
        )
    value = float(match["value"])
    if not math.isfinite(value):
        raise CampaignError(path, f"{text!r}: the number must be finite")
    return Rule(match["feature"] or match["quoted"], match["op"], value)


def _known_feature(rule: Rule, path: str) -> Rule:
    """The rule, if its feature is one the engine computes (a misspelt one would read 0 always)."""
    name = rule.feature
    if name in feature_names() or (name.startswith("category_") and name != "category_"):
        return rule
    close = difflib.get_close_matches(name, sorted(feature_names()), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else " (see docs/ENGINE_API.md, features)"
    raise CampaignError(path, f"{name!r} is not a feature{hint}")


def _known_model_feature(name: str, path: str) -> str:
    """`name` if the models can see it (model_features, either side of a model_crosses entry):
    a feature features() sets and model_view() keeps, a `category_<name>`, or with a trailing
    `*` a prefix of one. A misspelt name, or a raw one (cart_value: the models see only the
    scaled features), left the model without the input, silently (QA: `["cart_value",
    "frequency"]` gave the models no context at all)."""
    seen = feature_names() - RAW_FEATURES
    if name.endswith("*"):
        prefix = name[:-1]
        if any(f.startswith(prefix) for f in seen) or "category_".startswith(prefix):
            return name
        if prefix.startswith("category_"):
            return name
    elif name in seen or (name.startswith("category_") and name != "category_"):
        return name
    if name in RAW_FEATURES:
        raise CampaignError(
            path, f"{name!r} is a raw value the models never see; they read its scaled features"
        )
    close = difflib.get_close_matches(name.rstrip("*"), sorted(seen), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else " (see docs/ENGINE_API.md, features)"
    raise CampaignError(path, f"{name!r} is not a feature the models see{hint}")


class _Table:
    """A TOML table being consumed: typed getters that name the field, and a check for leftovers."""

    def __init__(self, data: object, path: str) -> None:
        if not isinstance(data, Mapping):
            raise CampaignError(path or "campaign", "must be a table")
        self.data: dict[str, Any] = dict(data)
        self.path = path

    def at(self, key: str) -> str:
        """Return the dotted path of a key of this table."""
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        """Tell whether the key is present."""
        return key in self.data

    def raw(self, key: str) -> object:
        """Take the raw value of a key that must be present."""
        if key not in self.data:
            raise CampaignError(self.at(key), "is required")
        return self.data.pop(key)

    def table(self, key: str, *, required: bool = False) -> _Table:
        """Take a sub-table (an empty one if absent and optional)."""
        if key not in self.data:
            if required:
                raise CampaignError(self.at(key), "is required")
            return _Table({}, self.at(key))
        return _Table(self.data.pop(key), self.at(key))

    def string(
        self, key: str, default: str | None = None, pattern: re.Pattern[str] | None = None
    ) -> str:
        """Take a string, optionally checked against a pattern."""
        if key not in self.data and default is not None:
            return default
        value = self.raw(key)
        if not isinstance(value, str) or not value:
            raise CampaignError(self.at(key), "must be a non-empty string")
        if pattern is not None and not pattern.match(value):
            raise CampaignError(
                self.at(key), f"{value!r} must match {pattern.pattern} (lower case, digits, _ or -)"
            )
        return value

    def number(
        self,
        key: str,
        default: float | None = None,
        *,
        low: float = -math.inf,
        high: float = math.inf,
        low_open: bool = False,
    ) -> float:
        """Take a finite number (int or float) within [low, high] (or (low, high])."""
        if key not in self.data and default is not None:
            return default
        value = self.raw(key)
        path = self.at(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CampaignError(path, "must be a number")
        number = float(value)
        too_low = number <= low if low_open else number < low
        if not math.isfinite(number) or too_low or number > high:
            left = "(" if low_open else "["
            raise CampaignError(path, f"must be in {left}{low:g}, {high:g}]")
        return number

    def integer(self, key: str, default: int | None = None, *, low: int, high: int) -> int:
        """Take an integer within [low, high]."""
        if key not in self.data and default is not None:
            return default
        value = self.raw(key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise CampaignError(self.at(key), f"must be an integer in [{low}, {high}]")
        return value

    def strings(self, key: str, pattern: re.Pattern[str] | None = None) -> tuple[str, ...]:
        """Take a non-empty list of distinct non-empty strings."""
        value = self.raw(key)
        path = self.at(key)
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(item, str) and item for item in value)
        ):
            raise CampaignError(path, "must be a non-empty list of strings")
        if len(set(value)) != len(value):
            raise CampaignError(path, "must not repeat a value")
        if pattern is not None:
            for i, item in enumerate(value):
                if not pattern.match(item):
                    raise CampaignError(
                        f"{path}[{i}]",
                        f"{item!r} must match {pattern.pattern} (lower case, digits, _ or -)",
                    )
        return tuple(value)

    def tables(self, key: str) -> list[_Table]:
        """Take an optional array of tables."""
        if key not in self.data:
            return []
        value = self.data.pop(key)
        if not isinstance(value, list):
            raise CampaignError(self.at(key), "must be an array of tables")
        return [_Table(item, f"{self.at(key)}[{i}]") for i, item in enumerate(value)]

    def rest(self) -> dict[str, Any]:
        """Take every remaining key (for tables whose keys are names, not fields)."""
        rest, self.data = self.data, {}
        return rest

    def done(self) -> None:
        """Fail on the first key nobody consumed: an unknown key is most likely a typo."""
        for key in self.data:
            raise CampaignError(self.at(key), "unknown key")


def parse_campaign(mapping: Mapping[str, Any]) -> Campaign:
    """Validate a campaign mapping (a parsed TOML document) and build the Campaign."""
    top = _Table(mapping, "")
    name = top.string("name", pattern=_NAME_RE)
    description = top.string("description", default="")
    salt = top.string("salt")
    triggers = top.strings("triggers", pattern=_NAME_RE)
    for i, trigger in enumerate(triggers):
        if trigger not in TRIGGER_TYPES:  # a misspelt trigger would never fire: refuse it
            raise CampaignError(
                f"triggers[{i}]", f"{trigger!r} is not a trigger; one of {', '.join(TRIGGER_TYPES)}"
            )
    objective = top.string("objective", default="reward")
    if objective not in OBJECTIVES:
        raise CampaignError("objective", f"{objective!r} must be one of {', '.join(OBJECTIVES)}")
    model = top.string("model", default="default")
    if model not in MODEL_NAMES:
        raise CampaignError("model", f"{model!r} must be one of {', '.join(MODEL_NAMES)}")
    model_features: tuple[str, ...] = ()
    if top.has("model_features"):
        model_features = top.strings("model_features", pattern=_FEATURE_RE)
        for i, feature in enumerate(model_features):  # `name` is the campaign's
            _known_model_feature(feature, f"{top.at('model_features')}[{i}]")
    model_crosses: tuple[str, ...] = ()
    if top.has("model_crosses"):
        model_crosses = top.strings("model_crosses", pattern=_CROSS_RE)
        for i, cross in enumerate(model_crosses):
            for side in cross.split("*"):
                _known_model_feature(side, f"{top.at('model_crosses')}[{i}]")
    model_l2 = top.number("model_l2", 1.0, low=0.0, high=1e6, low_open=True)
    model_scale = top.string("model_scale", default="")
    if model_scale:
        if model != "factored":
            raise CampaignError("model_scale", 'needs model = "factored"')
        bare = _SCALE_DIM_RE.sub("x", model_scale)
        dims = set(_SCALE_DIM_RE.findall(model_scale))
        if not _FEATURE_RE.match(bare) or bare.endswith("*") or not dims <= set(_DIMENSIONS):
            raise CampaignError(
                "model_scale",
                f"{model_scale!r} must be a feature name with {{dimension}} placeholders "
                f"({', '.join(_DIMENSIONS)})",
            )
    guardrails = _parse_guardrails(top.table("guardrails"))
    actions, slot_hours = _parse_actions(top.table("actions", required=True), guardrails)
    _check_cap_channels(guardrails, actions)
    actions = _apply_costs(top.table("costs"), actions)
    exploration = _parse_exploration(top.table("exploration"))
    reward = _parse_reward(top.table("reward"))
    top.done()
    campaign = Campaign(
        name=name,
        salt=salt,
        triggers=triggers,
        actions=actions,
        objective="uplift" if objective == "uplift" else "reward",
        exploration=exploration,
        guardrails=guardrails,
        reward=reward,
        slot_hours=slot_hours,
        model=model,
        description=description,
        model_features=model_features,
        model_crosses=model_crosses,
        model_l2=model_l2,
        model_scale=model_scale,
    )
    _check_scale_features(campaign)
    return campaign


def _check_scale_features(campaign: Campaign) -> None:
    """model_scale names, for every message action, a feature the models see: a template that
    gives a name features() never sets ("open_best_{offer}", or a channel without its rates)
    scaled that action's blocks by 0, silently."""
    for action in campaign.actions:
        name = campaign.scale_feature(action)  # None for no-action, or without model_scale
        if name is None:
            continue
        try:
            _known_model_feature(name, "model_scale")
        except CampaignError as exc:
            raise CampaignError(
                "model_scale", f"{campaign.model_scale!r} gives action {action.id} {exc.problem}"
            ) from None


def _check_cap_channels(guardrails: Guardrails, actions: tuple[Action, ...]) -> None:
    """A channel cap names channels of the campaign's actions: one naming none (a misspelling,
    "smss") would never hold a decision back, and said nothing."""
    offered = sorted({a.channel for a in actions if a.is_message})
    for i, cap in enumerate(guardrails.caps):
        for channel in cap.channels or ():
            if channel not in offered:
                raise CampaignError(
                    f"guardrails.caps[{i}].channels",
                    f"{channel!r} is no channel of this campaign's actions "
                    f"({', '.join(offered)}): the cap would never apply",
                )


def _parse_actions(
    table: _Table, guardrails: Guardrails
) -> tuple[tuple[Action, ...], dict[str, int]]:
    """Build the arms: dimension cross product, include/exclude patterns, slots, rules."""
    dims_table = table.table("dimensions", required=True)
    dims: dict[str, tuple[str, ...]] = {"channel": dims_table.strings("channel", _VALUE_RE)}
    for dim in DIMENSIONS[1:]:
        if dims_table.has(dim):
            dims[dim] = dims_table.strings(dim, _VALUE_RE)
        else:
            dims[dim] = (DIMENSION_DEFAULTS[dim],)
    dims_table.done()
    if NO_CHANNEL in dims["channel"]:
        raise CampaignError(
            dims_table.at("channel"), f"{NO_CHANNEL!r} is reserved for the no-action arm"
        )

    include = [_parse_pattern(t, dims) for t in table.tables("include")]
    exclude = [_parse_pattern(t, dims) for t in table.tables("exclude")]
    combos = [
        dict(zip(DIMENSIONS, values, strict=True))
        for values in itertools.product(*(dims[d] for d in DIMENSIONS))
    ]
    if include:
        combos = [c for c in combos if any(_matches(p, c) for p in include)]
    combos = [c for c in combos if not any(_matches(p, c) for p in exclude)]
    if not combos:
        raise CampaignError(table.at("dimensions"), "include/exclude leave no action")
    if len(combos) + 1 > MAX_ACTIONS:
        raise CampaignError(
            table.at("dimensions"),
            f"{len(combos) + 1} actions (with no-action) is more than {MAX_ACTIONS}",
        )

    slot_hours = _parse_slot_hours(table.table("slot_hours"), dims["slot"], guardrails)

    rules_by_combo: list[list[Rule]] = [[] for _ in combos]
    for rule_table in table.tables("rules"):
        match_table = rule_table.table("match")
        pattern = _parse_pattern(match_table, dims)
        eligible = rule_table.strings("eligible")
        rules = [
            _known_feature(parse_rule(text, path), path)
            for i, text in enumerate(eligible)
            for path in (f"{rule_table.at('eligible')}[{i}]",)
        ]
        rule_table.done()
        hits = [i for i, combo in enumerate(combos) if _matches(pattern, combo)]
        if not hits:
            raise CampaignError(match_table.path, "matches no action")
        for i in hits:
            rules_by_combo[i].extend(rules)
    table.done()

    no_action = Action(NO_ACTION_ID, NO_CHANNEL, NO_CHANNEL, NO_CHANNEL, NO_CHANNEL)
    arms = [no_action]
    for combo, rules in zip(combos, rules_by_combo, strict=True):
        action_id = ":".join(combo[d] for d in DIMENSIONS)
        contradiction = contradictory_rules(rules)
        if contradiction:
            raise CampaignError(
                table.at("rules"),
                f"action {action_id} can never be eligible: "
                + " and ".join(str(rule) for rule in contradiction),
            )
        arms.append(
            Action(
                action_id,
                combo["channel"],
                combo["offer"],
                combo["message"],
                combo["slot"],
                rules=tuple(rules),
            )
        )
    return tuple(arms), slot_hours


def contradictory_rules(rules: Sequence[Rule]) -> tuple[Rule, ...]:
    """The rules on one feature that no value satisfies together (empty: none contradict).

    An action's rules must all hold; a pair like `cart_value >= 30` and `cart_value < 10` (two
    rule blocks matching the same action) left it never eligible, without a word.
    """
    by_feature: dict[str, list[Rule]] = {}
    for rule in rules:
        by_feature.setdefault(rule.feature, []).append(rule)
    for group in by_feature.values():
        if not _satisfiable(group):
            return tuple(group)
    return ()


def _satisfiable(rules: Sequence[Rule]) -> bool:
    """Whether some real number meets every rule (all on the same feature)."""
    low, low_open = -math.inf, False
    high, high_open = math.inf, False
    for rule in rules:
        v = rule.value
        if rule.op in (">", ">=") and (v > low or (v == low and rule.op == ">")):
            low, low_open = v, rule.op == ">"
        elif rule.op in ("<", "<=") and (v < high or (v == high and rule.op == "<")):
            high, high_open = v, rule.op == "<"
    excluded = {rule.value for rule in rules if rule.op == "!="}
    equal = {rule.value for rule in rules if rule.op == "=="}
    if equal:
        (value, *others) = equal
        inside = (low < value or (low == value and not low_open)) and (
            value < high or (value == high and not high_open)
        )
        return not others and inside and value not in excluded
    if low < high:
        return True  # an interval of reals: a few excluded points leave plenty
    return low == high and not low_open and not high_open and low not in excluded


def _parse_pattern(table: _Table, dims: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    """Parse a partial `{dimension = value}` pattern, each value one the dimension has."""
    pattern: dict[str, str] = {}
    for dim in DIMENSIONS:
        if table.has(dim):
            value = table.string(dim)
            if value not in dims[dim]:
                raise CampaignError(table.at(dim), f"{value!r} is not a value of dimension {dim!r}")
            pattern[dim] = value
    table.done()
    return pattern


def _matches(pattern: Mapping[str, str], combo: Mapping[str, str]) -> bool:
    """Tell whether a combination has every dimension value the pattern names."""
    return all(combo[dim] == value for dim, value in pattern.items())


def _parse_slot_hours(
    table: _Table, slots: tuple[str, ...], guardrails: Guardrails
) -> dict[str, int]:
    """Give each deferred slot its local send hour; 'now' is immediate and has none."""
    given = table.rest()
    hours: dict[str, int] = {}
    for slot, hour in given.items():
        path = table.at(slot)
        if slot not in slots:
            raise CampaignError(path, f"{slot!r} is not a value of dimension 'slot'")
        if slot == IMMEDIATE_SLOT:
            raise CampaignError(path, f"{IMMEDIATE_SLOT!r} is sent immediately and takes no hour")
        if isinstance(hour, bool) or not isinstance(hour, int) or not 0 <= hour <= 23:
            raise CampaignError(path, "must be an integer in [0, 23]")
        hours[slot] = hour
    for slot in slots:
        if slot == IMMEDIATE_SLOT or slot in hours:
            continue
        if slot not in DEFAULT_SLOT_HOURS:
            raise CampaignError(table.at(slot), "deferred slot needs a local send hour in [0, 23]")
        hours[slot] = DEFAULT_SLOT_HOURS[slot]
    quiet = guardrails.quiet_hours
    if quiet is not None:
        for slot, hour in hours.items():
            if quiet.contains(hour):
                default = "" if slot in given else f" (the default for {slot!r})"
                raise CampaignError(
                    table.at(slot),
                    f"send hour {hour}{default} falls inside guardrails.quiet_hours "
                    f"[{quiet.start}, {quiet.end}): the slot could never be used",
                )
    return hours


def _apply_costs(table: _Table, actions: tuple[Action, ...]) -> tuple[Action, ...]:
    """Cost of an arm: sum of its dimension values' costs, unless given for the action itself."""
    values_of = {dim: {getattr(a, dim) for a in actions[1:]} for dim in DIMENSIONS}
    per_dim: dict[str, dict[str, float]] = {}
    for dim in DIMENSIONS:
        sub = table.table(dim)
        costs: dict[str, float] = {}
        for value in list(sub.data):
            if value not in values_of[dim]:
                raise CampaignError(sub.at(value), f"{value!r} is not a value of dimension {dim!r}")
            costs[value] = sub.number(value, low=0.0)
        per_dim[dim] = costs
    by_action = table.table("action")
    overrides: dict[str, float] = {}
    ids = {a.id for a in actions}
    for action_id in list(by_action.data):
        if action_id not in ids:
            raise CampaignError(by_action.at(action_id), "is not an action id of this campaign")
        overrides[action_id] = by_action.number(action_id, low=0.0)
    table.done()

    priced = []
    for action in actions:
        if action.id in overrides:
            cost = overrides[action.id]
        elif not action.is_message:
            cost = 0.0
        else:
            cost = sum(per_dim[dim].get(getattr(action, dim), 0.0) for dim in DIMENSIONS)
        priced.append(replace(action, cost=cost))
    return tuple(priced)


_EXPLORATION_PARAMS: Mapping[str, tuple[bool, float, float, bool]] = {
    # name: (integer, low, high, low_open)
    "epsilon": (False, 0.0, 1.0, False),
    "temperature": (False, 0.0, 1e6, True),
    "n_bootstrap": (True, 1, 1000, False),
    "gamma": (False, 0.0, 1e9, True),
    "gamma_exponent": (False, 0.0, 1.0, False),
    "optimism": (False, 0.0, 100.0, False),
    "min_propensity": (False, 0.0, 0.5, False),
}


def _parse_exploration(table: _Table) -> ExplorationSpec:
    """Read the exploration kind and whichever of its parameters are given."""
    kind = table.string("kind", default="epsilon_greedy")
    if kind not in EXPLORATION_KINDS:
        raise CampaignError(
            table.at("kind"), f"{kind!r} must be one of {', '.join(EXPLORATION_KINDS)}"
        )
    params: dict[str, float | int] = {}
    for name, (integer, low, high, low_open) in _EXPLORATION_PARAMS.items():
        if not table.has(name):
            continue
        if integer:
            params[name] = table.integer(name, low=int(low), high=int(high))
        else:
            params[name] = table.number(name, low=low, high=high, low_open=low_open)
    table.done()
    ignored = ignored_parameters(kind, params)
    if ignored is not None:  # accepted before, and silently without effect
        raise CampaignError(table.path, ignored)
    try:  # the policies module has the last word on what it accepts
        ExplorationConfig.from_params(kind, params)
    except ValueError as exc:
        raise CampaignError(table.path, str(exc)) from exc
    return ExplorationSpec(kind=kind, params=params)


def _parse_guardrails(table: _Table) -> Guardrails:
    """Read caps, cooldown, quiet hours, holdout share and the fallback time zone."""
    caps = []
    for cap_table in table.tables("caps"):
        scope = cap_table.string("scope")
        if scope not in ("overall", "channel"):
            raise CampaignError(cap_table.at("scope"), f"{scope!r} must be 'overall' or 'channel'")
        # The state keeps at most MAX_SENT messages of the last SENT_RETENTION_S: a cap beyond
        # either could not be enforced.
        max_count = cap_table.integer("max", low=0, high=MAX_SENT)
        window_s = cap_table.number("window_s", low=0.0, high=SENT_RETENTION_S, low_open=True)
        channels: tuple[str, ...] | None = None
        if cap_table.has("channels"):
            if scope == "overall":
                raise CampaignError(cap_table.at("channels"), "only a 'channel' cap names channels")
            channels = cap_table.strings("channels", _VALUE_RE)
        cap_table.done()
        caps.append(
            Cap("overall" if scope == "overall" else "channel", max_count, window_s, channels)
        )
    cooldown_s = table.number("cooldown_s", default=0.0, low=0.0, high=366 * 86_400.0)
    quiet: QuietHours | None = None
    if table.has("quiet_hours"):
        quiet_table = table.table("quiet_hours")
        start = quiet_table.integer("start", low=0, high=23)
        end = quiet_table.integer("end", low=0, high=23)
        if start == end:
            raise CampaignError(quiet_table.at("end"), "must differ from start")
        quiet_table.done()
        quiet = QuietHours(start, end)
    holdout = table.number("holdout_share", default=0.0, low=0.0, high=0.5)
    tz_name = table.string("default_timezone", default="UTC")
    _check_timezone(tz_name, table.at("default_timezone"))
    table.done()
    return Guardrails(tuple(caps), cooldown_s, quiet, holdout, tz_name)


def _check_timezone(name: str, path: str) -> None:
    """Fail unless the name is a time zone zoneinfo knows."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise CampaignError(path, f"{name!r} is not a known IANA time zone") from exc


def _parse_reward(table: _Table) -> RewardDefinition:
    """Read outcome values, how they combine, the attribution window and the default reward."""
    outcomes_table = table.table("outcomes", required=True)
    outcomes: dict[str, OutcomeValue] = {}
    for outcome_type, spec in outcomes_table.rest().items():
        path = outcomes_table.at(outcome_type)
        if outcome_type not in OUTCOME_TYPES:
            raise CampaignError(path, f"{outcome_type!r} must be one of {', '.join(OUTCOME_TYPES)}")
        outcomes[outcome_type] = _parse_outcome_value(spec, path)
    if not outcomes:
        raise CampaignError(outcomes_table.path, "must give a value to at least one outcome type")
    combine = table.string("combine", default="sum")
    if combine not in ("sum", "max"):
        raise CampaignError(table.at("combine"), f"{combine!r} must be 'sum' or 'max'")
    window = table.number(
        "attribution_window_s", default=86_400.0, low=0.0, high=90 * 86_400.0, low_open=True
    )
    default = table.number("default", default=0.0, low=-1e6, high=1e6)
    table.done()
    return RewardDefinition(outcomes, "max" if combine == "max" else "sum", window, default)


def _parse_outcome_value(spec: object, path: str) -> OutcomeValue:
    """Read an outcome's reward: a number, "value" (its own value) or {base, per_value, cap, floor}."""
    if isinstance(spec, bool):
        raise CampaignError(
            path, 'must be a number, "value" or a table {base, per_value, cap, floor}'
        )
    if isinstance(spec, int | float):
        if not math.isfinite(spec):
            raise CampaignError(path, "must be finite")
        return OutcomeValue(base=float(spec))
    if spec == "value":
        return OutcomeValue(per_value=1.0)
    if isinstance(spec, Mapping):
        table = _Table(spec, path)
        base = table.number("base", default=0.0, low=-1e6, high=1e6)
        per_value = table.number("per_value", default=0.0, low=-1e6, high=1e6)
        cap = table.number("cap", low=-1e6, high=1e6) if table.has("cap") else None
        floor = table.number("floor", low=-1e6, high=1e6) if table.has("floor") else None
        if cap is not None and floor is not None and floor > cap:
            raise CampaignError(table.at("floor"), f"{floor:g} is above cap ({cap:g})")
        table.done()
        return OutcomeValue(base, per_value, cap, floor)
    raise CampaignError(path, 'must be a number, "value" or a table {base, per_value, cap, floor}')


def load_campaign(path: str | Path) -> Campaign:
    """Read and validate one campaign TOML file; errors name the file and the field."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise CampaignError(str(path), f"invalid TOML: {exc}") from exc
    except OSError as exc:
        raise CampaignError(str(path), f"cannot read: {exc.strerror}") from exc
    try:
        return parse_campaign(data)
    except CampaignError as exc:
        raise CampaignError(f"{path.name}: {exc.path}", exc.problem) from exc


def load_campaigns(directory: str | Path) -> dict[str, Campaign]:
    """Load every `*.toml` in a directory, by campaign name (a repeated name is an error)."""
    campaigns: dict[str, Campaign] = {}
    for path in sorted(Path(directory).glob("*.toml")):
        campaign = load_campaign(path)
        if campaign.name in campaigns:
            raise CampaignError(f"{path.name}: name", f"{campaign.name!r} is already defined")
        campaigns[campaign.name] = campaign
    return campaigns


def builtin_campaign_names() -> list[str]:
    """List the example campaigns shipped in engine/campaigns/."""
    folder = resources.files("engine") / "campaigns"
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def builtin_campaign(name: str) -> Campaign:
    """Load a shipped example campaign by name: cart_abandonment, cross_sell or win_back."""
    if name not in builtin_campaign_names():
        raise CampaignError("name", f"no built-in campaign {name!r}")
    data = (resources.files("engine") / "campaigns" / f"{name}.toml").read_bytes()
    return parse_campaign(tomllib.loads(data.decode("utf-8")))

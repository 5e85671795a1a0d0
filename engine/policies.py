"""Exploration policies: from per-action scores to a full probability distribution and a choice.

Every policy returns the complete distribution over the eligible actions, so the propensity that
a decision logs is the exact probability with which its action was drawn (what off-policy
evaluation needs). A floor (`min_propensity`) is then enforced by clipping and renormalising the
rest, and one uniform draw from the caller's `random.Random` picks the action by inverse CDF in
the order of `eligible`: deterministic given the seed.

Policies: epsilon-greedy, softmax (temperature), bootstrap Thompson sampling (a replica chosen
uniformly, then its argmax: P(a) is the share of replicas whose argmax is a, ties split evenly),
SquareCB (inverse-gap weighting, Foster & Rakhlin 2020, with gamma optionally growing as
gamma * (1 + t) ** gamma_exponent with the number of rewards learned t) and "optimistic", the
default: the same inverse-gap weighting, but over optimistic scores (the bandit adds
optimism * log(1 + x' A^-1 x), the information gain of trying the action, from the ridge model's
inverse covariance) and with a much greedier gamma, so exploration is directed at the actions
the model knows least about while every action keeps a logged, positive propensity.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "KIND_DEFAULTS",
    "POLICY_KINDS",
    "Choice",
    "ExplorationConfig",
    "apply_floor",
    "bonus",
    "choose",
    "distribution",
    "epsilon_greedy",
    "greedy_actions",
    "sample",
    "softmax",
    "squarecb",
    "thompson",
]

PolicyKind = Literal["epsilon_greedy", "softmax", "thompson", "squarecb", "optimistic"]
POLICY_KINDS: tuple[str, ...] = ("epsilon_greedy", "softmax", "thompson", "squarecb", "optimistic")

#: The parameters each kind reads (min_propensity: every kind's floor). One the kind ignores in a
#: campaign is a mistake (softmax with an epsilon explores by temperature alone): see
#: ignored_parameters. Snapshots keep every parameter, so from_params itself accepts them all.
PARAMS_BY_KIND: Mapping[str, frozenset[str]] = {
    "epsilon_greedy": frozenset({"epsilon", "optimism", "min_propensity"}),
    "softmax": frozenset({"temperature", "optimism", "min_propensity"}),
    "thompson": frozenset({"n_bootstrap", "min_propensity"}),
    "squarecb": frozenset({"gamma", "gamma_exponent", "optimism", "min_propensity"}),
    "optimistic": frozenset({"gamma", "gamma_exponent", "optimism", "min_propensity"}),
}


def ignored_parameters(kind: str, params: Iterable[str]) -> str | None:
    """Say which given parameters `kind` ignores and which it reads, or None if it reads them all."""
    reads = PARAMS_BY_KIND.get(kind)
    if reads is None:
        return None
    ignored = sorted(set(params) - reads)
    if not ignored:
        return None
    return f"{kind} ignores {', '.join(ignored)}: it reads {', '.join(sorted(reads))}"


KIND_DEFAULTS: Mapping[str, Mapping[str, float]] = {
    "optimistic": {"gamma": 1000.0, "optimism": 0.5},
}
"""Per-kind defaults of gamma and optimism where they differ from squarecb's 30 and 0."""
_BASE_DEFAULTS: Mapping[str, float] = {"gamma": 30.0, "optimism": 0.0}


@dataclass(frozen=True, slots=True)
class ExplorationConfig:
    """How the bandit explores; unused parameters of the other kinds are ignored."""

    kind: PolicyKind = "optimistic"
    epsilon: float = 0.1
    """epsilon_greedy: share of decisions spread uniformly over the eligible actions."""
    temperature: float = 0.1
    """softmax: P(a) ~ exp(score(a) / temperature)."""
    n_bootstrap: int = 10
    """thompson: bootstrap replicas per action."""
    gamma: float = math.nan
    """squarecb/optimistic: greediness, larger exploits more (NaN: the kind's default, 30/1000)."""
    gamma_exponent: float = 0.5
    """squarecb/optimistic: gamma grows as gamma * (1 + t) ** gamma_exponent, t rewards learned."""
    optimism: float = math.nan
    """Bonus scale (NaN: the kind's default, 0.5 for optimistic, else 0); see `bonus`."""
    min_propensity: float = 0.0
    """Floor on every eligible action's probability (capped at 1 / number of eligible actions)."""

    def __post_init__(self) -> None:
        """Fill in the kind's defaults, then reject out-of-range parameters, naming the field."""
        if self.kind not in POLICY_KINDS:
            raise ValueError(f"kind: {self.kind!r} must be one of {', '.join(POLICY_KINDS)}")
        defaults = KIND_DEFAULTS.get(self.kind, _BASE_DEFAULTS)
        for name in ("gamma", "optimism"):
            if math.isnan(getattr(self, name)):
                object.__setattr__(self, name, defaults[name])
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon: {self.epsilon} must be in [0, 1]")
        if not self.temperature > 0.0:
            raise ValueError(f"temperature: {self.temperature} must be > 0")
        if not 1 <= self.n_bootstrap <= 1000:
            raise ValueError(f"n_bootstrap: {self.n_bootstrap} must be in [1, 1000]")
        if not self.gamma > 0.0:
            raise ValueError(f"gamma: {self.gamma} must be > 0")
        if not 0.0 <= self.gamma_exponent <= 1.0:
            raise ValueError(f"gamma_exponent: {self.gamma_exponent} must be in [0, 1]")
        if not 0.0 <= self.optimism <= 100.0:
            raise ValueError(f"optimism: {self.optimism} must be in [0, 100]")
        if not 0.0 <= self.min_propensity <= 1.0:
            raise ValueError(f"min_propensity: {self.min_propensity} must be in [0, 1]")

    @classmethod
    def from_params(cls, kind: str, params: Mapping[str, float | int]) -> ExplorationConfig:
        """Build from a campaign's exploration kind and the parameters it gives."""
        known = {"epsilon", "temperature", "n_bootstrap", "gamma", "gamma_exponent"}
        known |= {"optimism", "min_propensity"}
        unknown = set(params) - known
        if unknown:
            raise ValueError(f"unknown exploration parameter(s): {', '.join(sorted(unknown))}")
        if kind not in POLICY_KINDS:
            raise ValueError(f"kind: {kind!r} must be one of {', '.join(POLICY_KINDS)}")
        base = cls(kind=kind)  # type: ignore[arg-type]
        values = {
            "epsilon": float(params.get("epsilon", base.epsilon)),
            "temperature": float(params.get("temperature", base.temperature)),
            "n_bootstrap": int(params.get("n_bootstrap", base.n_bootstrap)),
            "gamma": float(params.get("gamma", base.gamma)),
            "gamma_exponent": float(params.get("gamma_exponent", base.gamma_exponent)),
            "optimism": float(params.get("optimism", base.optimism)),
            "min_propensity": float(params.get("min_propensity", base.min_propensity)),
        }
        return cls(
            kind=base.kind,
            epsilon=values["epsilon"],
            temperature=values["temperature"],
            n_bootstrap=int(values["n_bootstrap"]),
            gamma=values["gamma"],
            gamma_exponent=values["gamma_exponent"],
            optimism=values["optimism"],
            min_propensity=values["min_propensity"],
        )


@dataclass(frozen=True, slots=True)
class Choice:
    """The chosen action, its exact probability, the full distribution and the scores used."""

    action_id: str
    propensity: float
    probabilities: dict[str, float] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    """Objective scores: predicted reward minus cost, or uplift over the baseline minus cost."""
    explore: bool = False
    """True when the chosen action is not a greedy (best-scoring) one."""


def greedy_actions(scores: Mapping[str, float], eligible: Sequence[str]) -> list[str]:
    """Return the eligible actions sharing the best score, in eligible order."""
    best = max(scores[a] for a in eligible)
    return [a for a in eligible if scores[a] == best]


def epsilon_greedy(
    scores: Mapping[str, float], eligible: Sequence[str], epsilon: float
) -> dict[str, float]:
    """Spread epsilon uniformly, the rest evenly over the best-scoring actions."""
    n = len(eligible)
    best = greedy_actions(scores, eligible)
    explore = epsilon / n
    exploit = (1.0 - epsilon) / len(best)
    probs = dict.fromkeys(eligible, explore)
    for a in best:
        probs[a] = explore + exploit
    return probs


def softmax(
    scores: Mapping[str, float], eligible: Sequence[str], temperature: float
) -> dict[str, float]:
    """Boltzmann distribution over the scores (numerically stable)."""
    top = max(scores[a] for a in eligible)
    weights = [math.exp((scores[a] - top) / temperature) for a in eligible]
    total = math.fsum(weights)
    return {a: w / total for a, w in zip(eligible, weights, strict=True)}


def squarecb(
    scores: Mapping[str, float], eligible: Sequence[str], gamma: float
) -> dict[str, float]:
    """Inverse-gap weighting: P(a) = 1 / (n + gamma * gap(a)), the rest to the best action."""
    n = len(eligible)
    best = greedy_actions(scores, eligible)
    top = scores[best[0]]
    probs: dict[str, float] = {}
    for a in eligible:
        if a not in best:
            probs[a] = 1.0 / (n + gamma * (top - scores[a]))
    rest = (1.0 - math.fsum(probs.values())) / len(best)
    for a in best:
        probs[a] = rest
    return {a: probs[a] for a in eligible}


def thompson(
    replica_scores: Sequence[Mapping[str, float]], eligible: Sequence[str]
) -> dict[str, float]:
    """Share of bootstrap replicas whose argmax is each action (a replica's ties split evenly)."""
    k = len(replica_scores)
    probs = dict.fromkeys(eligible, 0.0)
    for scores in replica_scores:
        best = greedy_actions(scores, eligible)
        share = 1.0 / (k * len(best))
        for a in best:
            probs[a] += share
    total = math.fsum(probs.values())
    return {a: p / total for a, p in probs.items()}


def apply_floor(probs: Mapping[str, float], floor: float) -> dict[str, float]:
    """Raise every probability to at least floor, taking the mass proportionally from the rest.

    The floor is capped at 1/n. Actions below it are pinned at it and the others rescaled, until
    none falls below: every result is >= the floor and the sum is 1 up to rounding.
    """
    n = len(probs)
    floor = min(floor, 1.0 / n)
    if floor <= 0.0 or all(p >= floor for p in probs.values()):
        return dict(probs)
    pinned: set[str] = set()
    out = dict(probs)
    while True:
        low = [a for a, p in out.items() if a not in pinned and p < floor]
        if not low:
            break
        pinned.update(low)
        free = [a for a in out if a not in pinned]
        free_mass = math.fsum(probs[a] for a in free)
        remaining = 1.0 - floor * len(pinned)
        for a in pinned:
            out[a] = floor
        if not free:
            break
        if free_mass <= 0.0:
            for a in free:
                out[a] = remaining / len(free)
        else:
            scale = remaining / free_mass
            for a in free:
                out[a] = probs[a] * scale
    return out


def sample(probs: Mapping[str, float], eligible: Sequence[str], rng: random.Random) -> str:
    """Draw one action by inverse CDF in eligible order with a single rng.random() call."""
    u = rng.random()
    cumulative = 0.0
    last = eligible[-1]
    for a in eligible:
        p = probs[a]
        if p <= 0.0:
            continue
        last = a
        cumulative += p
        if u < cumulative:
            return a
    return last


def bonus(config: ExplorationConfig, variance: float) -> float:
    """Return the optimism bonus for a confidence variance x' A^-1 x under this config.

    Kind "optimistic": optimism * log(1 + variance), the information gain of observing the
    action's reward, which falls like the variance once it is small but grows only
    logarithmically when it is large (many features, few rewards). Other kinds: the LinUCB width
    optimism * sqrt(variance).
    """
    if config.optimism <= 0.0:
        return 0.0
    if config.kind == "optimistic":
        return config.optimism * math.log1p(variance)
    return config.optimism * math.sqrt(variance)


def distribution(
    config: ExplorationConfig,
    scores: Mapping[str, float],
    eligible: Sequence[str],
    replica_scores: Sequence[Mapping[str, float]] | None = None,
    t: int = 0,
) -> dict[str, float]:
    """Return the policy's floored distribution over the eligible actions (in eligible order)."""
    if not eligible:
        raise ValueError("no eligible action")
    if config.kind == "epsilon_greedy":
        probs = epsilon_greedy(scores, eligible, config.epsilon)
    elif config.kind == "softmax":
        probs = softmax(scores, eligible, config.temperature)
    elif config.kind in ("squarecb", "optimistic"):
        gamma = config.gamma * (1.0 + t) ** config.gamma_exponent
        probs = squarecb(scores, eligible, gamma)
    else:
        if not replica_scores:
            raise ValueError("thompson needs replica scores")
        probs = thompson(replica_scores, eligible)
    return apply_floor(probs, config.min_propensity)


def choose(
    config: ExplorationConfig,
    scores: Mapping[str, float],
    eligible: Sequence[str],
    rng: random.Random,
    replica_scores: Sequence[Mapping[str, float]] | None = None,
    t: int = 0,
) -> Choice:
    """Compute the distribution, draw an action and return it with its exact propensity."""
    probs = distribution(config, scores, eligible, replica_scores, t)
    action = sample(probs, eligible, rng)
    best = greedy_actions(scores, eligible)
    return Choice(
        action_id=action,
        propensity=probs[action],
        probabilities=probs,
        scores={a: scores[a] for a in eligible},
        explore=action not in best,
    )

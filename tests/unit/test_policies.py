"""Contract suite for every exploration policy, plus policy-specific checks."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.policies import (
    POLICY_KINDS,
    ExplorationConfig,
    apply_floor,
    bonus,
    choose,
    distribution,
    epsilon_greedy,
    sample,
    softmax,
    squarecb,
    thompson,
)

ACTIONS = [f"a{i}" for i in range(8)]

score_values = st.floats(min_value=-5.0, max_value=5.0, allow_nan=False)


@st.composite
def problems(draw: st.DrawFn) -> tuple[dict[str, float], list[str], list[dict[str, float]]]:
    """Scores for all actions, a non-empty eligible subset, and 1-5 bootstrap replicas' scores."""
    eligible = draw(st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=8, unique=True))
    scores = {a: draw(score_values) for a in ACTIONS}
    n_rep = draw(st.integers(min_value=1, max_value=5))
    replicas = [{a: draw(score_values) for a in ACTIONS} for _ in range(n_rep)]
    return scores, eligible, replicas


def _config(kind: str, floor: float) -> ExplorationConfig:
    return ExplorationConfig(
        kind=kind,  # type: ignore[arg-type]
        epsilon=0.2,
        temperature=0.3,
        n_bootstrap=3,
        gamma=20.0,
        min_propensity=floor,
    )


@pytest.mark.parametrize("kind", POLICY_KINDS)
@settings(max_examples=150, deadline=None)
@given(
    problem=problems(),
    floor=st.sampled_from([0.0, 0.01, 0.05, 0.2, 0.5]),
    seed=st.integers(0, 2**32),
    t=st.integers(0, 10_000),
)
def test_policy_contract(
    kind: str,
    problem: tuple[dict[str, float], list[str], list[dict[str, float]]],
    floor: float,
    seed: int,
    t: int,
) -> None:
    """Sums to 1, respects the floor, only eligible mass, exact propensity, same seed same pick."""
    scores, eligible, replicas = problem
    config = _config(kind, floor)
    probs = distribution(config, scores, eligible, replicas, t)
    assert list(probs) == eligible
    assert math.isclose(math.fsum(probs.values()), 1.0, abs_tol=1e-9)
    effective_floor = min(floor, 1.0 / len(eligible))
    assert all(p >= effective_floor for p in probs.values())
    assert all(p >= 0.0 for p in probs.values())
    c1 = choose(config, scores, eligible, random.Random(seed), replicas, t)
    c2 = choose(config, scores, eligible, random.Random(seed), replicas, t)
    assert c1 == c2
    assert c1.action_id in eligible
    assert c1.propensity == c1.probabilities[c1.action_id] > 0.0
    assert c1.probabilities == probs
    assert set(c1.scores) == set(eligible)


@pytest.mark.parametrize("kind", POLICY_KINDS)
def test_draws_follow_the_distribution(kind: str) -> None:
    """Empirical frequencies over many seeded draws match the stated probabilities."""
    scores = {"a": 0.9, "b": 0.5, "c": 0.45, "d": 0.1}
    replicas = [
        {"a": 1.0, "b": 0.0, "c": 0.0, "d": 0.0},
        {"a": 0.0, "b": 1.0, "c": 0.0, "d": 0.0},
        {"a": 0.0, "b": 0.0, "c": 1.0, "d": 0.0},
    ]
    config = _config(kind, 0.05)
    eligible = list(scores)
    probs = distribution(config, scores, eligible, replicas)
    rng = random.Random(7)
    n = 40_000
    counts = dict.fromkeys(eligible, 0)
    for _ in range(n):
        counts[choose(config, scores, eligible, rng, replicas).action_id] += 1
    for a in eligible:
        sd = math.sqrt(probs[a] * (1 - probs[a]) / n)
        assert abs(counts[a] / n - probs[a]) < 5 * sd + 1e-9


def test_epsilon_greedy_splits_ties_and_spreads_epsilon() -> None:
    """Best actions share 1 - epsilon; every action gets epsilon / n."""
    probs = epsilon_greedy({"a": 1.0, "b": 1.0, "c": 0.0}, ["a", "b", "c"], 0.3)
    assert probs["c"] == pytest.approx(0.1)
    assert probs["a"] == probs["b"] == pytest.approx(0.1 + 0.35)


def test_softmax_is_stable_and_ordered() -> None:
    """Huge score gaps do not overflow; a higher score gets more mass."""
    probs = softmax({"a": 1000.0, "b": 0.0, "c": 999.9}, ["a", "b", "c"], 0.01)
    assert probs["a"] > probs["c"] > probs["b"] >= 0.0
    assert math.isclose(sum(probs.values()), 1.0)


def test_squarecb_inverse_gap_weights() -> None:
    """P(a) = 1 / (n + gamma * gap) for non-best actions."""
    probs = squarecb({"a": 1.0, "b": 0.5, "c": 0.0}, ["a", "b", "c"], 10.0)
    assert probs["b"] == pytest.approx(1 / (3 + 5))
    assert probs["c"] == pytest.approx(1 / (3 + 10))
    assert probs["a"] == pytest.approx(1 - 1 / 8 - 1 / 13)


def test_squarecb_gamma_grows_with_t() -> None:
    """With gamma_exponent > 0, later decisions exploit more."""
    config = ExplorationConfig(kind="squarecb", gamma=10.0, gamma_exponent=0.5)
    scores = {"a": 1.0, "b": 0.0}
    early = distribution(config, scores, ["a", "b"], t=0)
    late = distribution(config, scores, ["a", "b"], t=10_000)
    assert late["a"] > early["a"]


def test_thompson_vote_shares() -> None:
    """Each replica votes for its argmax; ties split its vote."""
    reps = [{"a": 1.0, "b": 0.0}, {"a": 0.0, "b": 1.0}, {"a": 1.0, "b": 1.0}, {"a": 2.0, "b": 0}]
    probs = thompson(reps, ["a", "b"])
    assert probs == {"a": pytest.approx(2.5 / 4), "b": pytest.approx(1.5 / 4)}


def test_floor_pins_low_actions_and_keeps_order() -> None:
    """Actions below the floor are raised to it; the rest keep their proportions."""
    probs = apply_floor({"a": 0.9, "b": 0.1, "c": 0.0}, 0.05)
    assert probs["c"] == 0.05
    assert probs["a"] / probs["b"] == pytest.approx(9.0)
    assert math.isclose(sum(probs.values()), 1.0)


def test_floor_above_uniform_gives_uniform() -> None:
    """A floor above 1/n is infeasible: the result is uniform."""
    probs = apply_floor({"a": 1.0, "b": 0.0, "c": 0.0}, 0.5)
    assert all(p == pytest.approx(1 / 3) for p in probs.values())


def test_sample_skips_zero_mass() -> None:
    """An action with probability 0 is never drawn, even at the end of the CDF."""
    rng = random.Random(3)
    assert {sample({"a": 1.0, "b": 0.0}, ["a", "b"], rng) for _ in range(200)} == {"a"}


def test_explore_flag() -> None:
    """explore is True exactly when the chosen action is not a best-scoring one."""
    config = ExplorationConfig(kind="epsilon_greedy", epsilon=1.0)
    rng = random.Random(0)
    for _ in range(50):
        c = choose(config, {"a": 1.0, "b": 0.0}, ["a", "b"], rng)
        assert c.explore == (c.action_id == "b")


def test_config_validation_and_from_params() -> None:
    """Bad parameters name the field; campaign params map onto the config."""
    with pytest.raises(ValueError, match="epsilon"):
        ExplorationConfig(epsilon=1.5)
    with pytest.raises(ValueError, match="kind"):
        ExplorationConfig.from_params("ucb", {})
    with pytest.raises(ValueError, match="gamma"):
        ExplorationConfig(gamma=0.0)
    with pytest.raises(ValueError, match="unknown"):
        ExplorationConfig.from_params("softmax", {"tau": 1.0})
    config = ExplorationConfig.from_params("thompson", {"n_bootstrap": 4, "min_propensity": 0.02})
    assert (config.kind, config.n_bootstrap, config.min_propensity) == ("thompson", 4, 0.02)


def test_no_eligible_action_is_an_error() -> None:
    """An empty eligible list cannot be decided."""
    with pytest.raises(ValueError, match="no eligible"):
        distribution(ExplorationConfig(), {}, [])


def test_default_is_optimistic_with_its_own_defaults() -> None:
    """The default kind is optimistic (gamma 1000, optimism 0.5); other kinds keep theirs."""
    config = ExplorationConfig()
    assert (config.kind, config.gamma, config.gamma_exponent, config.optimism) == (
        "optimistic",
        1000.0,
        0.5,
        0.5,
    )
    assert ExplorationConfig.from_params("optimistic", {}) == config
    for kind in ("epsilon_greedy", "softmax", "thompson", "squarecb"):
        other = ExplorationConfig.from_params(kind, {})
        assert (other.gamma, other.optimism) == (30.0, 0.0)
    tuned = ExplorationConfig.from_params("optimistic", {"gamma": 50.0, "optimism": 0.0})
    assert (tuned.gamma, tuned.optimism) == (50.0, 0.0)


def test_optimistic_is_inverse_gap_weighting_with_its_gamma() -> None:
    """Over given scores, optimistic is squarecb with gamma_t = gamma * (1 + t) ** exponent."""
    scores = {"a": 1.0, "b": 0.5, "c": 0.0}
    config = ExplorationConfig(gamma=100.0)
    assert distribution(config, scores, list(scores), t=3) == pytest.approx(
        squarecb(scores, list(scores), 100.0 * 4.0**0.5)
    )


@settings(max_examples=200, deadline=None)
@given(
    variance=st.floats(min_value=0.0, max_value=1e6, allow_nan=False),
    more=st.floats(min_value=0.0, max_value=1e6, allow_nan=False),
    scale=st.floats(min_value=0.0, max_value=100.0, allow_nan=False),
)
def test_bonus_shapes(variance: float, more: float, scale: float) -> None:
    """optimistic: scale * log(1 + v), non-negative and monotone; other kinds: scale * sqrt(v)."""
    opt = ExplorationConfig(optimism=scale)
    b1, b2 = bonus(opt, variance), bonus(opt, variance + more)
    assert 0.0 <= b1 <= b2
    assert b1 == pytest.approx(scale * math.log1p(variance))
    assert b1 <= scale * variance + 1e-12  # never above the variance-proportional bonus
    lin = ExplorationConfig(kind="squarecb", optimism=scale)
    assert bonus(lin, variance) == pytest.approx(scale * math.sqrt(variance))

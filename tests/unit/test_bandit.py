"""ContextualBandit: per-action learning, objectives, determinism, versions and snapshots."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import linear_model

from engine.bandit import ContextualBandit, ExplorationConfig, SnapshotError
from engine.models import FactoredRidge
from engine.policies import POLICY_KINDS
from engine.snapshot import unpack

ACTIONS = ["none", "email", "sms", "push"]


def _train(bandit: ContextualBandit, steps: int, seed: int) -> None:
    """Feed a toy problem: email pays when x > 0.5, sms when x <= 0.5, push never."""
    rng = random.Random(seed)
    for _ in range(steps):
        x = {"x": rng.random(), "y": rng.random()}
        choice = bandit.choose(x, ACTIONS, rng)
        best = "email" if x["x"] > 0.5 else "sms"
        bandit.learn(choice.action_id, x, 1.0 if choice.action_id == best else 0.0)


@pytest.mark.parametrize("kind", POLICY_KINDS)
def test_every_policy_learns_the_toy_problem(kind: str) -> None:
    """After training, the greedy action is the right one on both sides of the boundary."""
    config = ExplorationConfig(kind=kind, epsilon=0.2)  # type: ignore[arg-type]
    bandit = ContextualBandit(ACTIONS, config, seed=1)
    _train(bandit, 1500, seed=2)
    assert bandit.greedy({"x": 0.9, "y": 0.5}, ACTIONS) == "email"
    assert bandit.greedy({"x": 0.1, "y": 0.5}, ACTIONS) == "sms"
    assert bandit.version == 1500


def test_learn_updates_only_that_action() -> None:
    """Other actions' predictions do not move."""
    bandit = ContextualBandit(ACTIONS)
    before = bandit.scores({"x": 1.0})
    bandit.learn("email", {"x": 1.0}, 1.0)
    after = bandit.scores({"x": 1.0})
    assert after["email"] > before["email"]
    assert {a: after[a] for a in ACTIONS if a != "email"} == {
        a: before[a] for a in ACTIONS if a != "email"
    }


def test_costs_and_uplift_objective() -> None:
    """reward - cost; uplift = pred - pred(baseline) - cost with the baseline at 0."""
    config = ExplorationConfig(optimism=0.0)  # scores without the exploration bonus
    bandit = ContextualBandit(ACTIONS, config, baseline_action="none")
    for _ in range(200):
        bandit.learn("none", {}, 0.3)
        bandit.learn("email", {}, 0.35)
        bandit.learn("sms", {}, 0.5)
    costs = {"email": 0.1, "sms": 0.05}
    preds = bandit.scores({}, ACTIONS)
    reward = bandit.choose({}, ACTIONS, random.Random(0), costs, "reward").scores
    uplift = bandit.choose({}, ACTIONS, random.Random(0), costs, "uplift").scores
    assert reward["sms"] == pytest.approx(preds["sms"] - 0.05)
    assert uplift["none"] == 0.0
    assert uplift["sms"] == pytest.approx(preds["sms"] - preds["none"] - 0.05)
    assert uplift["email"] < 0.0  # uplift 0.05 does not pay its cost 0.1: leave alone
    assert bandit.greedy({}, ["none", "email"], costs, "uplift") == "none"
    assert bandit.greedy({}, ["none", "sms"], costs, "uplift") == "sms"
    # the baseline model is used even when the baseline is not eligible
    assert bandit.choose({}, ["email"], random.Random(0), costs, "uplift").scores == {
        "email": pytest.approx(preds["email"] - preds["none"] - 0.1)
    }


def test_only_eligible_actions_get_mass() -> None:
    """Ineligible actions are absent from the distribution and never chosen."""
    bandit = ContextualBandit(ACTIONS, ExplorationConfig(kind="epsilon_greedy", epsilon=1.0))
    rng = random.Random(4)
    for _ in range(100):
        choice = bandit.choose({"x": 1.0}, ["sms", "push"], rng)
        assert set(choice.probabilities) == {"sms", "push"}
        assert choice.action_id in ("sms", "push")


def test_errors() -> None:
    """Unknown actions, empty eligibility, uplift without baseline, bad rewards, duplicates."""
    bandit = ContextualBandit(ACTIONS)
    with pytest.raises(ValueError, match="unknown action"):
        bandit.learn("fax", {}, 1.0)
    with pytest.raises(ValueError, match="unknown action"):
        bandit.choose({}, ["fax"], random.Random(0))
    with pytest.raises(ValueError, match="no eligible"):
        bandit.choose({}, [], random.Random(0))
    with pytest.raises(ValueError, match="baseline"):
        bandit.choose({}, ACTIONS, random.Random(0), objective="uplift")
    with pytest.raises(ValueError, match="finite"):
        bandit.learn("sms", {}, float("nan"))
    with pytest.raises(ValueError, match="duplicate"):
        ContextualBandit(["a", "a"])
    with pytest.raises(ValueError, match="baseline"):
        ContextualBandit(["a"], baseline_action="b")


@dataclass(frozen=True)
class _Spec:
    kind: str
    params: dict[str, float | int]


def test_accepts_a_campaign_exploration_spec() -> None:
    """Anything with kind and params (the campaign's ExplorationSpec) configures the policy."""
    bandit = ContextualBandit(ACTIONS, _Spec("softmax", {"temperature": 0.5}))
    assert bandit.exploration == ExplorationConfig(kind="softmax", temperature=0.5)


def test_thompson_replicas_differ_and_are_seeded() -> None:
    """Poisson(1) bootstrap weights make replicas differ; the same seed gives the same ones."""
    config = ExplorationConfig(kind="thompson", n_bootstrap=5)
    a, b = ContextualBandit(ACTIONS, config, seed=3), ContextualBandit(ACTIONS, config, seed=3)
    for bandit in (a, b):
        _train(bandit, 200, seed=5)
    x = {"x": 0.7, "y": 0.2}
    assert a.snapshot() == b.snapshot()
    replicas = a._replicas["email"]  # white-box check of the bootstrap
    assert len({r.predict(x) for r in replicas}) > 1


@pytest.mark.parametrize("kind", POLICY_KINDS)
@settings(max_examples=25, deadline=None)
@given(
    train_seed=st.integers(0, 10_000),
    steps=st.integers(0, 60),
    choose_seed=st.integers(0, 2**32),
    x=st.floats(-3.0, 3.0),
    floor=st.sampled_from([0.0, 0.02]),
)
def test_snapshot_round_trip_is_exact(
    kind: str, train_seed: int, steps: int, choose_seed: int, x: float, floor: float
) -> None:
    """After restore: same scores, same choice for the same seed, and same future learning."""
    config = ExplorationConfig(kind=kind, n_bootstrap=3, min_propensity=floor)  # type: ignore[arg-type]
    bandit = ContextualBandit(ACTIONS, config, seed=train_seed, baseline_action="none")
    _train(bandit, steps, train_seed)
    key = b"secret" if train_seed % 2 else None
    restored = ContextualBandit.restore(bandit.snapshot(key=key), key=key)
    ctx = {"x": x, "y": -x, "z": 1.0}
    assert restored.version == bandit.version
    assert restored.scores(ctx) == bandit.scores(ctx)
    for objective in ("reward", "uplift"):
        c1 = bandit.choose(ctx, ACTIONS, random.Random(choose_seed), {"sms": 0.1}, objective)
        c2 = restored.choose(ctx, ACTIONS, random.Random(choose_seed), {"sms": 0.1}, objective)
        assert c1 == c2
    _train(bandit, 20, train_seed + 1)
    _train(restored, 20, train_seed + 1)
    assert restored.snapshot() == bandit.snapshot()


def _factored() -> FactoredRidge:
    """The toy actions as a factored model: no-action, and a message on one of three channels."""
    return FactoredRidge({a: None if a == "none" else {"channel": a} for a in ACTIONS})


@pytest.mark.parametrize("kind", POLICY_KINDS)
def test_factored_bandit_learns_and_its_snapshot_is_exact_without_pickle(kind: str) -> None:
    """One shared model behind every arm; the snapshot holds its arrays, signed or not."""
    config = ExplorationConfig(kind=kind, n_bootstrap=3)  # type: ignore[arg-type]
    bandit = ContextualBandit(ACTIONS, config, _factored(), seed=5, baseline_action="none")
    untrained = ContextualBandit.restore(bandit.snapshot())  # was refused: "dimension 1"
    assert untrained.snapshot() == bandit.snapshot()
    rng = random.Random(5)
    for _ in range(400):  # uniformly logged toy problem
        x, action = {"x": rng.random(), "y": rng.random()}, rng.choice(ACTIONS)
        best = "email" if x["x"] > 0.5 else "sms"
        bandit.learn(action, x, 1.0 if action == best else 0.0)
    assert bandit.greedy({"x": 0.9, "y": 0.5}, ACTIONS) == "email"
    assert bandit.greedy({"x": 0.1, "y": 0.5}, ACTIONS) == "sms"
    _train(bandit, 50, 6)
    for key in (None, b"secret"):
        data = bandit.snapshot(key=key)
        assert unpack(data, key)[1] is False  # no pickle inside
        restored = ContextualBandit.restore(data, key=key)
        ctx = {"x": 0.3, "y": 0.2, "z": 1.0}
        assert restored.version == bandit.version
        assert restored.scores(ctx) == bandit.scores(ctx)
        c1 = bandit.choose(ctx, ACTIONS, random.Random(1), {"sms": 0.1}, "uplift")
        c2 = restored.choose(ctx, ACTIONS, random.Random(1), {"sms": 0.1}, "uplift")
        assert c1 == c2
    twin = ContextualBandit.restore(bandit.snapshot())
    _train(bandit, 30, 9)
    _train(twin, 30, 9)
    assert twin.snapshot() == bandit.snapshot()


def test_river_model_snapshot_needs_a_key() -> None:
    """River models are pickled: only in signed snapshots, and only restored with the key."""
    bandit = ContextualBandit(["a", "b"], model=linear_model.LogisticRegression())
    for _ in range(20):
        bandit.learn("a", {"x": 1.0}, 1.0)
    with pytest.raises(SnapshotError, match="signed"):
        bandit.snapshot()
    data = bandit.snapshot(key=b"k")
    with pytest.raises(SnapshotError, match="pickled"):
        ContextualBandit.restore(data)
    with pytest.raises(SnapshotError, match="bad signature"):
        ContextualBandit.restore(data, key=b"other")
    restored = ContextualBandit.restore(data, key=b"k")
    assert restored.scores({"x": 1.0}) == bandit.scores({"x": 1.0})
    assert restored.version == 20
    assert restored.scores({"x": 1.0})["a"] > 0.5


def test_restore_rejects_garbage_with_a_valid_envelope() -> None:
    """A checksummed body that is not a bandit raises SnapshotError, not a crash."""
    from engine.snapshot import pack

    with pytest.raises(SnapshotError, match="unreadable"):
        ContextualBandit.restore(pack(b"\x93\x01\x02\x03"))
    with pytest.raises(SnapshotError, match="magic"):
        ContextualBandit.restore(b"not a snapshot at all, long enough to have a header..")


def test_restore_rejects_inconsistent_body() -> None:
    """A well-formed body that misses an action's model is refused."""
    import msgspec

    from engine.snapshot import pack, unpack

    data = ContextualBandit(["a", "b"]).snapshot()
    body = msgspec.msgpack.decode(unpack(data)[0])
    del body["models"]["b"]
    with pytest.raises(SnapshotError, match="inconsistent"):
        ContextualBandit.restore(pack(msgspec.msgpack.encode(body)))


def test_optimism_favours_the_less_explored_action() -> None:
    """With equal predictions, the optimism bonus ranks the rarely tried action higher."""
    config = ExplorationConfig(kind="epsilon_greedy", epsilon=0.0, optimism=1.0)
    bandit = ContextualBandit(["a", "b"], config)
    for _ in range(50):
        bandit.learn("a", {"x": 1.0}, 0.0)
    bandit.learn("b", {"x": 1.0}, 0.0)
    choice = bandit.choose({"x": 1.0}, ["a", "b"], random.Random(0))
    assert choice.scores["b"] > choice.scores["a"]
    assert choice.action_id == "b"
    plain = ContextualBandit.restore(bandit.snapshot())
    assert plain.exploration.optimism == 1.0


def test_default_directs_exploration_and_greedy_ignores_the_bonus() -> None:
    """The default bonus ranks the rarely tried action first; greedy() uses predictions only."""
    bandit = ContextualBandit(["a", "b"])
    assert bandit.exploration.kind == "optimistic"
    for _ in range(50):
        bandit.learn("a", {"x": 1.0}, 0.2)
    bandit.learn("b", {"x": 1.0}, 0.0)
    choice = bandit.choose({"x": 1.0}, ["a", "b"], random.Random(0))
    assert choice.scores["b"] > choice.scores["a"]
    assert choice.probabilities["b"] > choice.probabilities["a"] > 0.0
    assert bandit.greedy({"x": 1.0}, ["a", "b"]) == "a"


def test_snapshot_of_a_previous_default_restores_unchanged() -> None:
    """A squarecb snapshot (the old default, gamma 30) restores as squarecb with gamma 30."""
    import msgspec

    from engine.snapshot import pack, unpack

    old = ContextualBandit(ACTIONS, ExplorationConfig(kind="squarecb"), seed=4)
    _train(old, 30, seed=4)
    body = msgspec.msgpack.decode(unpack(old.snapshot())[0])
    assert body["exploration_kind"] == "squarecb"
    assert (body["exploration"]["gamma"], body["exploration"]["optimism"]) == (30.0, 0.0)
    restored = ContextualBandit.restore(pack(msgspec.msgpack.encode(body)))
    assert restored.exploration == ExplorationConfig(kind="squarecb", gamma=30.0, optimism=0.0)
    body["exploration_kind"] = "no_such_kind"
    with pytest.raises(SnapshotError, match="kind"):
        ContextualBandit.restore(pack(msgspec.msgpack.encode(body)))


def test_factored_bandit_with_scaled_blocks_snapshots_its_scale() -> None:
    """The scale features are part of the snapshot: a restored bandit predicts the same."""
    scale = {a: f"open_{a}" for a in ACTIONS if a != "none"}
    model = FactoredRidge(
        {a: None if a == "none" else {"channel": a} for a in ACTIONS}, scale=scale
    )
    bandit = ContextualBandit(ACTIONS, None, model, seed=2, baseline_action="none")
    rng = random.Random(2)
    for _ in range(200):
        action = rng.choice(ACTIONS)
        x = {f"open_{a}": rng.random() for a in ACTIONS if a != "none"}
        bandit.learn(action, x, x.get(f"open_{action}", 0.0))
    restored = ContextualBandit.restore(bandit.snapshot())
    ctx = {f"open_{a}": 0.5 for a in ACTIONS if a != "none"} | {"open_sms": 0.9}
    assert restored.scores(ctx) == bandit.scores(ctx)
    assert restored.greedy(ctx, ACTIONS) == bandit.greedy(ctx, ACTIONS) == "sms"
    assert restored.snapshot() == bandit.snapshot()


def test_stacked_scores_follow_each_model_through_learning_and_feature_growth() -> None:
    """The one-product scores equal each action's own model, before and after it learns."""
    bandit = ContextualBandit(ACTIONS, ExplorationConfig(kind="epsilon_greedy"), seed=3)
    rng = random.Random(5)
    for step in range(60):
        # Features appear over time, so the models' weight vectors have different lengths.
        ctx = {f"f{i}": rng.random() for i in range(1 + step // 10)}
        expected = {a: bandit._models[a].predict(ctx) for a in ACTIONS}
        assert bandit.scores(ctx) == pytest.approx(expected, abs=1e-12)
        bandit.learn(ACTIONS[step % len(ACTIONS)], ctx, rng.random())
    assert bandit.scores({"f0": 1.0}) != ContextualBandit(ACTIONS).scores({"f0": 1.0})

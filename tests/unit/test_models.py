"""Per-action reward models: the ridge default and the River adapter."""

from __future__ import annotations

import random

import numpy as np
import pytest
from river import linear_model

from engine.models import (
    ActionView,
    FactoredRidge,
    FeatureIndex,
    RewardModel,
    RidgeModel,
    RiverModel,
    make_prototype,
)


def test_ridge_matches_closed_form() -> None:
    """Online updates give exactly the batch ridge solution (A = l2 I + X'X, w = A^-1 X'y)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3))
    y = x @ np.array([1.0, -2.0, 0.5]) + 0.3
    model = RidgeModel(l2=2.0)
    for row, target in zip(x, y, strict=True):
        model.learn({"a": row[0], "b": row[1], "c": row[2]}, float(target))
    design = np.hstack([np.ones((50, 1)), x])
    w = np.linalg.solve(2.0 * np.eye(4) + design.T @ design, design.T @ y)
    assert np.allclose(model.w, w, atol=1e-9)
    assert model.predict({"a": 1.0, "b": 0.0, "c": 0.0}) == pytest.approx(w[0] + w[1])


def test_weight_equals_repetition() -> None:
    """Learning once with weight 3 equals learning three times (bootstrap weights)."""
    once, thrice = RidgeModel(), RidgeModel()
    once.learn({"x": 2.0}, 1.0, weight=3.0)
    for _ in range(3):
        thrice.learn({"x": 2.0}, 1.0)
    assert np.allclose(once.w, thrice.w)
    zero = RidgeModel()
    zero.learn({"x": 1.0}, 1.0, weight=0.0)
    assert zero.predict({"x": 1.0}) == 0.0


def test_new_features_grow_the_model_and_unknown_ones_are_ignored() -> None:
    """A feature first seen later gets the prior; unseen features do not change predictions."""
    model = RidgeModel()
    model.learn({"a": 1.0}, 1.0)
    before = model.predict({"a": 1.0})
    assert model.predict({"a": 1.0, "never_seen": 5.0}) == before
    model.learn({"a": 1.0, "b": 1.0}, 0.0)
    assert len(model.w) == 3
    assert model.predict({"a": 1.0}) != before


def test_clones_share_the_index_but_not_the_weights() -> None:
    """A clone is untrained and encodes with the same feature positions."""
    proto = RidgeModel(l2=0.5, forgetting=0.99)
    a, b = proto.clone(), proto.clone()
    a.learn({"x": 1.0, "y": 2.0}, 1.0)
    assert b.predict({"x": 1.0, "y": 2.0}) == 0.0
    assert a.index is b.index is proto.index
    assert (b.l2, b.forgetting) == (0.5, 0.99)
    b.learn({"y": 1.0}, 1.0)
    assert b.index.names == ["x", "y"]


def test_forgetting_tracks_a_change() -> None:
    """With forgetting < 1 the model follows a reward that flips; without, it averages."""
    drifting, static = RidgeModel(forgetting=0.95), RidgeModel()
    for i in range(400):
        reward = 1.0 if i < 200 else 0.0
        drifting.learn({}, reward)
        static.learn({}, reward)
    assert drifting.predict({}) < 0.05
    assert static.predict({}) == pytest.approx(0.5, abs=0.01)


def test_state_round_trip_is_exact() -> None:
    """state()/load_state() restore bit-identical arrays."""
    rng = random.Random(1)
    model = RidgeModel()
    for _ in range(30):
        model.learn({"a": rng.random(), "b": rng.random()}, rng.random())
    copy = model.clone()
    copy.load_state(model.state())
    assert copy.predict({"a": 0.3, "b": 0.7}) == model.predict({"a": 0.3, "b": 0.7})
    bad = dict(model.state())
    bad["dim"] = 2
    with pytest.raises(ValueError, match="match"):
        copy.load_state(bad)


def test_invalid_hyper_parameters() -> None:
    """l2 must be positive and forgetting in (0, 1]."""
    with pytest.raises(ValueError, match="l2"):
        RidgeModel(l2=0.0)
    with pytest.raises(ValueError, match="forgetting"):
        RidgeModel(forgetting=1.5)


def test_feature_index_encoding() -> None:
    """Position 0 is the intercept; grow appends new names in order."""
    index = FeatureIndex(["a"])
    vec = index.encode({"a": 2.0, "b": 3.0})
    assert vec.tolist() == [1.0, 2.0]
    vec = index.encode({"b": 3.0, "a": 2.0}, grow=True)
    assert vec.tolist() == [1.0, 2.0, 3.0]
    assert index.names == ["a", "b"]


def test_river_regressor_and_classifier() -> None:
    """A River regressor predicts a number; a classifier's P(True) is the expected reward."""
    reg = RiverModel(linear_model.LinearRegression())
    cls = RiverModel(linear_model.LogisticRegression())
    for _ in range(50):
        reg.learn({"x": 1.0}, 2.0)
        cls.learn({"x": 1.0}, 1.0)
    assert reg.predict({"x": 1.0}) > 1.0
    assert 0.5 < cls.predict({"x": 1.0}) <= 1.0
    assert cls.clone().predict({"x": 1.0}) == 0.5
    with pytest.raises(TypeError):
        RiverModel(object())


@pytest.mark.parametrize("name", ["default", "ridge", "river_linear", "river_logistic"])
def test_make_prototype_by_name(name: str) -> None:
    """Every named model is a RewardModel that learns."""
    model = make_prototype(name)
    assert isinstance(model, RewardModel)
    model.learn({"x": 1.0}, 1.0)
    assert model.predict({"x": 1.0}) > 0.0
    with pytest.raises(ValueError, match="unknown model"):
        make_prototype("gbm")


def test_variance_matches_the_inverse_and_keeps_the_prior_of_unlearned_features() -> None:
    """x' A^-1 x equals the closed form; an untrained clone uses the prior for every feature."""
    rng = np.random.default_rng(1)
    model = RidgeModel(l2=2.0)
    rows = rng.normal(size=(20, 2))
    for row in rows:
        model.learn({"a": row[0], "b": row[1]}, 1.0)
    design = np.hstack([np.ones((20, 1)), rows])
    a_inv = np.linalg.inv(2.0 * np.eye(3) + design.T @ design)
    vec = model.index.encode({"a": 0.5, "b": -1.0})
    assert model.variance_vector(vec) == pytest.approx(float(vec @ a_inv @ vec))
    assert model.width_vector(vec) == pytest.approx(float(vec @ a_inv @ vec) ** 0.5)
    fresh = model.clone()  # dimension 1: it has not grown into "a" and "b" yet
    assert fresh.variance_vector(vec) == pytest.approx((1.0 + 0.25 + 1.0) / 2.0)


_ARMS = {
    "none": None,
    "email:a": {"channel": "email", "offer": "a", "message": "m"},
    "email:b": {"channel": "email", "offer": "b", "message": "m"},
    "sms:a": {"channel": "sms", "offer": "a", "message": "m"},
    "sms:b": {"channel": "sms", "offer": "b", "message": "m"},
}


def test_factored_blocks_follow_the_dimensions() -> None:
    """No-action has the base block only; a message adds its own and one per varying value."""
    model = FactoredRidge(_ARMS)
    assert model.blocks == ("*", "message", "channel=email", "offer=a", "offer=b", "channel=sms")
    views = {a: model.view(a) for a in _ARMS}
    assert isinstance(views["sms:b"], ActionView) and isinstance(views["none"], RewardModel)
    with pytest.raises(ValueError, match="unknown action"):
        model.view("push:a")
    with pytest.raises(ValueError, match="needs the actions"):
        make_prototype("factored")


def test_factored_model_is_ridge_on_the_crossed_context() -> None:
    """Its weights are exactly batch ridge on (context x the action's blocks)."""
    rng = random.Random(4)
    model = FactoredRidge(_ARMS, l2=2.0)
    arms = list(_ARMS)
    rows, targets = [], []
    for _ in range(200):
        arm = rng.choice(arms)
        x = {"u": rng.random()}
        reward = 0.2 + 0.5 * x["u"] * (arm.startswith("sms")) + (0.3 if arm.endswith(":b") else 0)
        model.view(arm).learn(x, reward)
        blocks = model._block_of[arm]
        crossed = np.zeros((2, len(model.blocks)))
        crossed[:, list(blocks)] = np.array([1.0, x["u"]])[:, None]
        rows.append(crossed.reshape(-1))
        targets.append(reward)
    design, y = np.array(rows), np.array(targets)
    w = np.linalg.solve(2.0 * np.eye(design.shape[1]) + design.T @ design, design.T @ y)
    assert np.allclose(model.model.w, w, atol=1e-8)
    preds = model.predict_actions({"u": 1.0}, arms)
    assert preds["sms:b"] > preds["email:b"] > preds["email:a"]
    assert preds["sms:b"] == pytest.approx(model.view("sms:b").predict({"u": 1.0}))
    assert preds["none"] == pytest.approx(model.predict({"u": 1.0}))
    twin = model.view("sms:a").clone()
    assert twin.predict({"u": 1.0}) == 0.0 and model.predict_actions({"u": 1.0}, arms) == preds


def test_scaled_twin_blocks_make_a_multiplicative_channel_effect_one_weight() -> None:
    """With scale, a message's blocks get twins fed context x its feature; exact ridge still."""
    scale = {a: f"p_{dims['channel']}" for a, dims in _ARMS.items() if dims}
    model = FactoredRidge(_ARMS, l2=1.0, scale=scale)
    assert model.blocks[:6] == FactoredRidge(_ARMS).blocks
    assert model.blocks[6:] == (
        "~message",
        "~channel=email",
        "~offer=a",
        "~offer=b",
        "~channel=sms",
    )
    assert model.layout["none"] == (0,) and model.scale == scale
    rng = random.Random(3)
    arms = list(_ARMS)
    rows, targets = [], []
    for _ in range(300):
        arm = rng.choice(arms)
        p_email = rng.random()
        x = {"p_email": p_email, "p_sms": 1.0 - p_email}
        own = scale.get(arm)
        # Reward: 0.1 baseline, +0.6 times the probability the message's channel is read.
        reward = 0.1 + (0.6 * x[own] if own else 0.0)
        model.view(arm).learn(x, reward)
        crossed = np.zeros((3, len(model.blocks)))
        vec = np.array([1.0, p_email, 1.0 - p_email])
        for b in model.layout[arm]:
            crossed[:, b] = vec * (x[own] if model.blocks[b].startswith("~") else 1.0)
        rows.append(crossed.reshape(-1))
        targets.append(reward)
    design, y = np.array(rows), np.array(targets)
    w = np.linalg.solve(np.eye(design.shape[1]) + design.T @ design, design.T @ y)
    assert np.allclose(model.model.w, w, atol=1e-8)
    preds = model.predict_actions({"p_email": 0.9, "p_sms": 0.1}, arms)
    assert preds["email:a"] > preds["sms:a"] and preds["email:b"] > preds["sms:b"]
    assert preds["email:a"] == pytest.approx(0.1 + 0.6 * 0.9, abs=0.05)
    twin = model.clone()
    assert twin.scale == scale and twin.layout == model.layout
    with pytest.raises(ValueError, match="unknown actions"):
        FactoredRidge(_ARMS, scale={"push:a": "p_push"})

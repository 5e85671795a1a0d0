"""Per-action reward models: the fast default (online ridge regression) and a River adapter.

A reward model predicts the expected reward of one action in a context (a `dict[str, float]`)
and learns from the rewards that action received. The bandit keeps one model per action, each a
clone of a prototype. The default, `RidgeModel`, is recursive least squares (ridge regression
updated exactly with the Sherman-Morrison formula, optionally with exponential forgetting for
drifting rewards): it needs no learning rate or feature scaling to tune, and its whole state is a
few numpy arrays that serialise without pickle. Any River regressor or classifier can be
plugged in through `RiverModel` (a classifier's `predict_proba_one(x)[True]` is the expected
reward); such models can only be snapshotted with pickle, hence only in signed snapshots.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

__all__ = [
    "MODEL_NAMES",
    "ActionView",
    "FactoredRidge",
    "FeatureIndex",
    "RewardModel",
    "RidgeModel",
    "RiverModel",
    "make_prototype",
]

FloatArray = npt.NDArray[np.float64]


@runtime_checkable
class RewardModel(Protocol):
    """What the bandit needs from a per-action model."""

    def predict(self, features: Mapping[str, float]) -> float:
        """Return the expected reward in this context."""
        ...

    def learn(self, features: Mapping[str, float], reward: float, weight: float = 1.0) -> None:
        """Update the model with one observed reward (weight: importance or bootstrap weight)."""
        ...

    def clone(self) -> RewardModel:
        """Return a fresh, untrained model with the same hyper-parameters."""
        ...


class FeatureIndex:
    """Maps feature names to vector positions, shared by all clones so a context is encoded once.

    Position 0 is the intercept. Names are only ever appended (on learn), so positions are stable
    and a model trained on fewer features is grown with its prior for the new ones.
    """

    __slots__ = ("_cache_key", "_cache_vec", "names", "positions")

    def __init__(self, names: list[str] | None = None) -> None:
        """Create an index, optionally with names in their saved order."""
        self.names: list[str] = []
        self.positions: dict[str, int] = {}
        self._cache_key: tuple[int, int] | None = None
        self._cache_vec: FloatArray | None = None
        for name in names or []:
            self.add(name)

    def __len__(self) -> int:
        """Return the vector length: the intercept plus one per known feature."""
        return len(self.names) + 1

    def add(self, name: str) -> int:
        """Return the position of a feature, appending it if new."""
        pos = self.positions.get(name)
        if pos is None:
            self.names.append(name)
            pos = len(self.names)
            self.positions[name] = pos
            self._cache_key = None
        return pos

    def encode(self, features: Mapping[str, float], grow: bool = False) -> FloatArray:
        """Return the context as a vector; unknown names are appended if grow, else ignored."""
        vec = np.zeros(len(self) + (len(features) if grow else 0), dtype=np.float64)
        vec[0] = 1.0
        positions = self.positions
        for name, value in features.items():
            pos = positions.get(name)
            if pos is None:
                if not grow:
                    continue
                pos = self.add(name)
            vec[pos] = value
        return vec[: len(self)]


class RidgeModel:
    """Online ridge regression (recursive least squares) on a shared feature index.

    `l2` is the prior precision of every weight (the intercept included); `forgetting` < 1
    discounts old observations geometrically so the model tracks drifting rewards.
    """

    __slots__ = ("a_inv", "b", "forgetting", "index", "l2", "n", "w")

    def __init__(
        self, l2: float = 1.0, forgetting: float = 1.0, index: FeatureIndex | None = None
    ) -> None:
        """Create an untrained model (l2 > 0, 0 < forgetting <= 1)."""
        if not l2 > 0.0:
            raise ValueError(f"l2 must be > 0, got {l2}")
        if not 0.0 < forgetting <= 1.0:
            raise ValueError(f"forgetting must be in (0, 1], got {forgetting}")
        self.l2 = float(l2)
        self.forgetting = float(forgetting)
        self.index = index if index is not None else FeatureIndex()
        dim = len(self.index)
        self.a_inv: FloatArray = np.eye(dim, dtype=np.float64) / self.l2
        self.b: FloatArray = np.zeros(dim, dtype=np.float64)
        self.w: FloatArray = np.zeros(dim, dtype=np.float64)
        self.n = 0.0

    def clone(self) -> RidgeModel:
        """Return an untrained model with the same hyper-parameters and the same feature index."""
        return RidgeModel(self.l2, self.forgetting, self.index)

    def _grow(self, dim: int) -> None:
        """Extend the state with the prior for features the index learned since."""
        old = self.w.shape[0]
        a_inv = np.eye(dim, dtype=np.float64) / self.l2
        a_inv[:old, :old] = self.a_inv
        self.a_inv = a_inv
        self.b = np.concatenate([self.b, np.zeros(dim - old)])
        self.w = np.concatenate([self.w, np.zeros(dim - old)])

    def predict_vector(self, vec: FloatArray) -> float:
        """Return the prediction for an already encoded context (the bandit's fast path)."""
        n = self.w.shape[0]
        return float(self.w @ vec[:n]) if vec.shape[0] > n else float(self.w @ vec)

    def predict(self, features: Mapping[str, float]) -> float:
        """Return the expected reward in this context."""
        return self.predict_vector(self.index.encode(features))

    def variance_vector(self, vec: FloatArray) -> float:
        """Return x' A^-1 x for an encoded context (features not yet learned keep their prior)."""
        n = self.w.shape[0]
        if vec.shape[0] > n:
            v = vec[:n]
            rest = vec[n:]
            extra = float(rest @ rest) / self.l2
        else:
            v = vec
            extra = 0.0
        return max(float(v @ (self.a_inv @ v)) + extra, 0.0)

    def predict_and_variance(self, vec: FloatArray) -> tuple[float, float]:
        """Return the prediction and x' A^-1 x in one pass (the optimistic policy's fast path)."""
        if vec.shape[0] != self.w.shape[0]:
            return self.predict_vector(vec), self.variance_vector(vec)
        return float(self.w.dot(vec)), float(vec.dot(self.a_inv.dot(vec)))

    def width_vector(self, vec: FloatArray) -> float:
        """Return the confidence width sqrt(x' A^-1 x) of an encoded context (for optimism)."""
        return math.sqrt(self.variance_vector(vec))

    def learn_vector(self, vec: FloatArray, reward: float, weight: float = 1.0) -> None:
        """Update with an encoded context (Sherman-Morrison rank-one update of the inverse)."""
        if weight <= 0.0:
            return
        dim = vec.shape[0]
        if dim > self.w.shape[0]:
            self._grow(dim)
        elif dim < self.w.shape[0]:
            vec = np.concatenate([vec, np.zeros(self.w.shape[0] - dim)])
        if self.forgetting < 1.0:
            self.a_inv /= self.forgetting
            self.b *= self.forgetting
        ax = self.a_inv @ vec
        denom = 1.0 + weight * float(vec @ ax)
        self.a_inv -= np.outer(ax * (weight / denom), ax)
        self.b += (weight * reward) * vec
        self.w = self.a_inv @ self.b
        self.n += weight

    def learn(self, features: Mapping[str, float], reward: float, weight: float = 1.0) -> None:
        """Update the model with one observed reward."""
        self.learn_vector(self.index.encode(features, grow=True), reward, weight)

    def state(self) -> dict[str, Any]:
        """Return the exact state as plain values and raw float64 bytes (no pickle)."""
        return {
            "dim": int(self.w.shape[0]),
            "n": self.n,
            "a_inv": self.a_inv.astype("<f8").tobytes(),
            "b": self.b.astype("<f8").tobytes(),
            "w": self.w.astype("<f8").tobytes(),
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Load a state produced by `state()` (validated: shapes must match)."""
        dim = int(state["dim"])
        if dim < 1 or dim > len(self.index):
            raise ValueError(f"model dimension {dim} does not fit the feature index")
        a_inv = np.frombuffer(state["a_inv"], dtype="<f8")
        b = np.frombuffer(state["b"], dtype="<f8")
        w = np.frombuffer(state["w"], dtype="<f8")
        if a_inv.shape[0] != dim * dim or b.shape[0] != dim or w.shape[0] != dim:
            raise ValueError("model arrays do not match the stated dimension")
        self.a_inv = a_inv.astype(np.float64).reshape(dim, dim)
        self.b = b.astype(np.float64)
        self.w = w.astype(np.float64)
        self.n = float(state["n"])


class RiverModel:
    """Adapter for any River regressor or classifier (binary: P(True) is the expected reward)."""

    __slots__ = ("estimator", "is_classifier")

    def __init__(self, estimator: Any) -> None:
        """Wrap a River estimator (a classifier if it, or a pipeline's last step, is one)."""
        if not hasattr(estimator, "learn_one") or not hasattr(estimator, "clone"):
            raise TypeError(f"{type(estimator).__name__} is not a River estimator")
        from river import base

        last = estimator
        steps = getattr(estimator, "steps", None)
        if isinstance(steps, Mapping) and steps:
            last = list(steps.values())[-1]
        self.estimator = estimator
        self.is_classifier = isinstance(last, base.Classifier)

    def clone(self) -> RiverModel:
        """Return an untrained copy (River's clone keeps the hyper-parameters)."""
        return RiverModel(self.estimator.clone())

    def predict(self, features: Mapping[str, float]) -> float:
        """Return the expected reward: P(True) for a classifier, the prediction for a regressor."""
        x = dict(features)
        if self.is_classifier:
            return float(self.estimator.predict_proba_one(x).get(True, 0.0))
        y = self.estimator.predict_one(x)
        return float(y) if y is not None and math.isfinite(float(y)) else 0.0

    def learn(self, features: Mapping[str, float], reward: float, weight: float = 1.0) -> None:
        """Update with one reward; weights are applied by repetition (River has no sample weight)."""
        x = dict(features)
        target: bool | float = reward > 0.5 if self.is_classifier else float(reward)
        repeats = round(weight)
        for _ in range(repeats):
            self.estimator.learn_one(x, target)


MODEL_NAMES: tuple[str, ...] = (
    "default",
    "ridge",
    "factored",
    "river_linear",
    "river_logistic",
)
"""Model names a campaign may give; any River estimator object is also accepted.

"factored" (FactoredRidge) needs the campaign's actions, so engine.decide.build_bandit makes it."""


def make_prototype(model: str | RewardModel | Any) -> RewardModel:
    """Return the prototype for a model name, a RewardModel, or a River estimator."""
    if isinstance(model, str):
        if model in ("default", "ridge"):
            return RidgeModel()
        if model == "factored":
            raise ValueError("the factored model needs the actions: build it with FactoredRidge")
        if model in ("river_linear", "river_logistic"):
            from river import linear_model, optim, preprocessing

            if model == "river_linear":
                return RiverModel(
                    preprocessing.StandardScaler()
                    | linear_model.LinearRegression(optimizer=optim.SGD(0.01))
                )
            return RiverModel(
                preprocessing.StandardScaler()
                | linear_model.LogisticRegression(optimizer=optim.SGD(0.05))
            )
        raise ValueError(f"unknown model {model!r}; expected one of {', '.join(MODEL_NAMES)}")
    if isinstance(model, RidgeModel | RiverModel | FactoredRidge):
        return model.clone()
    if isinstance(model, RewardModel) and not hasattr(model, "learn_one"):
        return copy.deepcopy(model)
    return RiverModel(model)


class FactoredRidge:
    """One ridge model shared by every action: the context crossed with the action's dimensions.

    An action's reward is modelled as the sum of blocks, each the context times its own weights:
    a block every action has (the reward without a message: what no-action predicts), one every
    message has (the effect of any message), and one per dimension value it has (`channel=sms`,
    `offer=discount_10`, ...). Every reward teaches the blocks its action has, so the baseline is
    learned from all decisions and what the arms share (a channel, an offer, whether to message at
    all) from every arm that has it, instead of 21 models learning alone. Block b of context
    feature i sits at position i * n_blocks + b, so new features grow the vector at its end.

    With `scale` (action id -> a context feature's name), each message block also has a scaled
    twin ("~message", "~offer=...") whose input is the context times that action's feature, e.g.
    the probability that the action's channel is the one the customer opens most: an effect that
    multiplies (an offer works on the channel they read) is then one weight, not one per channel.
    """

    __slots__ = ("_block_of", "_plain", "_scale", "_scaled", "blocks", "index", "model")

    def __init__(
        self,
        actions: Mapping[str, Mapping[str, str] | None],
        l2: float = 1.0,
        index: FeatureIndex | None = None,
        scale: Mapping[str, str] | None = None,
    ) -> None:
        """Build the blocks from action id -> dimension values (None for the no-action arm)."""
        values: dict[str, set[str]] = {}
        for dims in actions.values():
            for dim, value in (dims or {}).items():
                values.setdefault(dim, set()).add(value)
        varying = {d for d, vs in values.items() if len(vs) > 1}
        names: list[str] = ["*", "message"]
        block_of: dict[str, tuple[int, ...]] = {}
        scale = dict(scale or {})
        for action_id, dims in actions.items():
            if dims is None:
                block_of[action_id] = (0,)
                continue
            own = [0, 1]
            for name in (f"{dim}={dims[dim]}" for dim in sorted(varying & set(dims))):
                if name not in names:
                    names.append(name)
                own.append(names.index(name))
            block_of[action_id] = tuple(own)
        unknown = set(scale) - set(block_of)
        if unknown:
            raise ValueError(f"scale names unknown actions: {', '.join(sorted(unknown))}")
        if scale:
            plain = list(names)
            names += [f"~{name}" for name in plain[1:]]
            for action_id in scale:
                base = block_of[action_id]
                twins = tuple(names.index(f"~{plain[b]}") for b in base if b)
                block_of[action_id] = base + twins
        self.blocks: tuple[str, ...] = tuple(names)
        self.index = index if index is not None else FeatureIndex()
        self.model = RidgeModel(l2)
        self._set_layout(block_of, scale)

    def _set_layout(self, block_of: Mapping[str, Sequence[int]], scale: Mapping[str, str]) -> None:
        """Check and keep each action's blocks, split into plain and scaled ones."""
        n_blocks = len(self.blocks)
        self._block_of: dict[str, tuple[int, ...]] = {}
        self._plain: dict[str, list[int]] = {}
        self._scaled: dict[str, list[int]] = {}
        for action_id, own in block_of.items():
            if not own or any(not 0 <= b < n_blocks for b in own):
                raise ValueError(f"bad blocks for action {action_id!r}")
            self._block_of[action_id] = tuple(own)
            self._plain[action_id] = [b for b in own if not self.blocks[b].startswith("~")]
            self._scaled[action_id] = [b for b in own if self.blocks[b].startswith("~")]
            if self._scaled[action_id] and action_id not in scale:
                raise ValueError(f"action {action_id!r} has scaled blocks but no scale feature")
        unknown = set(scale) - set(block_of)
        if unknown:
            raise ValueError(f"scale names unknown actions: {', '.join(sorted(unknown))}")
        self._scale: dict[str, str] = dict(scale)

    @property
    def l2(self) -> float:
        """The ridge prior precision of every weight."""
        return self.model.l2

    @property
    def scale(self) -> dict[str, str]:
        """Each scaled action's scale feature (what a snapshot keeps besides the layout)."""
        return dict(self._scale)

    def clone(self) -> FactoredRidge:
        """Return an untrained model with the same actions, prior and feature index."""
        return FactoredRidge.from_layout(
            self.blocks, self._block_of, self.model.l2, self.index, self._scale
        )

    @classmethod
    def from_layout(
        cls,
        blocks: Sequence[str],
        block_of: Mapping[str, Sequence[int]],
        l2: float,
        index: FeatureIndex,
        scale: Mapping[str, str] | None = None,
    ) -> FactoredRidge:
        """Rebuild an untrained model from its blocks and each action's block positions."""
        model = cls({}, l2, index)
        model.blocks = tuple(blocks)
        model._set_layout(block_of, scale or {})
        return model

    @property
    def layout(self) -> dict[str, tuple[int, ...]]:
        """Each action's block positions (what a snapshot keeps besides the weights)."""
        return dict(self._block_of)

    def state(self) -> dict[str, Any]:
        """Return the shared ridge state as plain values and raw float64 bytes (no pickle)."""
        return self.model.state()

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Load a state produced by `state()` (its dimension must fit the blocks and index)."""
        dim = int(state["dim"])
        n_blocks = len(self.blocks)
        if dim == len(FeatureIndex()) and not float(state["n"]):
            self.model = RidgeModel(self.model.l2)  # untrained: as built (no block sized yet)
            return
        if dim < 1 or dim % n_blocks or dim // n_blocks > len(self.index):
            raise ValueError(f"model dimension {dim} does not fit the blocks and feature index")
        self.model = RidgeModel(self.model.l2, index=FeatureIndex([str(i) for i in range(dim - 1)]))
        self.model.load_state(state)

    def _scale_value(self, features: Mapping[str, float], action_id: str) -> float:
        """The action's scale feature in this context (1 for unscaled actions, 0 when absent)."""
        name = self._scale.get(action_id)
        return 1.0 if name is None else float(features.get(name, 0.0))

    def _crossed(self, x: FloatArray, action_id: str, scale: float = 1.0) -> FloatArray:
        """The context vector placed in the blocks of the action (zeros elsewhere)."""
        n_blocks = len(self.blocks)
        out = np.zeros((x.shape[0], n_blocks), dtype=np.float64)
        out[:, self._plain[action_id]] = x[:, None]
        scaled = self._scaled[action_id]
        if scaled:
            out[:, scaled] = (x * scale)[:, None]
        return out.reshape(-1)

    def block_scores(self, features: Mapping[str, float]) -> FloatArray:
        """Each block's contribution in this context (the context times its weights)."""
        x = self.index.encode(features)
        n_blocks = len(self.blocks)
        w = self.model.w
        known = min(x.shape[0], w.shape[0] // n_blocks)
        return x[:known] @ w[: known * n_blocks].reshape(known, n_blocks)

    def predict_actions(
        self, features: Mapping[str, float], action_ids: Sequence[str]
    ) -> dict[str, float]:
        """Return every listed action's expected reward, encoding the context once."""
        scores = self.block_scores(features)
        out: dict[str, float] = {}
        for a in action_ids:
            value = float(scores[self._plain[a]].sum())
            scaled = self._scaled[a]
            if scaled:
                value += self._scale_value(features, a) * float(scores[scaled].sum())
            out[a] = value
        return out

    def predict_action(self, features: Mapping[str, float], action_id: str) -> float:
        """Return one action's expected reward in this context."""
        return self.predict_actions(features, (action_id,))[action_id]

    def learn_action(
        self, features: Mapping[str, float], action_id: str, reward: float, weight: float = 1.0
    ) -> None:
        """Update the shared weights with one reward of this action."""
        x = self.index.encode(features, grow=True)
        crossed = self._crossed(x, action_id, self._scale_value(features, action_id))
        self.model.learn_vector(crossed, reward, weight)

    def view(self, action_id: str) -> ActionView:
        """The per-action face of this shared model, as the bandit keeps one per action."""
        if action_id not in self._block_of:
            raise ValueError(f"unknown action {action_id!r}")
        return ActionView(self, action_id)

    # A FactoredRidge is also a (shared) RewardModel for its no-action arm, so the protocol holds.
    def predict(self, features: Mapping[str, float]) -> float:
        """Return the reward predicted without a message (the shared baseline block)."""
        return float(self.block_scores(features)[0]) if self.model.w.shape[0] else 0.0

    def learn(self, features: Mapping[str, float], reward: float, weight: float = 1.0) -> None:
        """Learn a reward observed without a message."""
        x = self.index.encode(features, grow=True)
        crossed = np.zeros((x.shape[0], len(self.blocks)), dtype=np.float64)
        crossed[:, 0] = x
        self.model.learn_vector(crossed.reshape(-1), reward, weight)


class ActionView:
    """One action's RewardModel over a shared FactoredRidge (learning moves the shared weights)."""

    __slots__ = ("action_id", "shared")

    def __init__(self, shared: FactoredRidge, action_id: str) -> None:
        """Bind the shared model and the action."""
        self.shared = shared
        self.action_id = action_id

    def predict(self, features: Mapping[str, float]) -> float:
        """Return this action's expected reward."""
        return self.shared.predict_action(features, self.action_id)

    def learn(self, features: Mapping[str, float], reward: float, weight: float = 1.0) -> None:
        """Teach the shared model one reward of this action."""
        self.shared.learn_action(features, self.action_id, reward, weight)

    def clone(self) -> ActionView:
        """A view of the same action on a fresh shared model."""
        return ActionView(self.shared.clone(), self.action_id)

"""Off-policy evaluation checked on real logs: the Open Bandit Dataset (ZOZOTOWN, "all" campaign).

Two policies logged the same week: uniform random (propensity 1/80 per item and position) and
Bernoulli Thompson sampling (BTS). `run()` estimates the BTS click rate from the random logs with
Kairos' estimators (engine/evaluation.py), beside its on-policy click rate (the mean click in its
own logs), then trains Kairos' bandit on the random logs and estimates its click rate the same
way, against both logged policies. `bench/obd.py` (BENCHMARKS.md) and `kairos evaluate --obd`
report it.

Position: each row is one impression at one of 3 positions (1, 2, 3 in the CSV, the ranks of a
3-item slate) and the click rate depends on it. The position is part of the context: the target
policy's distribution at position k is P(item ranks k-th), and the reward model and the learner
see the position as a feature. The BTS distribution comes by Monte Carlo from prior_bts.yaml:
draw theta_i ~ Beta(alpha_i, beta_i) for the 80 items, rank them, count how often item i is
k-th.

Data: Saito, Aihara, Matsutani, Narita, "Open Bandit Dataset and Pipeline: Towards Realistic and
Reproducible Off-Policy Evaluation", NeurIPS 2021 Datasets and Benchmarks (CC BY 4.0).

Reads the sample's CSV and YAML files; numpy and the engine only (no Kafka, no Faust).
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from engine.bandit import ContextualBandit
from engine.evaluation import (
    ESTIMATORS,
    Estimate,
    Evaluation,
    LoggedRecord,
    TargetPolicy,
    evaluate,
    mean_estimate,
)
from engine.policies import ExplorationConfig

__all__ = [
    "BTS_LOG",
    "ITEMS",
    "LEARNERS",
    "N_ITEMS",
    "N_POSITIONS",
    "PRIOR_FILE",
    "RANDOM_LOG",
    "ObdDataError",
    "ObdLog",
    "ObdResult",
    "bandit_policy",
    "bts_distribution",
    "compare",
    "context",
    "cross_fitted",
    "load_log",
    "load_prior",
    "missing_files",
    "model_features",
    "pct",
    "pct_interval",
    "pooled",
    "ranked_policy",
    "records",
    "relative_error",
    "replay",
    "replay_cells",
    "run",
    "train_bandit",
    "verdict",
]

N_ITEMS = 80
N_POSITIONS = 3
ITEMS: tuple[str, ...] = tuple(f"item_{i}" for i in range(N_ITEMS))
USER_FEATURES = 4
MODEL_FEATURES_EXCLUDED = ("half",)
RANDOM_LOG = Path("random") / "all" / "all.csv"
"""The uniform-random policy's log, relative to the sample directory."""
BTS_LOG = Path("bts") / "all" / "all.csv"
"""The Bernoulli Thompson sampling policy's log, relative to the sample directory."""
PRIOR_FILE = Path("prior_bts.yaml")
"""The BTS policy's Beta priors, relative to the sample directory."""
LEARNERS: dict[str, ExplorationConfig] = {
    "epsilon-greedy 0.1": ExplorationConfig(kind="epsilon_greedy", epsilon=0.1),
    "bootstrap Thompson (10 replicas)": ExplorationConfig(kind="thompson", n_bootstrap=10),
}
"""Kairos' exploration settings trained and evaluated on the random logs."""
_COLUMNS = (
    "item_id",
    "position",
    "click",
    "propensity_score",
    "timestamp",
    *(f"user_feature_{j}" for j in range(USER_FEATURES)),
)


class ObdDataError(ValueError):
    """The sample directory lacks a file the check needs, or a file is not in the OBD format."""


@dataclass(frozen=True)
class ObdLog:
    """One policy's logged rounds: item, position (0-based), click, propensity, user features."""

    item: npt.NDArray[np.int64]
    position: npt.NDArray[np.int64]
    click: npt.NDArray[np.float64]
    propensity: npt.NDArray[np.float64]
    user: list[tuple[str, ...]]
    timestamp: list[str]

    def __len__(self) -> int:
        """Number of rounds."""
        return int(self.item.shape[0])


def missing_files(data: Path) -> list[Path]:
    """The sample files absent from a directory (both logs and the BTS prior), to name them."""
    return [data / p for p in (RANDOM_LOG, BTS_LOG, PRIOR_FILE) if not (data / p).is_file()]


def load_log(path: Path, limit: int | None = None) -> ObdLog:
    """Read an OBD all.csv (csv module; the 80 user-item affinity columns are not used)."""
    items: list[int] = []
    positions: list[int] = []
    clicks: list[float] = []
    props: list[float] = []
    users: list[tuple[str, ...]] = []
    stamps: list[str] = []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        absent = [c for c in _COLUMNS if c not in (reader.fieldnames or ())]
        if absent:
            raise ObdDataError(f"{path}: not an Open Bandit Dataset log, no column {absent}")
        for row in reader:
            try:
                items.append(int(row["item_id"]))
                positions.append(int(row["position"]) - 1)  # the CSV numbers positions 1..3
                clicks.append(float(row["click"]))
                props.append(float(row["propensity_score"]))
            except (TypeError, ValueError) as exc:
                raise ObdDataError(f"{path}, line {reader.line_num}: {exc}") from None
            users.append(tuple(row[f"user_feature_{j}"] for j in range(USER_FEATURES)))
            stamps.append(row["timestamp"])
            if limit is not None and len(items) >= limit:
                break
    if not items:
        raise ObdDataError(f"{path}: no rows")
    position = np.array(positions, dtype=np.int64)
    item = np.array(items, dtype=np.int64)
    if position.min() < 0 or position.max() >= N_POSITIONS:
        raise ObdDataError(f"{path}: positions outside 1..{N_POSITIONS}")
    if item.min() < 0 or item.max() >= N_ITEMS:
        raise ObdDataError(f"{path}: item ids outside 0..{N_ITEMS - 1}")
    return ObdLog(
        item,
        position,
        np.array(clicks, dtype=np.float64),
        np.array(props, dtype=np.float64),
        users,
        stamps,
    )


def load_prior(path: Path, campaign: str = "all") -> tuple[list[float], list[float]]:
    """Read the alpha and beta lists of one campaign from prior_bts.yaml (no YAML library needed)."""
    lists: dict[str, dict[str, list[float]]] = {}
    current: str | None = None
    key: str | None = None
    for raw in path.read_text().splitlines():
        line = raw.rstrip()
        if not line or line.lstrip().startswith("#"):
            continue
        if not line.startswith(" "):
            current = line.rstrip(":").strip()
            lists[current] = {}
        elif line.strip().startswith("- ") and current is not None and key is not None:
            lists[current][key].append(float(line.strip()[2:]))
        elif current is not None:
            key = line.strip().rstrip(":")
            lists[current][key] = []
    prior = lists.get(campaign, {})
    alpha, beta = prior.get("alpha", []), prior.get("beta", [])
    if len(alpha) != N_ITEMS or len(beta) != N_ITEMS:
        raise ObdDataError(f"{path}: no {N_ITEMS} alpha and beta values for campaign {campaign!r}")
    return alpha, beta


def bts_distribution(
    alpha: Sequence[float], beta: Sequence[float], n_sim: int, seed: int
) -> npt.NDArray[np.float64]:
    """P(item i is ranked k-th) under Thompson sampling from Beta(alpha, beta), by Monte Carlo."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((len(alpha), N_POSITIONS), dtype=np.float64)
    a = np.asarray(alpha, dtype=np.float64)
    b = np.asarray(beta, dtype=np.float64)
    done = 0
    while done < n_sim:
        batch = min(20_000, n_sim - done)
        theta = rng.beta(a, b, size=(batch, a.shape[0]))
        top = np.argsort(-theta, axis=1)[:, :N_POSITIONS]
        for k in range(N_POSITIONS):
            counts[:, k] += np.bincount(top[:, k], minlength=a.shape[0])
        done += batch
    return counts / n_sim


def context(log: ObdLog, i: int, half: int) -> dict[str, float]:
    """A round's context: position one-hot, hashed user features one-hot, which half of the week."""
    features = {f"position_{k}": 1.0 if log.position[i] == k else 0.0 for k in range(N_POSITIONS)}
    for j, value in enumerate(log.user[i]):
        features[f"user{j}_{value[:8]}"] = 1.0
    features["half"] = float(half)
    return features


def records(log: ObdLog, halves: npt.NDArray[np.int64] | None = None) -> list[LoggedRecord]:
    """The log as Kairos logged records (action = item id, reward = click)."""
    out = []
    for i in range(len(log)):
        half = int(halves[i]) if halves is not None else 0
        out.append(
            LoggedRecord(
                features=context(log, i, half),
                action=ITEMS[int(log.item[i])],
                propensity=float(log.propensity[i]),
                reward=float(log.click[i]),
                actions=ITEMS,
            )
        )
    return out


def ranked_policy(dist: npt.NDArray[np.float64]) -> TargetPolicy:
    """A target policy that gives item i at position k the probability dist[i, k]."""
    columns = [
        {ITEMS[i]: float(dist[i, k]) for i in range(N_ITEMS) if dist[i, k] > 0.0}
        for k in range(N_POSITIONS)
    ]

    def policy(features: Mapping[str, float], actions: Sequence[str]) -> Mapping[str, float]:
        k = next(k for k in range(N_POSITIONS) if features.get(f"position_{k}") == 1.0)
        return columns[k]

    return policy


def model_features(recs: Sequence[LoggedRecord]) -> list[str]:
    """The reward model's features: everything in the context except the bookkeeping half."""
    return sorted({k for r in recs for k in r.features} - set(MODEL_FEATURES_EXCLUDED))


def train_bandit(
    recs: Sequence[LoggedRecord], exploration: ExplorationConfig, seed: int
) -> ContextualBandit:
    """Kairos' bandit trained offline on uniform-random logs: every logged (item, click) is learned.

    Under uniform logging each item's rows are an unbiased sample of contexts, so plain per-item
    regression is the IPS-weighted learner (all weights equal to 80).
    """
    bandit = ContextualBandit(ITEMS, exploration, seed=seed)
    for r in recs:
        bandit.learn(r.action, {k: v for k, v in r.features.items() if k != "half"}, r.reward)
    return bandit


def bandit_policy(bandit: ContextualBandit) -> TargetPolicy:
    """The bandit's full action distribution in a context (its exploration included)."""

    def policy(features: Mapping[str, float], actions: Sequence[str]) -> Mapping[str, float]:
        view = {k: v for k, v in features.items() if k != "half"}
        return bandit.choose(view, list(actions), random.Random(0)).probabilities

    return policy


def pooled(parts: Sequence[Evaluation], name: str) -> Estimate:
    """Combine one estimator over disjoint evaluation sets: n-weighted mean, normal interval."""
    n = sum(p.n for p in parts)
    value = sum(p.n * p.estimates[name].value for p in parts) / n
    se = math.sqrt(sum((p.n / n) ** 2 * p.estimates[name].std_error ** 2 for p in parts))
    ess = [p.estimates[name].ess for p in parts]
    total_ess = sum(e for e in ess if e is not None) if all(e is not None for e in ess) else None
    z = 1.959963984540054
    return Estimate(name, value, value - z * se, value + z * se, se, n, total_ess, "normal")


def cross_fitted(
    recs: Sequence[LoggedRecord],
    halves: npt.NDArray[np.int64],
    exploration: ExplorationConfig,
    features: Sequence[str],
    seed: int,
) -> dict[str, Estimate]:
    """Train on one half of the week, evaluate on the other (both ways), pool the estimates.

    The DM/DR reward model is cross-fitted inside the evaluated half, so that it is independent
    of the data the policy was trained on (a model fitted on the training half would share the
    policy's lucky clicks and overrate it: the winner's curse over 80 items).
    """
    parts = []
    for half in (0, 1):
        train = [r for r, h in zip(recs, halves, strict=True) if h != half]
        test = [r for r, h in zip(recs, halves, strict=True) if h == half]
        bandit = train_bandit(train, exploration, seed)
        parts.append(
            evaluate(test, bandit_policy(bandit), model_features=features, l2=10.0, seed=seed)
        )
    return {name: pooled(parts, name) for name in ESTIMATORS}


def replay(
    recs: Sequence[LoggedRecord], exploration: ExplorationConfig, seed: int
) -> tuple[Estimate, int]:
    """Li et al. (2011) rejection-sampling replay of the online learner on uniform logs.

    The bandit decides each round in time order; a round counts (and is learned) only when its
    choice equals the logged item, so the kept rounds are what the learner would have seen.
    """
    bandit = ContextualBandit(ITEMS, exploration, seed=seed)
    rng = random.Random(seed)
    kept: list[float] = []
    for r in recs:
        view = {k: v for k, v in r.features.items() if k != "half"}
        if bandit.choose(view, ITEMS, rng).action_id == r.action:
            kept.append(r.reward)
            bandit.learn(r.action, view, r.reward)
    return mean_estimate("replay", kept or [0.0]), len(kept)


@dataclass(frozen=True)
class ObdResult:
    """Everything the reports show."""

    n_random: int
    n_bts: int
    clicks_random: int
    clicks_bts: int
    random_value: Estimate
    bts_value: Estimate
    bts_offline: Evaluation
    mc_vs_logged: float
    learned: dict[str, dict[str, Estimate]]
    replay: Estimate
    replay_kept: int
    n_sim: int
    bootstrap: int = 1000


def run(
    data: Path, n_sim: int, seed: int, limit: int | None = None, bootstrap: int = 1000
) -> ObdResult:
    """Load the sample, evaluate BTS off-policy, train and evaluate Kairos' bandit.

    Raises ObdDataError, naming the files, when the directory is not an OBD sample.
    """
    missing = missing_files(data)
    if missing:
        names = ", ".join(str(p) for p in missing)
        raise ObdDataError(
            f"{data} is not an Open Bandit Dataset sample: missing {names} (expected "
            f"{RANDOM_LOG}, {BTS_LOG} and {PRIOR_FILE}, as in the obp package's bundled sample)"
        )
    random_log = load_log(data / RANDOM_LOG, limit)
    bts_log = load_log(data / BTS_LOG, limit)
    alpha, beta = load_prior(data / PRIOR_FILE)
    dist = bts_distribution(alpha, beta, n_sim, seed)
    # How close the Monte Carlo distribution is to the BTS logger's own propensities.
    mc = dist[bts_log.item, bts_log.position]
    mc_vs_logged = float(np.median(np.abs(mc - bts_log.propensity) / bts_log.propensity))

    halves = (np.arange(len(random_log)) >= len(random_log) // 2).astype(np.int64)
    recs = records(random_log, halves)  # the logs are in time order: halves of the week
    features = model_features(recs)
    bts_offline = evaluate(
        recs, ranked_policy(dist), model_features=features, l2=10.0, bootstrap=bootstrap, seed=seed
    )
    learned = {
        label: cross_fitted(recs, halves, config, features, seed)
        for label, config in LEARNERS.items()
    }
    exploration = LEARNERS["epsilon-greedy 0.1"]
    replay_value, kept = replay(recs, exploration, seed)
    return ObdResult(
        n_random=len(random_log),
        n_bts=len(bts_log),
        clicks_random=int(random_log.click.sum()),
        clicks_bts=int(bts_log.click.sum()),
        random_value=mean_estimate("random", random_log.click),
        bts_value=mean_estimate("bts", bts_log.click),
        bts_offline=bts_offline,
        mc_vs_logged=mc_vs_logged,
        learned=learned,
        replay=replay_value,
        replay_kept=kept,
        n_sim=n_sim,
        bootstrap=bootstrap,
    )


def relative_error(estimate: Estimate, truth: float) -> float | None:
    """|estimate - truth| / truth, the OBD measure of an estimator (None when the truth is 0)."""
    return abs(estimate.value - truth) / truth if truth > 0.0 else None


def pct(x: float) -> str:
    """A click rate in percent."""
    return f"{100 * x:.3f}%"


def pct_interval(e: Estimate) -> str:
    """An interval in percent (a click rate is never negative: normal intervals cut at 0)."""
    return f"[{pct(max(e.low, 0.0))}, {pct(e.high)}]"


def compare(estimate: Estimate, value: float) -> str:
    """Where an interval lies relative to a value: "above", "below" or "not distinguishable from"."""
    if estimate.low > value:
        return "above"
    return "below" if estimate.high < value else "not distinguishable from"


def replay_cells(result: ObdResult) -> tuple[str, str]:
    """The replay's click rate and interval as text (the rule of three when it kept no click)."""
    rp = result.replay
    if rp.value > 0.0:
        return pct(rp.value), pct_interval(rp)
    return "0 clicks", f"[0, {pct(3.0 / max(result.replay_kept, 1))}] (rule of three)"


def verdict(result: ObdResult) -> str:
    """Say whether the learned policies' DR intervals separate them from the logged policies."""
    truth, rnd = result.bts_value.value, result.random_value.value
    parts = []
    for label, estimates in result.learned.items():
        dr = estimates["dr"]
        vs = [f"{compare(dr, v)} {who} ({pct(v)})" for who, v in (("BTS", truth), ("random", rnd))]
        parts.append(f"Kairos {label}: DR {pct(dr.value)}, {' and '.join(vs)}")
    return "; ".join(parts) + "."

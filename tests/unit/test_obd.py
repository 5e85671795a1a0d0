"""Smoke test of the Open Bandit Dataset check (engine/obd.py, bench/obd.py) on the first rows."""

from __future__ import annotations

import numpy as np
import pytest

from bench import obd as bench_obd
from engine import obd
from engine.evaluation import evaluate

DATA = bench_obd.DEFAULT_DATA

pytestmark = pytest.mark.skipif(
    not (DATA / "random" / "all" / "all.csv").exists(), reason=f"no OBD sample at {DATA}"
)


def test_prior_and_monte_carlo_distribution() -> None:
    """80 Beta priors; each position's item distribution sums to 1, each item to <= 1."""
    alpha, beta = obd.load_prior(DATA / "prior_bts.yaml")
    assert len(alpha) == len(beta) == obd.N_ITEMS
    dist = obd.bts_distribution(alpha, beta, n_sim=2000, seed=1)
    assert dist.shape == (obd.N_ITEMS, obd.N_POSITIONS)
    assert np.allclose(dist.sum(axis=0), 1.0)
    assert np.all(dist.sum(axis=1) <= 1.0 + 1e-12)
    assert np.array_equal(dist, obd.bts_distribution(alpha, beta, n_sim=2000, seed=1))


def test_offline_estimates_on_a_few_thousand_rows() -> None:
    """On 3,000 random rounds the estimates are finite, in a sane range, with intervals."""
    log = obd.load_log(DATA / "random" / "all" / "all.csv", limit=3000)
    assert len(log) == 3000
    assert set(np.unique(log.position)) <= {0, 1, 2}
    assert np.allclose(log.propensity, 1 / 80)
    alpha, beta = obd.load_prior(DATA / "prior_bts.yaml")
    dist = obd.bts_distribution(alpha, beta, n_sim=5000, seed=0)
    recs = obd.records(log)
    result = evaluate(
        recs, obd.ranked_policy(dist), model_features=obd.model_features(recs), l2=10.0
    )
    assert result.n == 3000 and result.n_clipped == 0
    assert 0.0 < result.ess < 3000
    for e in result.estimates.values():
        assert np.isfinite(e.value) and e.low <= e.value <= e.high
        assert -0.01 < e.value < 0.05  # a click rate of a fraction of a percent


def test_report_runs_on_a_small_sample() -> None:
    """The whole check runs on 2,000 rows per log and writes every table row."""
    result = obd.run(DATA, n_sim=2000, seed=0, limit=2000)
    text = bench_obd.report(result)
    for name in ("IPS", "SNIPS", "DM", "DR", "replay", "on-policy"):
        assert name in text
    assert "Saito" in text

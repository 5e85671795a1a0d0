"""The live dashboard's figures, computed from a WorkerMetrics registry (no worker, no broker)."""

from __future__ import annotations

import pytest

from streams.dashboard import (
    REWARD_VALUE_METRIC,
    Sampler,
    dashboard_html,
    histogram_buckets,
    quantile_from_buckets,
    read_registry,
)
from streams.metrics import WorkerMetrics


def _decide(m: WorkerMetrics, campaign: str, action: str, n: int, **flags: bool) -> None:
    explore = str(flags.get("explore", False)).lower()
    holdout = str(flags.get("holdout", False)).lower()
    m.decisions.labels(campaign=campaign, action=action, explore=explore, holdout=holdout).inc(n)


def test_quantiles_interpolate_inside_the_bucket_like_prometheus() -> None:
    buckets = [(0.001, 0.0), (0.002, 50.0), (0.005, 100.0), (float("inf"), 100.0)]
    assert quantile_from_buckets(buckets, 0.5) == pytest.approx(0.002)
    assert quantile_from_buckets(buckets, 0.25) == pytest.approx(0.0015)
    assert quantile_from_buckets(buckets, 0.75) == pytest.approx(0.0035)
    assert quantile_from_buckets([(0.001, 0.0), (float("inf"), 0.0)], 0.5) is None
    # Observations beyond the last finite bound: the estimate is that bound.
    assert quantile_from_buckets([(0.001, 0.0), (float("inf"), 4.0)], 0.99) == 0.001


def test_histogram_quantiles_match_the_observations() -> None:
    m = WorkerMetrics()
    for _ in range(90):
        m.latency.observe(0.0015)  # (0.001, 0.002] bucket
    for _ in range(10):
        m.latency.observe(0.04)  # (0.02, 0.05] bucket
    data = Sampler(m).data(now=0.0)
    since = data["latency_ms"]["since_start"]
    assert since["count"] == 100
    assert 1.0 <= since["p50"] <= 2.0
    assert 20.0 <= since["p95"] <= 50.0
    assert since["mean"] == pytest.approx((90 * 1.5 + 10 * 40) / 100, rel=1e-6)
    buckets = histogram_buckets(read_registry(m.registry), "kairos_trigger_to_decision_seconds")
    assert buckets[-1] == (float("inf"), 100.0)


def test_rates_shares_and_tables_follow_the_counters() -> None:
    m = WorkerMetrics()
    m.set_state("running")
    sampler = Sampler(m, window_s=5.0)
    assert sampler.data(now=100.0)["rates"]["decisions_per_s"] is None  # one reading: no rate yet
    _decide(m, "cart", "email", 6)
    _decide(m, "cart", "sms", 2, explore=True)
    _decide(m, "cart", "no_action", 2, holdout=True)
    m.events_in.labels(type="cart_add").inc(40)
    m.rewards.labels(campaign="cart", closed_by="expired").inc(3)
    m.dead_letters.labels(reason="bad_json").inc(2)
    m.model_version.labels(campaign="cart").set(7)
    data = sampler.data(now=104.0)
    assert data["state"] == "running"
    assert data["totals"]["decisions"] == 10
    assert data["rates"]["decisions_per_s"] == pytest.approx(2.5)
    assert data["rates"]["events_per_s"] == pytest.approx(10.0)
    assert data["shares"] == {"explore": 0.2, "holdout": 0.2}
    shares = {a["action"]: a["share"] for a in data["actions"]}
    assert shares == {"email": 0.6, "no_action": 0.2, "sms": 0.2}
    assert data["rewards"] == [{"campaign": "cart", "closed_by": "expired", "count": 3.0}]
    assert data["dead_letters"] == [{"reason": "bad_json", "count": 2.0}]
    assert data["models"] == [{"campaign": "cart", "version": 7.0, "updates": 0.0}]
    # No reward observed yet: no mean to show.
    assert all(a["mean_reward"] is None for a in data["actions"])
    # Only readings inside the window count: 4 decisions in the 2 s after the 104 s reading.
    _decide(m, "cart", "email", 4)
    sampler.data(now=111.0)
    _decide(m, "cart", "email", 3)
    later = sampler.data(now=113.0)
    assert later["rates"]["window_s"] == 2.0
    assert later["rates"]["decisions_per_s"] == pytest.approx(1.5)
    assert [p["decisions_per_s"] for p in later["history"]] == [2.5, 0.571, 1.5]


def test_mean_reward_is_used_when_the_worker_defines_the_reward_value_metric() -> None:
    m = WorkerMetrics()
    reward = m.reward_value
    assert reward._name == REWARD_VALUE_METRIC
    _decide(m, "cart", "email", 2)
    reward.labels(campaign="cart", action="email").observe(1.0)
    reward.labels(campaign="cart", action="email").observe(0.0)
    data = Sampler(m).data(now=0.0)
    assert data["missing"] == []
    assert data["actions"][0]["mean_reward"] == 0.5
    assert data["actions"][0]["rewards"] == 2.0


def test_the_page_is_self_contained() -> None:
    html = dashboard_html()
    assert "/dashboard/data" in html
    for external in ("http://", "https://", "<link", "src="):
        assert external not in html, external

"""A live dashboard served by the worker: GET /dashboard (HTML) and GET /dashboard/data (JSON).

Everything comes from the worker's own Prometheus registry (``WorkerMetrics``), so the page shows
exactly what /metrics exposes. Rates and the recent latency need history: a ``Sampler`` keeps the
last couple of minutes of counter readings in a ring buffer (one reading a second from a Faust
timer, plus one per request) and derives per-second rates from the readings of the last few
seconds. Latency percentiles are estimated from the histogram buckets the way Prometheus'
``histogram_quantile`` does (linear interpolation inside the bucket).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import faust
from prometheus_client import CollectorRegistry

from streams.metrics import WorkerMetrics

SAMPLE_INTERVAL_S = 1.0  # how often the Faust timer reads the registry
RATE_WINDOW_S = 5.0  # rates are computed over the readings of the last few seconds
HISTORY = 120  # readings kept in the ring buffer (about two minutes)
MIN_GAP_S = 0.5  # a request within this time of the last stored reading is not stored again
# Mean reward per campaign/action needs the reward *values*; kairos_rewards_total only counts
# reward records by campaign and closed_by. When the worker defines this metric (a Summary or a
# Histogram labelled campaign and action, observing each reward), the dashboard uses it.
REWARD_VALUE_METRIC = "kairos_reward_value"
QUANTILES = (0.5, 0.95, 0.99)

Labels = dict[str, str]
Readings = dict[str, list[tuple[Labels, float]]]


def read_registry(registry: CollectorRegistry) -> Readings:
    """Every sample of the registry, by sample name (``kairos_x_total``, ``kairos_y_bucket``...)."""
    readings: Readings = {}
    for family in registry.collect():
        for sample in family.samples:
            readings.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return readings


def total(readings: Readings, name: str, **match: str) -> float:
    """Sum of the samples called `name` whose labels include `match`."""
    return sum(
        value
        for labels, value in readings.get(name, ())
        if all(labels.get(k) == v for k, v in match.items())
    )


def by_labels(readings: Readings, name: str, keys: Sequence[str]) -> dict[tuple[str, ...], float]:
    """Samples called `name` summed by the values of the label `keys`."""
    out: dict[tuple[str, ...], float] = {}
    for labels, value in readings.get(name, ()):
        key = tuple(labels.get(k, "") for k in keys)
        out[key] = out.get(key, 0.0) + value
    return out


def histogram_buckets(readings: Readings, name: str) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) pairs of a histogram, sorted by bound (+Inf last)."""
    buckets: dict[float, float] = {}
    for labels, value in readings.get(f"{name}_bucket", ()):
        bound = float(labels["le"])
        buckets[bound] = buckets.get(bound, 0.0) + value
    return sorted(buckets.items())


def quantile_from_buckets(buckets: Sequence[tuple[float, float]], q: float) -> float | None:
    """Estimate the q-quantile from cumulative buckets, as Prometheus' histogram_quantile does."""
    if not buckets or not 0.0 <= q <= 1.0:
        return None
    count = buckets[-1][1]
    if count <= 0:
        return None
    rank = q * count
    lower_bound, lower_count = 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= rank:
            if math.isinf(bound):
                # Beyond the last finite bucket: the best estimate is that bucket's upper bound.
                return lower_bound
            in_bucket = cumulative - lower_count
            if in_bucket <= 0:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / in_bucket
        lower_bound, lower_count = bound, cumulative
    return lower_bound


def latency_summary(
    buckets: Sequence[tuple[float, float]], sum_s: float, count: float
) -> dict[str, float | None] | None:
    """p50/p95/p99 and mean in milliseconds from cumulative buckets, or None with no observations."""
    if count <= 0:
        return None
    summary: dict[str, float | None] = {}
    for q in QUANTILES:
        value = quantile_from_buckets(buckets, q)
        summary[f"p{round(q * 100)}"] = None if value is None else round(value * 1000.0, 3)
    summary["mean"] = round(sum_s / count * 1000.0, 3)
    summary["count"] = count
    return summary


@dataclass(frozen=True)
class Reading:
    """One reading of the counters the dashboard turns into rates."""

    t: float
    decisions: float
    events: float
    outcomes: float
    rewards: float
    latency_buckets: tuple[tuple[float, float], ...]
    latency_sum: float
    latency_count: float


def take_reading(readings: Readings, t: float) -> Reading:
    """The rate-relevant totals of a registry reading taken at monotonic time `t`."""
    latency = "kairos_trigger_to_decision_seconds"
    return Reading(
        t=t,
        decisions=total(readings, "kairos_decisions_total"),
        events=total(readings, "kairos_events_total"),
        outcomes=total(readings, "kairos_outcomes_total"),
        rewards=total(readings, "kairos_rewards_total"),
        latency_buckets=tuple(histogram_buckets(readings, latency)),
        latency_sum=total(readings, f"{latency}_sum"),
        latency_count=total(readings, f"{latency}_count"),
    )


def _rate(new: float, old: float, seconds: float) -> float:
    return round(max(new - old, 0.0) / seconds, 3) if seconds > 0 else 0.0


def _share(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole > 0 else None


@dataclass
class Sampler:
    """Ring buffer of registry readings, and the dashboard's JSON computed from it."""

    metrics: WorkerMetrics
    history: int = HISTORY
    window_s: float = RATE_WINDOW_S
    started: float = field(default_factory=time.monotonic)
    ring: deque[Reading] = field(init=False)

    def __post_init__(self) -> None:
        self.ring = deque(maxlen=self.history)

    def sample(self, now: float | None = None) -> Readings:
        """Read the registry, store the reading in the ring buffer, return the full readings."""
        readings = read_registry(self.metrics.registry)
        self.ring.append(take_reading(readings, time.monotonic() if now is None else now))
        return readings

    def _window_start(self, latest: Reading) -> Reading | None:
        """The oldest reading within the rate window before `latest`, else the one just before."""
        previous = [r for r in self.ring if r is not latest and r.t < latest.t]
        if not previous:
            return None
        inside = [r for r in previous if latest.t - r.t <= self.window_s + 1e-9]
        return inside[0] if inside else previous[-1]

    def data(self, now: float | None = None) -> dict[str, Any]:
        """The dashboard's figures: a fresh reading plus rates over the ring buffer."""
        readings = read_registry(self.metrics.registry)
        latest = take_reading(readings, time.monotonic() if now is None else now)
        # Many viewers must not flood the ring: store the reading only if the last is old enough.
        if not self.ring or latest.t - self.ring[-1].t >= MIN_GAP_S:
            self.ring.append(latest)
        start = self._window_start(latest)
        seconds = latest.t - start.t if start is not None else 0.0
        rates: dict[str, Any] = {"window_s": round(seconds, 3)}
        for name in ("decisions", "events", "outcomes", "rewards"):
            rates[f"{name}_per_s"] = (
                _rate(getattr(latest, name), getattr(start, name), seconds)
                if start is not None and seconds > 0
                else None
            )
        recent = None
        if start is not None and latest.latency_count > start.latency_count:
            old = dict(start.latency_buckets)
            diff = [(b, c - old.get(b, 0.0)) for b, c in latest.latency_buckets]
            recent = latency_summary(
                diff,
                latest.latency_sum - start.latency_sum,
                latest.latency_count - start.latency_count,
            )
        return {
            "uptime_s": round(latest.t - self.started, 1),
            "state": worker_state(readings),
            "totals": _totals(readings),
            "rates": rates,
            "history": self._history(),
            "latency_ms": {
                "since_start": latency_summary(
                    latest.latency_buckets, latest.latency_sum, latest.latency_count
                ),
                "recent": recent,
            },
            "shares": {
                "explore": _share(
                    total(readings, "kairos_decisions_total", explore="true"), latest.decisions
                ),
                "holdout": _share(
                    total(readings, "kairos_decisions_total", holdout="true"), latest.decisions
                ),
            },
            "actions": _actions(readings),
            "rewards": [
                {"campaign": c, "closed_by": k, "count": v}
                for (c, k), v in sorted(
                    by_labels(readings, "kairos_rewards_total", ("campaign", "closed_by")).items()
                )
            ],
            "dead_letters": [
                {"reason": r, "count": v}
                for (r,), v in sorted(
                    by_labels(readings, "kairos_dead_letters_total", ("reason",)).items()
                )
            ],
            "models": _models(readings),
            "pending_timers": total(readings, "kairos_pending_timers"),
            "missing": _missing(self.metrics.registry),
        }

    def _history(self) -> list[dict[str, float]]:
        """Decisions and events per second between consecutive readings (the sparkline)."""
        points: list[dict[str, float]] = []
        previous: Reading | None = None
        for reading in self.ring:
            if previous is not None and reading.t - previous.t >= 0.5:
                seconds = reading.t - previous.t
                points.append(
                    {
                        "t": round(reading.t - self.started, 1),
                        "decisions_per_s": _rate(reading.decisions, previous.decisions, seconds),
                        "events_per_s": _rate(reading.events, previous.events, seconds),
                    }
                )
                previous = reading
            elif previous is None:
                previous = reading
        return points


def worker_state(readings: Readings) -> str:
    """The state whose kairos_worker_state gauge is 1, or "unknown"."""
    for labels, value in readings.get("kairos_worker_state", ()):
        if value == 1.0:
            return labels.get("state", "unknown")
    return "unknown"


def _totals(readings: Readings) -> dict[str, float]:
    names = {
        "decisions": "kairos_decisions_total",
        "events": "kairos_events_total",
        "outcomes": "kairos_outcomes_total",
        "triggers": "kairos_triggers_total",
        "rewards": "kairos_rewards_total",
        "dead_letters": "kairos_dead_letters_total",
        "duplicates": "kairos_duplicates_total",
        "late_outcomes": "kairos_late_outcomes_total",
        "unattributed_outcomes": "kairos_unattributed_outcomes_total",
        "model_updates": "kairos_model_updates_total",
    }
    return {key: total(readings, name) for key, name in names.items()}


def _actions(readings: Readings) -> list[dict[str, Any]]:
    """Decisions, share within the campaign, explore/holdout counts and mean reward per action."""
    keys = ("campaign", "action", "explore", "holdout")
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for (campaign, action, explore, holdout), value in by_labels(
        readings, "kairos_decisions_total", keys
    ).items():
        row = rows.setdefault(
            (campaign, action),
            {"campaign": campaign, "action": action, "decisions": 0.0, "explore": 0.0},
        )
        row["decisions"] += value
        row.setdefault("holdout", 0.0)
        if explore == "true":
            row["explore"] += value
        if holdout == "true":
            row["holdout"] += value
    per_campaign: dict[str, float] = {}
    for (campaign, _), row in rows.items():
        per_campaign[campaign] = per_campaign.get(campaign, 0.0) + row["decisions"]
    sums = by_labels(readings, f"{REWARD_VALUE_METRIC}_sum", ("campaign", "action"))
    counts = by_labels(readings, f"{REWARD_VALUE_METRIC}_count", ("campaign", "action"))
    out = []
    for key in sorted(rows):
        row = rows[key]
        row["share"] = _share(row["decisions"], per_campaign[key[0]])
        n = counts.get(key, 0.0)
        row["rewards"] = n if key in counts else None
        row["mean_reward"] = round(sums.get(key, 0.0) / n, 4) if n > 0 else None
        out.append(row)
    return out


def _models(readings: Readings) -> list[dict[str, Any]]:
    versions = by_labels(readings, "kairos_model_version", ("campaign",))
    updates = by_labels(readings, "kairos_model_updates_total", ("campaign",))
    return [
        {"campaign": c, "version": versions.get((c,)), "updates": updates.get((c,), 0.0)}
        for (c,) in sorted(set(versions) | set(updates))
    ]


def _missing(registry: CollectorRegistry) -> list[str]:
    """Figures the page would show but the worker's metrics cannot provide yet."""
    if any(family.name == REWARD_VALUE_METRIC for family in registry.collect()):
        return []
    return [
        "mean reward by campaign/action: kairos_rewards_total counts reward records by campaign "
        f"and closed_by only; it needs a {REWARD_VALUE_METRIC} summary labelled campaign, action"
    ]


def dashboard_html() -> str:
    """The page: a self-contained HTML file shipped as package data (streams/web)."""
    return resources.files("streams").joinpath("web/dashboard.html").read_text(encoding="utf-8")


def register_dashboard(app: faust.App, metrics: WorkerMetrics) -> None:
    """Add GET /dashboard and GET /dashboard/data to the worker's web server."""
    sampler = Sampler(metrics)
    sampler.sample()  # a baseline, so the first interval's rate covers records before any timer
    html = dashboard_html()

    @app.page("/dashboard", name="kairos_dashboard")
    async def dashboard(web: Any, request: Any) -> Any:
        return web.html(html, headers={"Cache-Control": "no-store"})

    @app.page("/dashboard/data", name="kairos_dashboard_data")
    async def dashboard_data(web: Any, request: Any) -> Any:
        return web.json(sampler.data(), headers={"Cache-Control": "no-store"})

    @app.timer(interval=SAMPLE_INTERVAL_S, name="kairos.dashboard.sample")  # type: ignore[untyped-decorator]
    async def sample_metrics() -> None:
        sampler.sample()

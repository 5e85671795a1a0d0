"""`kairos evaluate --obd DIR`: the off-policy estimators checked on the Open Bandit Dataset sample.

The check is engine/obd.py (the same as `bench/obd.py`): the Bernoulli Thompson sampling (BTS)
policy's click rate estimated from the uniform-random logs with IPS, SNIPS, DM and DR, beside its
on-policy click rate in its own logs (relative error per estimator), then Kairos' bandit trained
on the random logs and evaluated the same way, against both logged policies. This module prints
it as terminal tables and writes the HTML report in the style of `kairos evaluate`'s.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from engine.evaluation import ESTIMATORS, Estimate
from engine.obd import (
    ObdDataError,
    ObdResult,
    compare,
    pct,
    pct_interval,
    relative_error,
    replay_cells,
    run,
    verdict,
)
from streams.evaluate_command import HTML_STYLE, forest_svg, weights_svg

DEFAULT_BOOTSTRAP = 1000
"""Bootstrap resamples of the BTS estimates' intervals unless --bootstrap says otherwise."""
DEFAULT_N_SIM = 100_000
"""Monte Carlo draws of the BTS ranking distribution (as bench/obd.py)."""
VS_NOTE = (
    "vs BTS / vs random: the whole 95% interval lies above or below that logged policy's "
    "on-policy click rate, or contains it (n.s., not significant)"
)
"""What the comparison columns of the learned policies' table mean."""
CITATION = (
    "Saito, Aihara, Matsutani, Narita, Open Bandit Dataset and Pipeline: Towards Realistic and "
    "Reproducible Off-Policy Evaluation, NeurIPS 2021 Datasets and Benchmarks (CC BY 4.0)"
)


def run_evaluate_obd(
    console: Console,
    data: Path,
    *,
    limit: int | None = None,
    n_sim: int = DEFAULT_N_SIM,
    bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    html_path: Path | None = None,
) -> int:
    """The command: run the OBD check, print it, optionally write the HTML report; exit code."""
    if limit is not None and limit < 10:
        console.print("[red]--limit must be at least 10 rows[/red]")
        return 2
    if n_sim < 1 or bootstrap < 0:
        console.print("[red]--n-sim must be >= 1 and --bootstrap >= 0[/red]")
        return 2
    started = time.perf_counter()
    try:
        result = run(data, n_sim, seed, limit, bootstrap)
    except (ObdDataError, OSError) as exc:
        console.print(f"[red]cannot evaluate the Open Bandit Dataset sample:[/red] {exc}")
        return 2
    elapsed = time.perf_counter() - started
    print_obd(result, data, elapsed, console)
    if html_path is not None:
        html_path.parent.mkdir(parents=True, exist_ok=True)
        html_path.write_text(render_obd_html(result, data), encoding="utf-8")
        console.print(f"HTML report -> {html_path}")
    return 0


def _rel(e: Estimate, truth: float) -> str:
    """The relative error in percent, or "-" when the truth (BTS on-policy) had no click."""
    rel = relative_error(e, truth)
    return f"{100 * rel:.1f}%" if rel is not None else "-"


def _ess(e: Estimate) -> str:
    """The effective sample size, or "-" for estimates without importance weights."""
    return f"{e.ess:,.0f}" if e.ess is not None else "-"


def _vs(e: Estimate, value: float) -> str:
    """A table cell: the interval lies "above" or "below" a logged policy's value, or "n.s."."""
    where = compare(e, value)
    return where if where in ("above", "below") else "n.s."


def _learned_rows(result: ObdResult) -> list[list[str]]:
    """One row per learner and estimator, for both the terminal table and the HTML page."""
    truth, rnd = result.bts_value, result.random_value
    return [
        [
            label,
            name.upper(),
            pct(estimates[name].value),
            pct_interval(estimates[name]),
            _ess(estimates[name]),
            _vs(estimates[name], truth.value),
            _vs(estimates[name], rnd.value),
        ]
        for label, estimates in result.learned.items()
        for name in ESTIMATORS
    ]


def _percent(e: Estimate) -> Estimate:
    """The estimate in percent, interval cut at 0 as in the tables (the plots then read alike)."""
    return replace(e, value=100 * e.value, low=max(100 * e.low, 0.0), high=100 * e.high)


def _summary(result: ObdResult, data: Path) -> str:
    """One line: the sample and its size."""
    return (
        f"Open Bandit Dataset sample {data} (campaign all): {result.n_random:,} uniform-random "
        f"rounds ({result.clicks_random} clicks), {result.n_bts:,} Bernoulli Thompson sampling "
        f"(BTS) rounds ({result.clicks_bts} clicks), 80 items x 3 positions"
    )


def _bts_notes(result: ObdResult) -> str:
    """How the BTS estimates were made: weights, intervals, the Monte Carlo target."""
    ev = result.bts_offline
    intervals = (
        f"IPS, SNIPS, DR: percentile bootstrap ({result.bootstrap:,} resamples)"
        if result.bootstrap
        else "normal intervals"
    )
    return (
        f"Importance weights: ESS {ev.ess:,.0f} of {ev.n:,}, max weight {ev.max_weight:.1f}, "
        f"no clipping; {intervals}; DM: normal, with the reward model's fitting variance; target "
        f"by Monte Carlo from prior_bts.yaml ({result.n_sim:,} draws), "
        f"{100 * result.mc_vs_logged:.0f}% median difference from the BTS logger's propensities"
    )


def print_obd(result: ObdResult, data: Path, elapsed_s: float, console: Console) -> None:
    """Print both tables: BTS estimated off-policy, and Kairos' bandit against the logged policies."""
    truth = result.bts_value
    console.print(_summary(result, data))
    first = Table(title="BTS click rate estimated from the random logs vs its on-policy click rate")
    for column in ("estimator", "click rate", "95% interval", "relative error", "covers", "ESS"):
        first.add_column(column, justify="left" if column == "estimator" else "right")
    for name in ESTIMATORS:
        e = result.bts_offline.estimates[name]
        first.add_row(
            name.upper(),
            pct(e.value),
            pct_interval(e),
            _rel(e, truth.value),
            "yes" if e.covers(truth.value) else "no",
            _ess(e),
        )
    first.add_row("BTS on-policy (truth)", pct(truth.value), pct_interval(truth), "", "", "")
    rnd = result.random_value
    first.add_row("random on-policy", pct(rnd.value), pct_interval(rnd), "", "", "")
    console.print(first)
    console.print(_bts_notes(result) + ".")

    second = Table(
        title="Kairos' bandit trained on the random logs (other half of the week; replay)",
    )
    for column in (
        "policy",
        "estimator",
        "click rate",
        "95% interval",
        "ESS",
        "vs BTS",
        "vs random",
    ):
        second.add_column(column, justify="left" if column in ("policy", "estimator") else "right")
    for row in _learned_rows(result):
        second.add_row(*row)
    value, interval = replay_cells(result)
    second.add_row(
        "online epsilon-greedy",
        f"replay ({result.replay_kept} kept)",
        value,
        interval,
        "-",
        "",
        "",
    )
    second.add_row(
        "BTS (logged)", "on-policy", pct(truth.value), pct_interval(truth), f"{result.n_bts:,}"
    )
    second.add_row(
        "random (logged)", "on-policy", pct(rnd.value), pct_interval(rnd), f"{result.n_random:,}"
    )
    console.print(second)
    console.print(VS_NOTE + ".")
    console.print(verdict(result))
    console.print(f"Relative error = |estimate - truth| / truth; {elapsed_s:.1f} s.")


def _table_html(header: Sequence[str], rows: Sequence[Sequence[str]], labels: int = 1) -> str:
    """An HTML table with escaped cells; the first `labels` columns (names) left-aligned."""
    left = ' style="text-align:left"'

    def cells(tag: str, values: Sequence[str]) -> str:
        """One row's cells."""
        return "".join(
            f"<{tag}{left if i < labels else ''}>{html.escape(v)}</{tag}>"
            for i, v in enumerate(values)
        )

    body = "".join(f"<tr>{cells('td', row)}</tr>" for row in rows)
    return f"<table><tr>{cells('th', header)}</tr>{body}</table>"


def render_obd_html(result: ObdResult, data: Path) -> str:
    """A self-contained HTML page: both tables, forest plots and the importance weights."""
    truth, rnd = result.bts_value, result.random_value
    est = result.bts_offline.estimates
    first_rows = [
        [
            name.upper(),
            pct(est[name].value),
            pct_interval(est[name]),
            _rel(est[name], truth.value),
            "yes" if est[name].covers(truth.value) else "no",
            _ess(est[name]),
        ]
        for name in ESTIMATORS
    ]
    first_rows.append(["BTS on-policy (truth)", pct(truth.value), pct_interval(truth), "", "", ""])
    first_rows.append(["random on-policy", pct(rnd.value), pct_interval(rnd), "", "", ""])
    first_plot = [(n.upper(), _percent(est[n])) for n in ESTIMATORS]
    first_plot += [("BTS on-policy (truth)", _percent(truth)), ("random on-policy", _percent(rnd))]

    second_rows = _learned_rows(result)
    second_plot: list[tuple[str, Estimate]] = [
        (f"{label} {name.upper()}", _percent(estimates[name]))
        for label, estimates in result.learned.items()
        for name in ESTIMATORS
    ]
    value, interval = replay_cells(result)
    second_rows.append(
        [
            "online epsilon-greedy",
            f"replay ({result.replay_kept} kept)",
            value,
            interval,
            "-",
            "",
            "",
        ]
    )
    second_rows.append(
        [
            "BTS (logged)",
            "on-policy",
            pct(truth.value),
            pct_interval(truth),
            f"{result.n_bts:,}",
            "",
            "",
        ]
    )
    second_rows.append(
        [
            "random (logged)",
            "on-policy",
            pct(rnd.value),
            pct_interval(rnd),
            f"{result.n_random:,}",
            "",
            "",
        ]
    )
    second_plot += [("BTS on-policy", _percent(truth)), ("random on-policy", _percent(rnd))]
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    first_table = _table_html(
        ("estimator", "click rate", "95% interval", "relative error", "covers truth", "ESS"),
        first_rows,
    )
    second_table = _table_html(
        ("policy", "estimator", "click rate", "95% interval", "ESS", "vs BTS", "vs random"),
        second_rows,
        labels=2,
    )
    muted = ("BTS on-policy", "random on-policy")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Kairos off-policy evaluation: Open Bandit Dataset</title>
<style>{HTML_STYLE}</style></head><body>
<h1>Off-policy evaluation: Open Bandit Dataset</h1>
<p>{html.escape(_summary(result, data))}.</p>
<h2>1. The BTS policy's click rate estimated from the random logs</h2>
<p>Truth: the mean click in BTS's own logs, {pct(truth.value)} {pct_interval(truth)}
(dashed line). Relative error = |estimate &minus; truth| / truth.
{html.escape(_bts_notes(result))}.</p>
{first_table}
<h3>Estimates and intervals, click rate in %</h3>
{forest_svg(first_plot, muted=muted, reference=100 * truth.value)}
<h2>Importance weights of the BTS target</h2>{weights_svg(result.bts_offline.weights)}
<h2>2. Kairos' bandit trained on the random logs</h2>
<p>Per-item ridge models trained on one half of the week, evaluated on the other half (both
ways, pooled, normal 95% intervals); the target is the bandit's full distribution, exploration
included. Replay: Li et al. (2011) rejection sampling of the online epsilon-greedy learner.
{html.escape(VS_NOTE)}. Dashed line: BTS on-policy.</p>
{second_table}
<h3>Estimates and intervals, click rate in %</h3>
{forest_svg(second_plot, width=800, muted=muted, reference=100 * truth.value)}
<p>{html.escape(verdict(result))}</p>
<p>Data: {html.escape(CITATION)}. Generated {generated} by <code>kairos evaluate --obd</code>.</p>
</body></html>
"""

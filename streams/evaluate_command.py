"""`kairos evaluate`: off-policy value of a candidate policy on the logged decisions and rewards.

Input: the rewards topic (decisions joined with their rewards) or a file written by `kairos
export`. The candidate is the logged campaign's policy changed by any of: another campaign file
(its exploration, objective, costs and model), an exploration setting (`kind=softmax,
temperature=0.05`), and where its models come from: a snapshot file (the logged campaign's own
models, e.g. from the models topic) evaluates a fixed policy on every record; without one, fresh
models are trained on the oldest `train_share` of the records (in decision time order) and the
policy is evaluated on the rest, so that no record scores a policy fitted to it.

The report (terminal table and a self-contained HTML file with inline SVG plots) gives IPS,
SNIPS, DM and DR with 95% intervals and the effective sample size, and the logged policy's own
value and the holdout's, over the evaluated records.
"""

from __future__ import annotations

import html
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engine.bandit import ContextualBandit
from engine.campaign import NO_ACTION_ID, Campaign, ExplorationSpec, load_campaign
from engine.decide import build_bandit
from engine.evaluation import ESTIMATORS, Estimate, Evaluation, TargetPolicy, evaluate
from engine.evaluation import records_from_rewards as to_logged
from engine.policies import ExplorationConfig, ignored_parameters
from schemas.records import RewardRecord
from streams.campaign_files import resolve_campaigns
from streams.settings import Settings


@dataclass(frozen=True)
class Candidate:
    """The policy under evaluation and how it was built (for the report)."""

    bandit: ContextualBandit
    campaign: Campaign
    description: str


def parse_exploration(text: str) -> tuple[str, dict[str, float]]:
    """Parse `kind=softmax,temperature=0.05` (or just `softmax`) into a kind and parameters."""
    kind = ""
    params: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        key, sep, value = part.partition("=")
        if not sep:
            kind = key
        elif key.strip() == "kind":
            kind = value.strip()
        else:
            params[key.strip()] = float(value)
    if not kind:
        raise ValueError(f"exploration {text!r}: give a kind, e.g. kind=softmax,temperature=0.05")
    ExplorationConfig.from_params(kind, params)  # validate now, naming the field
    ignored = ignored_parameters(kind, params)
    if ignored is not None:  # it was echoed in the report as if it applied
        raise ValueError(f"exploration {text!r}: {ignored}")
    return kind, params


def load_records(settings: Settings, source: Path | None, timeout_s: float) -> list[RewardRecord]:
    """Reward records from an export file, or the whole rewards topic."""
    if source is not None:
        from streams.export_command import read_rewards_file

        return read_rewards_file(source)
    from streams.export_command import read_rewards

    rows, _ = read_rewards(settings, None, timeout_s)
    return [r for r, _ in rows]


def logged_campaign(settings: Settings, name: str) -> Campaign | None:
    """The logged campaign's definition among the configured campaigns, if it is there."""
    try:
        return next((c for c in resolve_campaigns(settings.campaigns) if c.name == name), None)
    except (OSError, ValueError):
        return None


def build_candidate(
    logged: Campaign,
    candidate_file: Path | None,
    exploration: str | None,
    snapshot: bytes | None,
    snapshot_key: bytes | None,
    train: Sequence[RewardRecord],
    seed: int,
) -> Candidate:
    """Build the candidate bandit: campaign file / exploration override; snapshot or trained."""
    campaign = load_campaign(candidate_file) if candidate_file is not None else logged
    parts = [f"campaign {campaign.name}" + (f" ({candidate_file})" if candidate_file else "")]
    if exploration is not None:
        kind, params = parse_exploration(exploration)
        campaign = replace(campaign, exploration=ExplorationSpec(kind, params))
        parts.append(f"exploration {exploration}")
    config = ExplorationConfig.from_params(campaign.exploration.kind, campaign.exploration.params)
    if snapshot is not None:
        bandit = ContextualBandit.restore(snapshot, snapshot_key)
        if config.kind == "thompson" and (
            bandit.exploration.kind != "thompson"
            or bandit.exploration.n_bootstrap != config.n_bootstrap
        ):
            raise ValueError("the snapshot has no bootstrap replicas for this thompson setting")
        bandit.exploration = config
        if campaign.objective == "uplift" and bandit.baseline_action is None:
            bandit.baseline_action = NO_ACTION_ID if NO_ACTION_ID in bandit.action_ids else None
        parts.append(f"models from the snapshot (version {bandit.version})")
    else:
        bandit = build_bandit(campaign, seed)
        arms = set(bandit.action_ids)
        for record in train:
            d = record.decision
            if not d.holdout and d.action_id in arms:
                bandit.learn(d.action_id, d.features, record.reward)
        parts.append(f"models trained on {len(train)} older records")
    parts.append(f"{config.kind} exploration")
    return Candidate(bandit, campaign, "; ".join(parts))


def target_policy(candidate: Candidate) -> TargetPolicy:
    """The candidate's full distribution over the actions a logged decision could take."""
    bandit = candidate.bandit
    arms = set(bandit.action_ids)
    campaign = candidate.campaign
    costs = {a.id: a.cost for a in campaign.actions}

    def policy(features: Mapping[str, float], actions: Sequence[str]) -> Mapping[str, float]:
        allowed = [a for a in actions if a in arms]
        if not allowed or allowed == [NO_ACTION_ID]:
            return {allowed[0] if allowed else actions[0]: 1.0}
        choice = bandit.choose(
            features, allowed, random.Random(0), costs=costs, objective=campaign.objective
        )
        return choice.probabilities

    return policy


@dataclass(frozen=True)
class Report:
    """An evaluation with the context a reader needs."""

    campaign: str
    candidate: str
    n_records: int
    n_train: int
    evaluation: Evaluation


def run_evaluate(
    settings: Settings,
    console: Console,
    *,
    source: Path | None = None,
    campaign_name: str | None = None,
    candidate_file: Path | None = None,
    exploration: str | None = None,
    snapshot_file: Path | None = None,
    train_share: float = 0.5,
    clip: float = 0.0,
    bootstrap: int = 0,
    seed: int = 0,
    html_path: Path | None = None,
    timeout_s: float = 10.0,
) -> int:
    """The command: load records, build the candidate, estimate, print and write the report."""
    try:
        records = load_records(settings, source, timeout_s)
    except (OSError, ValueError) as exc:  # a missing or malformed export file
        console.print(f"[red]cannot read the rewards log:[/red] {escape(str(exc))}")
        return 2
    names = sorted({r.decision.campaign for r in records})
    if not records:
        console.print("[red]the rewards log holds no reward records[/red]")
        return 2
    if campaign_name is None:
        if len(names) != 1:
            console.print(f"[red]give --campaign: the log has {names or 'no campaigns'}[/red]")
            return 2
        campaign_name = names[0]
    records = sorted(
        (r for r in records if r.decision.campaign == campaign_name),
        key=lambda r: (r.decision.decided_ts, r.decision.decision_id),
    )
    if not records:
        console.print(f"[red]no reward records of campaign {campaign_name!r}[/red]")
        return 2
    logged = logged_campaign(settings, campaign_name)
    if logged is None and candidate_file is None:
        console.print(
            f"[red]campaign {campaign_name!r} is not among the configured campaigns "
            "(KAIROS_CAMPAIGNS); give --candidate FILE[/red]"
        )
        return 2
    try:
        candidate_campaign = load_campaign(candidate_file) if candidate_file is not None else None
        snapshot = snapshot_file.read_bytes() if snapshot_file is not None else None
    except (OSError, ValueError) as exc:  # a missing file, an invalid candidate campaign
        console.print(f"[red]cannot evaluate:[/red] {escape(str(exc))}")
        return 2
    if candidate_campaign is not None and candidate_campaign.name != campaign_name:
        console.print(
            f"[yellow]note:[/yellow] candidate campaign {candidate_campaign.name!r} is evaluated "
            f"on the log of campaign {campaign_name!r}"
        )
    base = logged if logged is not None else candidate_campaign
    assert base is not None  # one of the two, checked above
    if snapshot is None:
        if not 0.0 < train_share < 1.0:
            console.print("[red]--train-share must be in (0, 1) without a snapshot[/red]")
            return 2
        cut = int(len(records) * train_share)
        train, test = records[:cut], records[cut:]
    else:
        train, test = [], records
    if not test:
        console.print("[red]no records left to evaluate[/red]")
        return 2
    key = settings.snapshot_key.encode() if settings.snapshot_key else None
    try:
        candidate = build_candidate(base, candidate_file, exploration, snapshot, key, train, seed)
        result = evaluate(
            to_logged(test), target_policy(candidate), clip=clip, bootstrap=bootstrap, seed=seed
        )
    except ValueError as exc:
        console.print(f"[red]cannot evaluate:[/red] {exc}")
        return 2
    report = Report(campaign_name, candidate.description, len(records), len(train), result)
    print_report(report, console)
    if html_path is not None:
        html_path.parent.mkdir(parents=True, exist_ok=True)
        html_path.write_text(render_html(report))
        console.print(f"HTML report -> {html_path}")
    return 0


# ---- the terminal report ----------------------------------------------------------------------


def _rows(ev: Evaluation) -> list[tuple[str, Estimate]]:
    """Report rows: the four estimators, then the logged policy and the holdout."""
    rows = [(name.upper(), ev.estimates[name]) for name in ESTIMATORS]
    rows.append(("logged policy (on-policy)", ev.logged))
    if ev.holdout is not None:
        rows.append(("holdout (no action)", ev.holdout))
    return rows


def print_report(report: Report, console: Console) -> None:
    """Print the estimates as a rich table with the weights' diagnostics."""
    ev = report.evaluation
    table = Table(title=f"Off-policy evaluation: {report.campaign}")
    for column in ("estimator", "value", f"{ev.level:.0%} interval", "std err", "ESS", "interval"):
        table.add_column(column, justify="left" if column == "estimator" else "right")
    for label, e in _rows(ev):
        table.add_row(
            label,
            f"{e.value:.5g}",
            f"[{e.low:.5g}, {e.high:.5g}]",
            f"{e.std_error:.3g}",
            f"{e.ess:,.0f}" if e.ess is not None else "-",
            e.interval,
        )
    console.print(f"candidate: {report.candidate}")
    console.print(
        f"records: {report.n_records} ({report.n_train} for training, {ev.n} evaluated"
        f"{', ' + str(ev.holdout.n) + ' holdout' if ev.holdout else ''}); "
        f"min propensity {ev.min_propensity:.4g}, max weight {ev.max_weight:.4g}, "
        f"ESS {ev.ess:,.0f}, clip {ev.clip:g} ({ev.n_clipped} clipped)"
    )
    console.print(table)
    console.print(VALUE_MEANING, markup=False)


#: What the value column is, printed under the table (QA: a candidate's own costs, [reward] and
#: objective changed nothing in the estimates, and nothing said so).
VALUE_MEANING = (
    "value: mean reward per decision, as logged (the logging campaign's reward definition, "
    "costs not subtracted). A candidate changes which action each logged context gets (arms, "
    "rules, guardrails, costs and objective in its scores, exploration, model), not how an "
    "outcome is scored: its own [reward] table is not applied."
)


# ---- the HTML report --------------------------------------------------------------------------

HTML_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:60em}\n"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}\n"
    "td:first-child{text-align:left}"
)
"""The reports' stylesheet (inline: the pages are self-contained)."""


def forest_svg(
    rows: Sequence[tuple[str, Estimate]],
    width: int = 640,
    muted: tuple[str, ...] = ("logged", "holdout"),
    reference: float | None = None,
) -> str:
    """Estimates as points with interval bars on a shared axis (inline SVG).

    Rows whose label starts with one of `muted` are drawn grey (the logged policies, not the
    estimates); `reference` draws a dashed vertical line (e.g. a known true value).
    """
    finite = [v for _, e in rows for v in (e.low, e.high, e.value) if math.isfinite(v)]
    if reference is not None:
        finite.append(reference)
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    pad = (hi - lo) * 0.05
    lo, hi = lo - pad, hi + pad
    left = max(190, 10 + 7 * max((len(label) for label, _ in rows), default=0))
    right, row_h = 20, 28
    height = row_h * len(rows) + 40

    def x(v: float) -> float:
        v = min(max(v, lo), hi)
        return left + (v - lo) / (hi - lo) * (width - left - right)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">']
    for i in range(6):
        v = lo + (hi - lo) * i / 5
        parts.append(
            f'<line x1="{x(v):.1f}" y1="10" x2="{x(v):.1f}" y2="{height - 25}" stroke="#eee"/>'
            f'<text x="{x(v):.1f}" y="{height - 8}" font-size="11" text-anchor="middle">'
            f"{v:.3g}</text>"
        )
    if reference is not None:
        parts.append(
            f'<line x1="{x(reference):.1f}" y1="10" x2="{x(reference):.1f}" y2="{height - 25}" '
            'stroke="#c0392b" stroke-dasharray="4 3"/>'
        )
    for i, (label, e) in enumerate(rows):
        y = 25 + i * row_h
        color = "#888" if label.startswith(muted) else "#1f5fa8"
        parts.append(
            f'<text x="{left - 10}" y="{y + 4}" font-size="12" text-anchor="end">'
            f"{html.escape(label)}</text>"
            f'<line x1="{x(e.low):.1f}" y1="{y}" x2="{x(e.high):.1f}" y2="{y}" '
            f'stroke="{color}" stroke-width="2"/>'
            f'<circle cx="{x(e.value):.1f}" cy="{y}" r="4" fill="{color}"/>'
        )
    parts.append("</svg>")
    return "".join(parts)


def weights_svg(weights: Sequence[float], width: int = 640, bins: int = 30) -> str:
    """Histogram of log10 importance weights (zero weights counted apart), inline SVG."""
    positive = [math.log10(w) for w in weights if w > 0.0]
    zeros = len(weights) - len(positive)
    height = 180
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">']
    if positive:
        lo, hi = min(positive), max(positive)
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        counts = [0] * bins
        for v in positive:
            counts[min(int((v - lo) / (hi - lo) * bins), bins - 1)] += 1
        top = max(counts)
        bar_w = (width - 60) / bins
        for i, c in enumerate(counts):
            h = (height - 50) * c / top
            parts.append(
                f'<rect x="{40 + i * bar_w:.1f}" y="{height - 30 - h:.1f}" '
                f'width="{bar_w - 1:.1f}" height="{h:.1f}" fill="#1f5fa8"/>'
            )
        parts.append(
            f'<text x="40" y="{height - 12}" font-size="11">10^{lo:.2f}</text>'
            f'<text x="{width - 20}" y="{height - 12}" font-size="11" text-anchor="end">'
            f"10^{hi:.2f}</text>"
        )
    parts.append(
        f'<text x="40" y="15" font-size="12">importance weights pi/p (log scale); '
        f"{zeros} records with weight 0</text></svg>"
    )
    return "".join(parts)


def render_html(report: Report) -> str:
    """A self-contained HTML page: summary, table, forest plot and weight histogram."""
    ev = report.evaluation
    rows = _rows(ev)
    body = "".join(
        f"<tr><td>{html.escape(label)}</td><td>{e.value:.5g}</td>"
        f"<td>[{e.low:.5g}, {e.high:.5g}]</td><td>{e.std_error:.3g}</td>"
        f"<td>{f'{e.ess:,.0f}' if e.ess is not None else '-'}</td><td>{e.interval}</td></tr>"
        for label, e in rows
    )
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Kairos off-policy evaluation: {html.escape(report.campaign)}</title>
<style>{HTML_STYLE}</style></head><body>
<h1>Off-policy evaluation: {html.escape(report.campaign)}</h1>
<p>Candidate: {html.escape(report.candidate)}.<br>
Records: {report.n_records} ({report.n_train} for training, {ev.n} evaluated
{f", {ev.holdout.n} holdout" if ev.holdout else ""}). Smallest logged propensity
{ev.min_propensity:.4g}; largest weight {ev.max_weight:.4g}; effective sample size
{ev.ess:,.0f}; propensity clip {ev.clip:g} ({ev.n_clipped} records clipped).</p>
<table><tr><th>estimator</th><th>value</th><th>{ev.level:.0%} interval</th><th>std err</th>
<th>ESS</th><th>interval</th></tr>{body}</table>
<h2>Estimates and intervals</h2>{forest_svg(rows)}
<h2>Importance weights</h2>{weights_svg(ev.weights)}
<p>{html.escape(VALUE_MEANING)}</p>
<p>IPS: mean of w&middot;r with w = &pi;(a|x)/p. SNIPS: &Sigma;w&middot;r / &Sigma;w. DM: per-action
ridge reward model, cross-fitted; its interval includes the model's fitting variance. DR: DM plus
the weighted residual of the logged action. "normal" intervals use the per-record terms;
"bootstrap" are percentile intervals over records. ESS = (&Sigma;w)&sup2; / &Sigma;w&sup2;.
Generated {generated} by <code>kairos evaluate</code>.</p>
</body></html>
"""

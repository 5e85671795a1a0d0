"""Figures of a simulation and its self-contained HTML report (inline SVG, no plotting library).

Pure: `summarize()` turns runs into numbers, `render_html()` into a string; writing files and
printing tables is the caller's job (streams/simulate_command.py, bench/simulation.py).
"""

from __future__ import annotations

import html
import math
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from engine.campaign import NO_ACTION_ID
from engine.simulator.loop import DecisionLog, Run

__all__ = [
    "Lift",
    "PersonaRow",
    "PolicySummary",
    "holdout_lift",
    "persona_rows",
    "render_html",
    "summarize",
]

PALETTE: Final[tuple[str, ...]] = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#17becf",
    "#bcbd22",
)
Z95: Final[float] = 1.959963984540054


@dataclass(frozen=True, slots=True)
class Lift:
    """Mean net reward per customer, treated minus holdout, with a 95% (Welch, normal) interval."""

    treated_mean: float
    holdout_mean: float
    diff: float
    low: float
    high: float
    treated_n: int
    holdout_n: int

    @property
    def relative(self) -> float:
        """The lift as a fraction of the holdout mean (nan when that is 0)."""
        return self.diff / self.holdout_mean if self.holdout_mean else math.nan


@dataclass(frozen=True, slots=True)
class PolicySummary:
    """A run's totals: exact expected values and the realized reward."""

    policy: str
    decisions: int
    expected: float
    """Sum of the chosen actions' expected net rewards."""
    incremental: float
    """Sum of expected net reward over no-action on the same decisions."""
    oracle_incremental: float
    """What the best allowed action would have added on the same decisions."""
    regret: float
    realized: float
    lift: Lift
    days: float
    messages: int


@dataclass(frozen=True, slots=True)
class PersonaRow:
    """What a policy chose for one persona, against what the oracle would have chosen."""

    persona: str
    decisions: int
    offers: dict[str, float]
    oracle_offers: dict[str, float]
    preferred_channel: float
    """Share of messages sent on the customer's preferred channel."""
    evening: float
    """Share of messages deferred to the evening."""
    incremental: float
    oracle_incremental: float
    top_action: str
    oracle_top_action: str
    extra: dict[str, float] = field(default_factory=dict)


def _mean_var(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample variance (0 for fewer than two values)."""
    if not xs:
        return 0.0, 0.0
    mean = statistics.fmean(xs)
    return mean, statistics.variance(xs) if len(xs) > 1 else 0.0


def holdout_lift(run: Run) -> Lift:
    """Per-customer net reward of treated vs holdout customers (every customer counts, even idle)."""
    totals = [0.0] * len(run.personas)
    for d in run.log:
        totals[d.customer] += d.realized
    treated = [t for t, h in zip(totals, run.holdout, strict=True) if not h]
    held = [t for t, h in zip(totals, run.holdout, strict=True) if h]
    mt, vt = _mean_var(treated)
    mh, vh = _mean_var(held)
    se = math.sqrt((vt / len(treated) if treated else 0.0) + (vh / len(held) if held else 0.0))
    diff = mt - mh
    return Lift(mt, mh, diff, diff - Z95 * se, diff + Z95 * se, len(treated), len(held))


#: Fewer holdout customers than this, and the lift is mostly who happens to be in the holdout.
SMALL_HOLDOUT: int = 100


def lift_caveat(summaries: Sequence[PolicySummary]) -> str | None:
    """A warning to print under the lift column when it cannot carry the comparison, or None.

    The lift compares different customers (the treated and the holdout), so with a small holdout
    it is dominated by who is in it: QA saw the never-acting policy show +0.476 per customer (its
    true lift is 0) while Kairos's exact incremental reward was negative. The no-action row's lift
    is the measure of that noise, and `incremental` (exact, the same decisions) is the comparison.
    """
    if not summaries:
        return None
    held = summaries[0].lift.holdout_n
    nothing = next((x for x in summaries if x.policy == "no action"), None)
    small = held < SMALL_HOLDOUT
    noisy = nothing is not None and not nothing.lift.low <= 0.0 <= nothing.lift.high
    if not (small or noisy):
        return None
    reference = (
        f"; the no-action policy, whose true lift is 0, shows {nothing.lift.diff:+.3f}"
        if nothing is not None
        else ""
    )
    return (
        f"The holdout is {held:,} customers and the lift compares them with other customers"
        f"{reference}: read `incremental` (the exact expected gain over doing nothing, on the "
        "same decisions) to compare policies."
    )


def summarize(run: Run) -> PolicySummary:
    """Totals of one run."""
    log = run.log
    return PolicySummary(
        policy=run.policy,
        decisions=len(log),
        expected=sum(d.chosen for d in log),
        incremental=sum(d.chosen - d.baseline for d in log),
        oracle_incremental=sum(d.best - d.baseline for d in log),
        regret=sum(d.best - d.chosen for d in log),
        realized=sum(d.realized for d in log),
        lift=holdout_lift(run),
        days=run.simulated_days,
        messages=sum(1 for d in log if d.action_id != NO_ACTION_ID),
    )


def _offer(action_id: str) -> str:
    """The offer of an action id (channel:offer:message:slot), "no action" for no-action."""
    parts = action_id.split(":")
    return parts[1] if len(parts) == 4 else "no action"


def _shares(counter: Counter[str], n: int) -> dict[str, float]:
    """Counts as shares of n, largest first."""
    return {k: v / n for k, v in counter.most_common()} if n else {}


def persona_rows(run: Run, from_share: float = 0.5) -> list[PersonaRow]:
    """Per persona, what the policy chose on its own (non-forced) decisions in the run's tail."""
    tail = run.log[int(len(run.log) * from_share) :]
    rows: list[PersonaRow] = []
    for persona in sorted({d.persona for d in tail}):
        ds = [d for d in tail if d.persona == persona and d.reason == "policy"]
        n = len(ds)
        messages = [d for d in ds if d.action_id != NO_ACTION_ID]
        rows.append(
            PersonaRow(
                persona=persona,
                decisions=n,
                offers=_shares(Counter(_offer(d.action_id) for d in ds), n),
                oracle_offers=_shares(Counter(_offer(d.best_action) for d in ds), n),
                preferred_channel=(
                    sum(d.preferred_channel for d in messages) / len(messages) if messages else 0.0
                ),
                evening=(
                    sum(d.action_id.endswith(":evening") for d in messages) / len(messages)
                    if messages
                    else 0.0
                ),
                incremental=sum(d.chosen - d.baseline for d in ds),
                oracle_incremental=sum(d.best - d.baseline for d in ds),
                top_action=Counter(d.action_id for d in ds).most_common(1)[0][0] if ds else "-",
                oracle_top_action=(
                    Counter(d.best_action for d in ds).most_common(1)[0][0] if ds else "-"
                ),
            )
        )
    return rows


# ---- SVG ---------------------------------------------------------------------------------------


def _nice(x: float) -> str:
    """A compact axis label."""
    if abs(x) >= 1000:
        return f"{x / 1000:.0f}k" if abs(x) >= 10000 else f"{x / 1000:.1f}k"
    return f"{x:.2f}".rstrip("0").rstrip(".") if abs(x) < 10 else f"{x:.0f}"


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    title: str,
    x_label: str,
    y_label: str,
    width: int = 760,
    height: int = 320,
) -> str:
    """An SVG line chart of named (x, y) series with axes, ticks and a legend."""
    pad_l, pad_r, pad_t, pad_b = 64, 190, 28, 44
    points = [p for s in series.values() for p in s]
    if not points:
        return ""
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(0.0, *(p[1] for p in points)), max(0.0, *(p[1] for p in points))
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1
    pw, ph = width - pad_l - pad_r, height - pad_t - pad_b

    def sx(x: float) -> float:
        return pad_l + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return pad_t + (1 - (y - y0) / (y1 - y0)) * ph

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11">',
        f'<text x="{pad_l}" y="16" font-size="13" font-weight="bold">{html.escape(title)}</text>',
    ]
    for i in range(6):
        y = y0 + (y1 - y0) * i / 5
        out.append(
            f'<line x1="{pad_l}" x2="{pad_l + pw}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" '
            'stroke="#e5e5e5"/>'
            f'<text x="{pad_l - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{_nice(y)}</text>'
        )
        x = x0 + (x1 - x0) * i / 5
        out.append(
            f'<text x="{sx(x):.1f}" y="{pad_t + ph + 16}" text-anchor="middle">{_nice(x)}</text>'
        )
    out.append(
        f'<line x1="{pad_l}" x2="{pad_l + pw}" y1="{sy(0):.1f}" y2="{sy(0):.1f}" stroke="#999"/>'
        f'<text x="{pad_l + pw / 2}" y="{height - 6}" text-anchor="middle">'
        f"{html.escape(x_label)}</text>"
        f'<text x="14" y="{pad_t + ph / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {pad_t + ph / 2})">{html.escape(y_label)}</text>'
    )
    for i, (name, pts) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{path}"/>')
        ly = pad_t + 14 * i + 6
        out.append(
            f'<rect x="{pad_l + pw + 12}" y="{ly - 8}" width="12" height="3" fill="{color}"/>'
            f'<text x="{pad_l + pw + 28}" y="{ly - 3}">{html.escape(name)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def stacked_chart(
    bins: Sequence[tuple[float, Mapping[str, float]]],
    title: str,
    x_label: str,
    width: int = 760,
    height: int = 300,
) -> str:
    """An SVG 100% stacked area chart of shares per bin (x, {category: share})."""
    pad_l, pad_r, pad_t, pad_b = 64, 190, 28, 44
    if not bins:
        return ""
    cats = sorted({c for _, shares in bins for c in shares})
    x0, x1 = bins[0][0], bins[-1][0]
    if x1 == x0:
        x1 = x0 + 1
    pw, ph = width - pad_l - pad_r, height - pad_t - pad_b

    def sx(x: float) -> float:
        return pad_l + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return pad_t + (1 - y) * ph

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11">',
        f'<text x="{pad_l}" y="16" font-size="13" font-weight="bold">{html.escape(title)}</text>',
    ]
    lower = [0.0] * len(bins)
    for i, cat in enumerate(cats):
        upper = [lo + shares.get(cat, 0.0) for lo, (_, shares) in zip(lower, bins, strict=True)]
        top = [f"{sx(x):.1f},{sy(u):.1f}" for (x, _), u in zip(bins, upper, strict=True)]
        bottom = [
            f"{sx(x):.1f},{sy(lo):.1f}"
            for (x, _), lo in reversed(list(zip(bins, lower, strict=True)))
        ]
        color = PALETTE[i % len(PALETTE)]
        out.append(
            f'<polygon fill="{color}" fill-opacity="0.85" points="{" ".join(top + bottom)}"/>'
        )
        ly = pad_t + 14 * i + 6
        out.append(
            f'<rect x="{pad_l + pw + 12}" y="{ly - 8}" width="12" height="10" fill="{color}"/>'
            f'<text x="{pad_l + pw + 28}" y="{ly + 1}">{html.escape(cat)}</text>'
        )
        lower = upper
    for i in range(6):
        y = i / 5
        out.append(
            f'<text x="{pad_l - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.0%}</text>'
            f'<text x="{sx(x0 + (x1 - x0) * i / 5):.1f}" y="{pad_t + ph + 16}" '
            f'text-anchor="middle">{_nice(x0 + (x1 - x0) * i / 5)}</text>'
        )
    out.append(
        f'<text x="{pad_l + pw / 2}" y="{height - 6}" text-anchor="middle">'
        f"{html.escape(x_label)}</text></svg>"
    )
    return "".join(out)


def cumulative(
    log: Sequence[DecisionLog], value: str, points: int = 200
) -> list[tuple[float, float]]:
    """Cumulative sum of a per-decision quantity, sampled at about `points` decisions."""
    step = max(1, len(log) // points)
    out: list[tuple[float, float]] = [(0.0, 0.0)]
    total = 0.0
    for i, d in enumerate(log, 1):
        if value == "incremental":
            total += d.chosen - d.baseline
        elif value == "regret":
            total += d.best - d.chosen
        elif value == "realized":
            total += d.realized
        else:
            total += d.chosen
        if i % step == 0 or i == len(log):
            out.append((float(i), total))
    return out


def action_shares(
    log: Sequence[DecisionLog], key: str = "offer", bins: int = 20
) -> list[tuple[float, dict[str, float]]]:
    """Share of each offer (or channel) among the policy's own decisions, per bin of decisions."""
    own = [d for d in log if d.reason == "policy"]
    size = max(1, len(own) // bins)
    out: list[tuple[float, dict[str, float]]] = []
    for start in range(0, len(own) - size + 1, size):
        chunk = own[start : start + size]
        if key == "offer":
            names = Counter(_offer(d.action_id) for d in chunk)
        else:
            names = Counter(
                d.action_id.split(":")[0] if d.action_id != NO_ACTION_ID else "no action"
                for d in chunk
            )
        out.append((float(start + size), {k: v / len(chunk) for k, v in names.items()}))
    return out


# ---- HTML --------------------------------------------------------------------------------------

_CSS: Final[str] = """
body{font-family:-apple-system,Segoe UI,sans-serif;max-width:1000px;margin:24px auto;color:#222}
table{border-collapse:collapse;margin:12px 0;font-size:13px}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.note{color:#555;font-size:13px}.good{color:#2a7d2a}.bad{color:#b22}
"""


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.0%}"


def _shares_text(shares: Mapping[str, float], limit: int = 3) -> str:
    return ", ".join(f"{k} {v:.0%}" for k, v in list(shares.items())[:limit])


def render_html(
    runs: Sequence[Run],
    title: str,
    facts: Sequence[str],
    focus: str = "Kairos",
    oracle: str = "oracle",
    floor: str = "no action",
) -> str:
    """The self-contained report: summary table, lift, curves, action shares, persona table."""
    summaries = [summarize(r) for r in runs]
    by_name = {s.policy: s for s in summaries}
    focus_run = next((r for r in runs if r.policy == focus), runs[0])
    oracle_inc = by_name[oracle].incremental if oracle in by_name else math.nan
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<ul class='note'>" + "".join(f"<li>{html.escape(f)}</li>" for f in facts) + "</ul>",
        "<h2>Policies on the same customers and seed</h2>",
        "<table><tr><th>policy</th><th>decisions</th><th>messages</th>"
        "<th>expected net reward</th><th>incremental over no-action</th>"
        "<th>share of oracle's incremental</th><th>regret vs oracle (same decisions)</th>"
        "<th>realized net reward</th><th>holdout lift / customer [95% CI]</th></tr>",
    ]
    for s in summaries:
        share = s.incremental / oracle_inc if oracle_inc else math.nan
        parts.append(
            f"<tr><td>{html.escape(s.policy)}</td><td>{s.decisions:,}</td><td>{s.messages:,}</td>"
            f"<td>{s.expected:,.1f}</td><td>{s.incremental:,.1f}</td><td>{_pct(share)}</td>"
            f"<td>{s.regret:,.1f}</td><td>{s.realized:,.1f}</td>"
            f"<td>{s.lift.diff:+.3f} [{s.lift.low:+.3f}, {s.lift.high:+.3f}]</td></tr>"
        )
    parts.append("</table>")
    lift = summarize(focus_run).lift
    parts.append(
        f"<p>{html.escape(focus)}: treated customers ({lift.treated_n:,}) earned "
        f"{lift.treated_mean:.3f} net reward each, holdout customers ({lift.holdout_n:,}) "
        f"{lift.holdout_mean:.3f}: lift {lift.diff:+.3f} per customer, 95% CI "
        f"[{lift.low:+.3f}, {lift.high:+.3f}] (Welch, normal approximation), "
        f"relative {_pct(lift.relative)}.</p>"
    )
    caveat = lift_caveat([summarize(r) for r in runs])
    if caveat is not None:
        parts.append(f"<p><strong>Note:</strong> {html.escape(caveat)}</p>")
    series_inc = {r.policy: cumulative(r.log, "incremental") for r in runs}
    parts.append(
        line_chart(
            series_inc,
            "Cumulative expected incremental reward over no-action",
            "decisions",
            "net reward",
        )
    )
    series_reward = {r.policy: cumulative(r.log, "realized") for r in runs}
    parts.append(line_chart(series_reward, "Cumulative realized net reward", "decisions", "reward"))
    series_regret = {
        r.policy: cumulative(r.log, "regret") for r in runs if r.policy not in (oracle,)
    }
    parts.append(
        line_chart(
            series_regret,
            "Cumulative regret against the oracle (same decisions)",
            "decisions",
            "regret",
        )
    )
    parts.append(
        stacked_chart(
            action_shares(focus_run.log, "offer"),
            f"{focus}: offer share over time (own decisions)",
            "decisions",
        )
    )
    parts.append(
        stacked_chart(
            action_shares(focus_run.log, "channel"),
            f"{focus}: channel share over time (own decisions)",
            "decisions",
        )
    )
    parts.append(
        f"<h2>What {html.escape(focus)} chooses per hidden persona (second half of the run)</h2>"
        "<table><tr><th>persona</th><th>decisions</th><th>offers chosen</th>"
        "<th>oracle's offers</th><th>on preferred channel</th><th>evening</th>"
        "<th>incremental / oracle's</th><th>top action</th><th>oracle's top action</th></tr>"
    )
    for row in persona_rows(focus_run):
        parts.append(
            f"<tr><td>{html.escape(row.persona)}</td><td>{row.decisions:,}</td>"
            f"<td>{html.escape(_shares_text(row.offers))}</td>"
            f"<td>{html.escape(_shares_text(row.oracle_offers))}</td>"
            f"<td>{row.preferred_channel:.0%}</td><td>{row.evening:.0%}</td>"
            f"<td>{row.incremental:,.1f} / {row.oracle_incremental:,.1f}</td>"
            f"<td>{html.escape(row.top_action)}</td><td>{html.escape(row.oracle_top_action)}</td>"
            "</tr>"
        )
    parts.append("</table>")
    parts.append(
        "<p class='note'>Expected values are exact: the simulator knows each customer's hidden "
        "outcome probabilities, so 'expected net reward' sums the true expectation (reward minus "
        "cost) of each chosen action, and regret compares it with the best allowed action on the "
        f"same decision. The oracle is myopic (best action now, ignoring fatigue later). "
        f"Realized reward is what the sampled outcomes paid. '{html.escape(floor)}' is the "
        "floor every lift is measured from.</p></body></html>"
    )
    return "\n".join(parts)

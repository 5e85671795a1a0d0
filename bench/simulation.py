"""Simulation benchmark: does Kairos learn who wants what? Kairos vs baselines over 100,000 decisions.

Every policy runs the in-process closed loop (engine.simulator) on the same simulated customers
and seed, in parallel processes. Two starts are measured:

- cold start: every policy begins knowing nothing (the issue-5 figure);
- warm start: the policies that learn (Kairos, River's bandit) first learn, through their own
  `learn`, from the reward records of the shop's previous campaign (the 60 days before launch,
  uniformly random over the allowed actions; engine.simulator.loop, SimConfig.warm_start_days).
  The other policies do not learn, so their warm-start runs equal their cold-start ones and are
  not repeated; the best single action is already ranked on a separate random run with exact
  values (a perfect A/B test) and the oracle knows everything.

Writes the "Simulation (bench/simulation.py)" section of BENCHMARKS.md (keeping the notes below
its NOTES_MARKER line) and an HTML report under reports/.

    python bench/simulation.py [--decisions 100000] [--customers 5000] [--seed 0] [--no-write]
        [--jobs N] [--start cold|warm|both] [--warm-days 60]
        [--policies kairos,oracle]   (screening: a subset, never written to BENCHMARKS.md)
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import machine_line, replace_section
from engine.simulator.campaign import simulation_campaign
from engine.simulator.experiment import POLICY_NAMES, run_policy
from engine.simulator.loop import Run, SimConfig
from engine.simulator.report import PolicySummary, persona_rows, render_html, summarize

ROOT = Path(__file__).resolve().parent.parent
TITLE = "Simulation (bench/simulation.py)"
#: Policies that learn from reward records, hence the only ones a warm start changes.
LEARNING: Final[frozenset[str]] = frozenset({"kairos", "river"})
WARM: Final[str] = ", warm start"
#: The section's text from this line on is kept when the bench rewrites the section.
NOTES_MARKER: Final[str] = (
    "<!-- bench/simulation.py writes the section above this line; it keeps the notes below. -->"
)


def _run(args: tuple[str, SimConfig]) -> tuple[Run, float]:
    """Run one policy (in a worker process); return the run and its wall time."""
    name, config = args
    started = time.perf_counter()
    run = run_policy(name, simulation_campaign(), config)
    if config.warm_start_days > 0 and name in LEARNING:
        run.policy += WARM
    return run, time.perf_counter() - started


def _tail_capture(run: Run) -> float:
    """Share of the best allowed action's incremental reward on the run's second half."""
    tail = run.log[len(run.log) // 2 :]
    return sum(d.chosen - d.baseline for d in tail) / max(
        sum(d.best - d.baseline for d in tail), 1e-9
    )


def _persona_table(run: Run) -> list[str]:
    """What a run chose per persona on its second half, beside the oracle."""
    lines = [
        f"| persona ({run.policy}) | offers (2nd half) | oracle's offers | on preferred channel "
        "| incremental / oracle's |",
        "|---|---|---|---|---|",
    ]
    for row in persona_rows(run):
        lines.append(
            f"| {row.persona} | "
            + ", ".join(f"{k} {v:.0%}" for k, v in list(row.offers.items())[:3])
            + " | "
            + ", ".join(f"{k} {v:.0%}" for k, v in list(row.oracle_offers.items())[:2])
            + f" | {row.preferred_channel:.0%} | {row.incremental:,.0f} / "
            f"{row.oracle_incremental:,.0f} |"
        )
    return lines


def _goal_line(label: str, run: Run, kairos: PolicySummary, oracle: PolicySummary) -> str:
    """Goal 1 for one start."""
    capture = kairos.incremental / oracle.incremental
    met = "MET" if capture >= 0.8 else "NOT met"
    return (
        f"- Goal 1 ({label}), Kairos >= 80% of the oracle's incremental reward: **{met}** — "
        f"{capture:.0%} over the whole run ({kairos.incremental:,.0f} vs "
        f"{oracle.incremental:,.0f}); on the second half of Kairos' decisions, "
        f"{_tail_capture(run):.0%} of what the best allowed action would have added."
    )


def keep_notes(path: Path, body: str) -> str:
    """The body followed by the notes kept below NOTES_MARKER in the file's current section."""
    text = path.read_text() if path.exists() else ""
    match = re.search(rf"^## {re.escape(TITLE)}\n.*?(?=^## |\Z)", text, re.S | re.M)
    if match is None or NOTES_MARKER not in match.group(0):
        return body.rstrip() + "\n\n" + NOTES_MARKER + "\n"
    notes = match.group(0)[match.group(0).index(NOTES_MARKER) :]
    return body.rstrip() + "\n\n" + notes.rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run every policy, print the figures, write BENCHMARKS.md and the HTML report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=100_000)
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=0, help="processes (default: CPU count)")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--start",
        choices=("cold", "warm", "both"),
        default="both",
        help="cold start, warm start from the legacy logs (learning policies only; the others "
        "are the same either way), or both (the default; only both writes BENCHMARKS.md)",
    )
    parser.add_argument(
        "--warm-days",
        type=float,
        default=60.0,
        help="warm start: learn the legacy campaign's logs of the last this many days before "
        "launch (default 60, the whole legacy period)",
    )
    parser.add_argument(
        "--policies",
        default=",".join(POLICY_NAMES),
        help="comma-separated subset to screen (must include kairos and oracle; a subset never "
        "writes BENCHMARKS.md)",
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.policies.split(",") if n.strip()]
    unknown = set(names) - set(POLICY_NAMES)
    if unknown or not {"kairos", "oracle"} <= set(names):
        parser.error(f"--policies: known {', '.join(POLICY_NAMES)}; kairos and oracle needed")
    if args.start != "cold" and args.warm_days <= 0:
        parser.error("--warm-days must be > 0 for a warm start")
    names = [n for n in POLICY_NAMES if n in names]
    if len(names) < len(POLICY_NAMES) or args.start != "both":
        args.no_write = True
    cold = SimConfig(customers=args.customers, decisions=args.decisions, seed=args.seed)
    warm = replace(cold, warm_start_days=args.warm_days)
    jobs: list[tuple[str, SimConfig]] = []
    for name in names:
        if name not in LEARNING or args.start != "warm":
            jobs.append((name, cold))
        if name in LEARNING and args.start != "cold":
            jobs.append((name, warm))
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs or None) as pool:
        results = list(pool.map(_run, jobs))
    took = time.perf_counter() - started
    runs = [run for run, _ in results]
    summaries = {s.policy: s for s in (summarize(r) for r in runs)}
    by_policy = {r.policy: r for r in runs}
    oracle = summaries["oracle"]
    best = next((s for name, s in summaries.items() if name.startswith("best single")), None)
    command = (
        f"python bench/simulation.py --decisions {args.decisions} --customers {args.customers} "
        f"--seed {args.seed}"
    )
    if len(names) < len(POLICY_NAMES):
        command += f" --policies {','.join(names)}"
    if args.start != "both":
        command += f" --start {args.start}"
    if args.start != "cold" and args.warm_days != 60.0:
        command += f" --warm-days {args.warm_days:g}"
    rows = [
        "| policy | decisions | legacy records learned | incremental over no-action | "
        "of oracle's | regret (same decisions) | realized net reward | "
        "holdout lift / customer [95% CI] | run time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (run, secs), s in zip(results, (summarize(r) for r in runs), strict=True):
        rows.append(
            f"| {s.policy} | {s.decisions:,} | {run.warm_learned:,} | {s.incremental:,.1f} | "
            f"{s.incremental / oracle.incremental:.0%} | {s.regret:,.1f} | {s.realized:,.1f} | "
            f"{s.lift.diff:+.3f} [{s.lift.low:+.3f}, {s.lift.high:+.3f}] | {secs:.0f} s |"
        )
    goals: list[str] = []
    persona_lines: list[str] = []
    for label, policy in (("cold start", "Kairos"), ("warm start", "Kairos" + WARM)):
        if policy in by_policy:
            goals.append(_goal_line(label, by_policy[policy], summaries[policy], oracle))
            persona_lines += [*_persona_table(by_policy[policy]), ""]
    for policy in ("Kairos", "Kairos" + WARM):
        if best is not None and policy in summaries:
            ratio = (
                summaries[policy].incremental / best.incremental
                if best.incremental > 0
                else float("inf")
            )
            goals.append(
                f"- Goal 2 ({'warm' if WARM in policy else 'cold'} start), Kairos >= 1.5x the "
                f"best single action's incremental reward: "
                f"**{'MET' if ratio >= 1.5 else 'NOT met'}** — {ratio:.2f}x ({best.policy}: "
                f"{best.incremental:,.0f})."
            )
    legacy = runs[0].legacy_decisions
    warm_runs = [r for r in runs if r.warm_learned]
    learned = warm_runs[0].warm_learned if warm_runs else 0
    body = "\n".join(
        [
            f"Command: `{command}` ({len(jobs)} runs, "
            f"{min(args.jobs or os.cpu_count() or 1, len(jobs))} processes at a time, "
            f"took {took:.0f} s).",
            machine_line(),
            "",
            f"{args.customers:,} simulated customers (6 hidden personas), campaign "
            "`simulated_nudge` (engine/simulator/campaign.py: 20 arms + no-action, uplift, "
            "the factored model on a short list of context features plus the purchase rate "
            "crossed with the trigger type, with its message blocks "
            "also scaled by P(the action's channel is the customer's most opened), squarecb "
            "with gamma 100: settings chosen on this simulator with seeds 0-2; no policy "
            "messages a channel the customer unsubscribed from), 60 days of pre-launch history "
            f"under a uniformly random legacy campaign ({legacy:,} legacy decisions), then each "
            f"policy decides until {args.decisions:,} decisions, its own closed loop, same "
            "population and seed. Values are the exact hidden expected net rewards (reward - "
            "cost); 'incremental' is over no-action on the same decisions. Best single action: "
            "ranked on a separate uniformly random exploration run (seed + 10,000) by exact "
            "mean incremental value (a perfect A/B test). The oracle is myopic.",
            "",
            "Cold start: every policy starts knowing nothing. Warm start "
            f"(`SimConfig.warm_start_days = {args.warm_days:g}`): before launch the policies "
            "that learn (Kairos, River's bandit) learn, through their own `learn`, from the "
            f"legacy campaign's reward records of the last {args.warm_days:g} days that closed "
            f"before launch ({learned:,} records, holdout and guardrail-forced no-actions "
            "included, unweighted: the logging policy is uniformly random over the allowed "
            "actions and the model regresses the reward on context and action, so no "
            "propensity weighting is needed). The other policies do not learn, so the warm "
            "start changes nothing for them (the oracle's figure is the same); the best single "
            "action already uses more than these logs (exact values on a separate random run)."
            if args.start != "cold"
            else "Cold start only.",
            "",
            *goals,
            "",
            *rows,
            "",
            *persona_lines,
        ]
    )
    print(body)
    report = ROOT / "reports" / f"simulation-bench-seed{args.seed}.html"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(render_html(runs, "Kairos simulation benchmark", [command]), encoding="utf-8")
    print("report:", report)
    if not args.no_write:
        path = ROOT / "BENCHMARKS.md"
        replace_section(path, TITLE, keep_notes(path, body))
        print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`kairos learn`: teach the campaigns' models from a rewards log before launch (a warm start).

A shop rarely starts from nothing: its previous campaign's decisions and their outcomes are a log
of exactly what the models learn from. Replayed in the order the rewards were joined, through the
worker's own rule (engine.decide.learn: chosen action, logged context, reward; holdouts teach an
uplift baseline), they give the models the worker would have had, and the snapshots go to the
models topic, where a starting worker loads the newest (streams.model_store). The log must hold
Kairos reward records (`kairos export` writes them); the campaign's arms must match.

Run it before the workers start: a running worker keeps its own models and publishes them over
these at its next snapshot.
"""

from __future__ import annotations

from pathlib import Path

from confluent_kafka import Producer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engine.decide import CampaignRuntime
from streams.campaign_files import resolve_campaigns
from streams.evaluate_command import load_records
from streams.learner import publish_newer
from streams.model_store import snapshot_key_bytes
from streams.settings import Settings
from streams.topics import producer_config


def run_learn(
    settings: Settings,
    console: Console,
    source: Path | None,
    output: Path | None,
    timeout_s: float,
) -> int:
    """Learn the log, then publish the snapshots (or write them under `output`); an exit code."""
    campaigns = resolve_campaigns(settings.campaigns)
    runtimes = {c.name: CampaignRuntime.from_campaign(c) for c in campaigns}
    try:
        records = sorted(load_records(settings, source, timeout_s), key=lambda r: r.joined_ts)
    except (OSError, ValueError) as exc:  # a missing or malformed export file
        console.print(f"[red]cannot read the rewards log:[/red] {escape(str(exc))}")
        return 2
    learned = dict.fromkeys(runtimes, 0)
    skipped: dict[str, int] = {}
    for record in records:
        runtime = runtimes.get(record.decision.campaign)
        if runtime is not None and runtime.learn(record):
            learned[runtime.campaign.name] += 1
        else:
            skipped[record.decision.campaign] = skipped.get(record.decision.campaign, 0) + 1
    table = Table(title=f"Read {len(records):,} reward records")  # the learned: per campaign
    for column in ("campaign", "learned", "model version", "snapshot"):
        table.add_column(column)
    key = snapshot_key_bytes(settings)
    for name, runtime in runtimes.items():
        where = "-"
        if learned[name] and output is not None:
            output.mkdir(parents=True, exist_ok=True)
            path = output / f"{name}.snapshot"
            path.write_bytes(runtime.bandit.snapshot(key=key))
            where = str(path)
        elif learned[name]:
            where = settings.topics.models
        table.add_row(name, f"{learned[name]:,}", str(runtime.bandit.version), where)
    if output is None and any(learned.values()):
        producer = Producer(producer_config(settings))
        publish_newer(settings, producer, runtimes, {}, key)
    console.print(table)
    if skipped:
        console.print(
            "Not learned: "
            + ", ".join(f"{n:,} of {name}" for name, n in sorted(skipped.items()))
            + " (another campaign, an unknown arm, or a holdout of a campaign without baseline)"
        )
    if not any(learned.values()):
        console.print("[red]nothing learned: no record of the configured campaigns[/red]")
        return 1
    return 0

"""The `kairos` command line: run a worker, create topics, watch topics, run the demo."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from streams.settings import Settings

app = typer.Typer(
    name="kairos",
    help="Kairos: a streaming real-time decision engine (Kafka + Faust + online contextual bandits).",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(emoji=False, highlight=False)
err = Console(stderr=True, emoji=False)


def _settings(**overrides: object) -> Settings:
    """Settings from the environment and KAIROS_CONFIG, with the command's options on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]


@app.command()
def worker(
    campaign: Annotated[
        list[str] | None,
        typer.Option(
            "--campaign",
            "-c",
            help="Campaign TOML file, a directory of them, or builtin:<name>. Repeatable.",
        ),
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="RocksDB table directory.")] = None,
    web_port: Annotated[
        int | None, typer.Option(help="Port of health, metrics and dashboard.")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warn or error.")] = None,
) -> None:
    """Run a worker: consume events and outcomes, decide, and learn, until stopped (SIGTERM/Ctrl-C)."""
    from streams.runner import run_worker

    settings = _settings(
        campaigns=campaign or None, data_dir=data_dir, web_port=web_port, log_level=log_level
    )
    run_worker(settings)


@app.command()
def learner(
    campaign: Annotated[
        list[str] | None,
        typer.Option("--campaign", "-c", help="Campaign files (the workers' set). Repeatable."),
    ] = None,
    max_idle: Annotated[
        float | None, typer.Option(help="Stop after this many seconds without a reward.")
    ] = None,
) -> None:
    """Learn from the rewards topic and publish model snapshots (for KAIROS_LEARNING=remote workers)."""
    from streams.campaign_files import resolve_campaigns
    from streams.learner import run_learner
    from streams.logs import configure_logging

    settings = _settings(campaigns=campaign or None)
    configure_logging(settings.log_level)
    versions = run_learner(settings, resolve_campaigns(settings.campaigns), max_idle)
    for name, version in versions.items():
        console.print(f"{name}: model version {version}")


@app.command()
def topics(
    create: Annotated[bool, typer.Option("--create/--list", help="Create missing topics.")] = True,
) -> None:
    """Create Kairos' topics with their configured partition counts (idempotent) and list them."""
    from streams.topics import ensure_topics

    counts = ensure_topics(_settings())
    for name, partitions in counts.items():
        console.print(f"{name}\t{partitions} partitions")


@app.command()
def tail(
    topic: Annotated[
        str,
        typer.Argument(help="decisions, rewards, dlq, events, outcomes, models, or a topic name."),
    ] = "decisions",
    from_beginning: Annotated[
        bool, typer.Option("--from-beginning", help="Start at the oldest record.")
    ] = False,
    max_records: Annotated[int | None, typer.Option("--max", help="Stop after N records.")] = None,
    idle_timeout: Annotated[
        float | None, typer.Option(help="Stop after this many seconds without a record.")
    ] = None,
    raw: Annotated[bool, typer.Option("--json", help="Print raw JSON lines.")] = False,
) -> None:
    """Print a Kairos topic for people (the action topic by default)."""
    from streams.tail import tail_topic

    tail_topic(_settings(), topic, from_beginning, max_records, idle_timeout, raw, console)


@app.command()
def demo(
    customers: Annotated[int, typer.Option(help="Synthetic customers to feed.")] = 60,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 90.0,
) -> None:
    """Start a worker against the local broker, feed synthetic customers, print the decisions."""
    from streams.demo import run_demo

    code = run_demo(_settings(), customers=customers, timeout_s=timeout, console=console)
    raise typer.Exit(code)


@app.command()
def campaigns(
    path: Annotated[
        list[str] | None, typer.Argument(help="Campaign files, directories or builtin:<name>.")
    ] = None,
) -> None:
    """Validate campaign files and show their actions, guardrails and reward definition."""
    from streams.campaign_files import resolve_campaigns

    refs = path or _settings().campaigns
    try:
        loaded = resolve_campaigns(refs)
    except Exception as exc:  # a bad campaign is reported, not a traceback
        err.print(f"[red]invalid campaign:[/red] {exc}")
        raise typer.Exit(1) from exc
    for c in loaded:
        console.print(
            f"[bold]{c.name}[/bold] triggers={list(c.triggers)} actions={len(c.actions)} "
            f"objective={c.objective}"
        )


def main() -> None:
    """Entry point for `python -m streams.cli`."""
    logging.basicConfig(level=logging.WARNING)
    app()


if __name__ == "__main__":
    main()

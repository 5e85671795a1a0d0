"""The `kairos` command line: run a worker, create topics, watch topics, run the demo."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from streams.settings import Settings

if TYPE_CHECKING:
    from engine.campaign import Campaign

app = typer.Typer(
    name="kairos",
    help="Kairos: a streaming real-time decision engine (Kafka + online contextual bandits).",
    no_args_is_help=True,
    add_completion=False,
)
# soft_wrap: a line longer than the terminal (or than 80 columns in a pipe or a file) stays one
# line, so `kairos tail > file`, grep and log collectors see one record or message per line.
console = Console(emoji=False, highlight=False, soft_wrap=True)
err = Console(stderr=True, emoji=False, soft_wrap=True)


#: The rewards log a command reads: an export file, or (None) the rewards topic itself.
RewardsLogOption = Annotated[
    Path | None,
    typer.Option("--input", "-i", help="File from `kairos export` (default: the rewards topic)."),
]


def _settings(**overrides: object) -> Settings:
    """Settings from the environment and KAIROS_CONFIG, with the command's options on top.

    Invalid settings end the command with one line per problem and exit code 2, not a traceback.
    """
    import os
    import tomllib

    from pydantic import ValidationError

    from streams.settings import CONFIG_FILE_ENV, unknown_variables

    for variable, close in unknown_variables(os.environ):  # a typo would otherwise do nothing
        hint = f" (did you mean {close}?)" if close else ""
        typer.echo(f"warning: {variable} is not a Kairos setting, ignored{hint}", err=True)
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        for error in exc.errors():
            where = "__".join(str(part) for part in error["loc"]).upper()
            # A check across several settings names none of them (its message does).
            name = f"setting KAIROS_{where}" if where else "settings"
            typer.echo(f"invalid {name}: {error['msg']}", err=True)
        raise typer.Exit(2) from None
    except FileNotFoundError as exc:  # KAIROS_CONFIG names no file
        typer.echo(f"invalid settings: {exc}", err=True)
        raise typer.Exit(2) from None
    except tomllib.TOMLDecodeError as exc:
        typer.echo(f"invalid settings: {CONFIG_FILE_ENV} is not valid TOML: {exc}", err=True)
        raise typer.Exit(2) from None


def _fail(label: str, exc: BaseException) -> None:
    """Print a command's one-line error: the exception's text escaped, as Rich would read
    `[a-z]` in a pattern, or a `[/b]` in a campaign value, as markup (mangled, or a crash)."""
    err.print(f"[red]{label}:[/red] {escape(str(exc))}", highlight=False)


def _campaigns(references: list[str]) -> list[Campaign]:
    """Load the campaigns, or end the command with one line naming the bad one and exit code 2."""
    from streams.campaign_files import resolve_campaigns

    try:
        return resolve_campaigns(references)
    except (ValueError, OSError) as exc:  # CampaignError, a missing file, repeated names
        _fail("invalid campaign", exc)
        raise typer.Exit(2) from None


def _broker(settings: Settings, command: str) -> None:
    """Wait for the broker as a worker does (30 s), or end the command with one line, exit 2."""
    from streams.topics import TopicSetupError, existing_topics

    try:
        existing_topics(settings, settings.broker_wait_s)
    except TopicSetupError as exc:
        _fail(command, exc)
        raise typer.Exit(2) from None


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
    runtime: Annotated[
        str | None,
        typer.Option(help="rdkafka (the default) or faust; KAIROS_RUNTIME. See the README."),
    ] = None,
) -> None:
    """Run a worker: consume events and outcomes, decide, and learn, until stopped (SIGTERM/Ctrl-C)."""
    from streams.runner import run_worker

    settings = _settings(
        campaigns=campaign or None,
        data_dir=data_dir,
        web_port=web_port,
        log_level=log_level,
        runtime=runtime,
    )
    from streams.runner import DataDirError
    from streams.topics import TopicSetupError
    from streams.web_server import WebPortError

    _campaigns(settings.campaigns)  # a bad campaign is one line here, not a worker's traceback
    try:
        run_worker(settings)
    except (WebPortError, TopicSetupError, DataDirError) as exc:  # the setup's problems, not bugs
        _fail("worker", exc)
        raise typer.Exit(2) from None
    except Exception:  # anything else: one JSON log line (traceback in "exc"), not a Rich box
        logging.getLogger("kairos.worker").exception("worker failed")
        raise typer.Exit(1) from None


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
    from streams.learner import run_learner
    from streams.logs import configure_logging

    settings = _settings(campaigns=campaign or None)
    campaigns = _campaigns(settings.campaigns)
    configure_logging(settings.log_level)
    _broker(settings, "learner")  # its snapshot loader raised a traceback when none answered
    # SIGTERM (how process managers stop it) ends the loop like Ctrl-C: the learning since the
    # last snapshot is published and committed instead of replayed by the next learner.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    versions = run_learner(settings, campaigns, max_idle, stop)
    for name, version in versions.items():
        console.print(f"{name}: model version {version}")


@app.command()
def learn(
    source: RewardsLogOption = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Write <campaign>.snapshot files here instead of publishing."
        ),
    ] = None,
    campaign: Annotated[
        list[str] | None,
        typer.Option("--campaign", "-c", help="Campaign files (the workers' set). Repeatable."),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Idle seconds that end the topic read.")] = 10.0,
) -> None:
    """Teach the models from a rewards log and publish them: a warm start before launch."""
    from streams.learn_command import run_learn

    raise typer.Exit(
        run_learn(_settings(campaigns=campaign or None), console, source, output, timeout)
    )


@app.command()
def topics(
    create: Annotated[
        bool, typer.Option("--create/--list", help="Create missing topics, or only list them.")
    ] = True,
) -> None:
    """Create Kairos' topics with their configured partition counts (idempotent) and list them."""
    from streams.topics import TopicSetupError, ensure_topics, existing_topics

    settings = _settings()
    try:
        wait = settings.broker_wait_s
        counts = ensure_topics(settings, wait) if create else existing_topics(settings, wait)
    except TopicSetupError as exc:  # a partition count that disagrees, no broker answering
        _fail("topics", exc)
        raise typer.Exit(2) from None  # a setup problem, as for every other command
    for name, partitions in counts.items():
        console.print(f"{name}\t{'missing' if partitions is None else f'{partitions} partitions'}")


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
    from streams.tail import TailError, tail_topic

    settings = _settings()
    _broker(settings, "tail")
    try:
        tail_topic(settings, topic, from_beginning, max_records, idle_timeout, raw, console)
    except TailError as exc:
        _fail("tail", exc)
        raise typer.Exit(2) from None


@app.command()
def erase(
    customer_ids: Annotated[
        list[str], typer.Argument(help="Customer ids whose data the workers should delete.")
    ],
) -> None:
    """Delete customers' data (right to erasure): their state and open decisions.

    Sends an erasure_requested event per customer to the events topic; the worker that holds the
    customer removes its table rows (and their changelog entries, by compaction). Records already
    on the decisions and rewards topics stay until their retention ends; the models keep what
    they learned.
    """
    from streams.erase_command import EraseError, request_erasure

    settings = _settings()
    _broker(settings, "erase")
    try:
        sent = request_erasure(settings, customer_ids)
    except EraseError as exc:
        _fail("erase", exc)
        raise typer.Exit(1) from None
    console.print(f"erasure requested for {sent} customer{'s' if sent != 1 else ''}")


@app.command()
def demo(
    customers: Annotated[int, typer.Option(help="Synthetic customers to feed.")] = 60,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 90.0,
    simulate: Annotated[
        bool, typer.Option(help="End with a short closed-loop simulation through the broker.")
    ] = True,
) -> None:
    """Start a worker against the local broker, feed synthetic customers, print the decisions."""
    from streams.demo import run_demo

    code = run_demo(_settings(), customers=customers, timeout_s=timeout, console=console)
    if code == 0 and simulate:
        from streams.simulate_command import run_kafka_simulation

        console.rule("[bold]Closed loop: simulated customers through the broker")
        report = run_kafka_simulation(_settings(), console, customers=200, decisions=300)
        console.print(f"simulation report: [bold]{report}[/bold]")
    raise typer.Exit(code)


@app.command()
def campaigns(
    path: Annotated[
        list[str] | None, typer.Argument(help="Campaign files, directories or builtin:<name>.")
    ] = None,
) -> None:
    """Validate campaign files: one line each (name, triggers, actions, objective), or the error.

    Files named here are checked one by one, so variants of one campaign (same name) can be
    checked together; the set a worker runs (no argument) must have unique names.
    """
    if path:
        loaded = [c for ref in path for c in _campaigns([ref])]
    else:
        loaded = _campaigns(_settings().campaigns)
    for c in loaded:
        console.print(
            f"[bold]{escape(c.name)}[/bold] triggers={list(c.triggers)} actions={len(c.actions)} "
            f"objective={c.objective}"
        )


@app.command()
def export(
    output: Annotated[Path, typer.Option("--output", "-o", help=".jsonl, or .parquet (pyarrow).")],
    campaign: Annotated[str | None, typer.Option(help="Only this campaign.")] = None,
    timeout: Annotated[float, typer.Option(help="Give up after this many idle seconds.")] = 10.0,
) -> None:
    """Write the rewards log (decisions joined with rewards) to JSON lines or Parquet."""
    from streams.export_command import EXPORT_SUFFIXES, run_export

    settings = _settings()
    if output.suffix in EXPORT_SUFFIXES:  # else run_export says what it writes, broker or not
        _broker(settings, "export")
    raise typer.Exit(run_export(settings, output, campaign, timeout, console))


@app.command()
def evaluate(
    source: RewardsLogOption = None,
    obd: Annotated[
        Path | None,
        typer.Option(
            "--obd",
            help="Instead: the Open Bandit Dataset sample in this directory (random/all/all.csv, "
            "bts/all/all.csv, prior_bts.yaml). Estimates its Thompson policy from its random "
            "logs (error vs its on-policy click rate) and Kairos' bandit trained on them.",
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="With --obd: only the first N rows of each log.")
    ] = None,
    n_sim: Annotated[
        int, typer.Option(help="With --obd: Monte Carlo draws of the Thompson policy.")
    ] = 100_000,
    campaign: Annotated[
        str | None, typer.Option(help="Logged campaign (needed if several).")
    ] = None,
    candidate: Annotated[
        Path | None, typer.Option(help="Campaign TOML of the candidate policy.")
    ] = None,
    exploration: Annotated[
        str | None, typer.Option(help="e.g. kind=softmax,temperature=0.05")
    ] = None,
    snapshot: Annotated[
        Path | None, typer.Option(help="Model snapshot file (else: trained on older records).")
    ] = None,
    train_share: Annotated[float, typer.Option(help="Oldest share of records to train on.")] = 0.5,
    clip: Annotated[float, typer.Option(help="Floor on logged propensities.")] = 0.0,
    bootstrap: Annotated[
        int | None,
        typer.Option(help="Bootstrap resamples (default 0: normal intervals; 1000 with --obd)."),
    ] = None,
    seed: Annotated[int, typer.Option()] = 0,
    html: Annotated[Path | None, typer.Option(help="Write an HTML report here.")] = None,
) -> None:
    """Estimate a candidate policy's value on the logged decisions (IPS, SNIPS, DM, DR).

    With --obd DIR: the same estimators checked on the Open Bandit Dataset's real logs.
    """
    if obd is not None:
        from streams.evaluate_obd import DEFAULT_BOOTSTRAP, run_evaluate_obd

        given = {
            "--input": source, "--campaign": campaign, "--candidate": candidate,
            "--exploration": exploration, "--snapshot": snapshot,
            "--train-share": train_share if train_share != 0.5 else None,
            "--clip": clip if clip != 0.0 else None,
        }  # fmt: skip
        clash = [name for name, value in given.items() if value is not None]
        if clash:
            err.print(
                f"[red]--obd evaluates the sample's own policies: drop {', '.join(clash)}[/red]"
            )
            raise typer.Exit(2)
        raise typer.Exit(
            run_evaluate_obd(
                console, obd, limit=limit, n_sim=n_sim, seed=seed, html_path=html,
                bootstrap=DEFAULT_BOOTSTRAP if bootstrap is None else bootstrap,
            )
        )  # fmt: skip
    if limit is not None:
        err.print("[red]--limit applies to --obd only[/red]")
        raise typer.Exit(2)
    from streams.evaluate_command import run_evaluate

    raise typer.Exit(
        run_evaluate(
            _settings(), console, source=source, campaign_name=campaign, candidate_file=candidate,
            exploration=exploration, snapshot_file=snapshot, train_share=train_share, clip=clip,
            bootstrap=bootstrap or 0, seed=seed, html_path=html,
        )
    )  # fmt: skip


@app.command()
def simulate(
    customers: Annotated[int, typer.Option(help="Simulated customers.")] = 2000,
    decisions: Annotated[int, typer.Option(help="Decisions per policy.")] = 20000,
    seed: Annotated[int, typer.Option(help="Seed of population, behaviour and policies.")] = 0,
    kafka: Annotated[
        bool, typer.Option("--kafka", help="Through the broker and a worker, not in process.")
    ] = False,
    policy: Annotated[
        list[str] | None, typer.Option("--policy", "-p", help="Only these policies. Repeatable.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="HTML report path.")] = None,
    warm_start: Annotated[
        float,
        typer.Option(
            "--warm-start",
            help="Days of the previous (random) campaign's rewards the learning policies learn "
            "before launch, as `kairos learn` does with a real log (in process only; 0: cold).",
        ),
    ] = 0.0,
) -> None:
    """Simulated customers: does Kairos learn who wants what? Kairos vs baselines, HTML report.

    Runs the simulator's own campaign (engine/simulator/campaign.py: its arms match the simulated
    customers' responses), not your campaign files, which it cannot know how customers answer.
    """
    from streams.simulate_command import simulate_command

    try:
        simulate_command(
            customers, decisions, seed, kafka, policy, out, console, _settings, warm_start
        )
    except ValueError as exc:  # options that do not go together, unknown policies
        err.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(2) from None


def main() -> None:
    """Entry point for `python -m streams.cli`."""
    logging.basicConfig(level=logging.WARNING)
    app()


if __name__ == "__main__":
    main()

"""`kairos simulate`: simulated customers against Kairos and the baselines, with an HTML report.

In process (default) every policy runs the engine's closed loop (engine.simulator) on the same
customers and seed. With `--kafka` the simulated customers talk to a real worker through the
broker: their events and outcomes are produced to the topics, the decisions are read back from
the action topic and answered; the report then compares Kairos' decisions with what the oracle,
no-action and a random choice would have earned on the very same decisions.
"""

from __future__ import annotations

import random
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import msgspec
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from engine.campaign import NO_ACTION_ID
from engine.rewards import reward_of
from engine.simulator.campaign import simulation_campaign, simulation_campaign_toml
from engine.simulator.experiment import POLICY_NAMES, build_policy
from engine.simulator.loop import CLOSING, DecisionLog, Run, SimConfig, action_values, simulate
from engine.simulator.population import Life, make_population, purchase_event, session_events
from engine.simulator.report import lift_caveat, persona_rows, render_html, summarize
from engine.simulator.responses import response, sample
from schemas.codec import decode_decision, decode_reward, encode
from schemas.records import Event
from streams.settings import Settings

#: Attribution window of the campaign a --kafka run's worker uses (compressed time).
KAFKA_WINDOW_S: Final[int] = 5


def default_report_path(kind: str = "simulation") -> Path:
    """reports/<kind>-<UTC timestamp>.html (reports/ is git-ignored)."""
    return Path("reports") / f"{kind}-{datetime.now(UTC):%Y%m%d-%H%M%S}.html"


def _progress(console: Console) -> Progress:
    """A progress display with the live net reward per decision."""
    return Progress(
        TextColumn("[bold]{task.description:<34}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("reward/decision [cyan]{task.fields[rate]:>7}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def print_summary(console: Console, runs: Sequence[Run], focus: str = "Kairos") -> None:
    """Terminal tables: policies side by side, then what Kairos chose per persona."""
    summaries = [summarize(r) for r in runs]
    oracle = next((s for s in summaries if s.policy == "oracle"), None)
    table = Table(title="Policies on the same customers and seed (exact expected net reward)")
    for col in (
        "policy",
        "decisions",
        "expected",
        "incremental",
        "of oracle's",
        "regret",
        "realized",
        "holdout lift/customer [95% CI]",
    ):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for s in summaries:
        base = oracle.incremental if oracle is not None else s.oracle_incremental
        share = f"{s.incremental / base:.0%}" if base else "n/a"
        table.add_row(
            s.policy,
            f"{s.decisions:,}",
            f"{s.expected:,.1f}",
            f"{s.incremental:,.1f}",
            share,
            f"{s.regret:,.1f}",
            f"{s.realized:,.1f}",
            f"{s.lift.diff:+.3f} [{s.lift.low:+.3f}, {s.lift.high:+.3f}]",
        )
    console.print(table)
    caveat = lift_caveat(summaries)
    if caveat is not None:
        console.print(f"[yellow]note:[/yellow] {escape(caveat)}")
    run = next((r for r in runs if r.policy == focus), None)
    if run is None:
        return
    personas = Table(title=f"What {focus} chooses per hidden persona (second half of the run)")
    for col in ("persona", "decisions", "offers", "oracle's offers", "pref. channel", "top action"):
        personas.add_column(col)
    for row in persona_rows(run):
        personas.add_row(
            row.persona,
            f"{row.decisions:,}",
            ", ".join(f"{k} {v:.0%}" for k, v in list(row.offers.items())[:3]),
            ", ".join(f"{k} {v:.0%}" for k, v in list(row.oracle_offers.items())[:2]),
            f"{row.preferred_channel:.0%}",
            row.top_action,
        )
    console.print(personas)


def write_report(path: Path, runs: Sequence[Run], title: str, facts: Sequence[str]) -> Path:
    """Write the HTML report, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(runs, title, facts), encoding="utf-8")
    return path


def run_simulation(
    customers: int,
    decisions: int,
    seed: int,
    console: Console,
    policies: Sequence[str] = POLICY_NAMES,
    out: Path | None = None,
    warm_start_days: float = 0.0,
) -> Path:
    """Run the policies in process on the same customers and seed; print and write the report.

    `warm_start_days` > 0: the policies that learn first learn from the legacy campaign's reward
    records of that many days before launch (SimConfig.warm_start_days); 0 is a cold start.
    """
    campaign = simulation_campaign()
    config = SimConfig(
        customers=customers, decisions=decisions, seed=seed, warm_start_days=warm_start_days
    )
    runs: list[Run] = []
    started = time.perf_counter()
    with _progress(console) as progress:
        for name in policies:
            task = progress.add_task(name, total=decisions, rate="-")
            policy = build_policy(name, campaign, config)
            progress.update(task, description=policy.name[:34])

            def update(done: int, reward: float, task_id: TaskID = task) -> None:
                rate = f"{reward / done:+.4f}" if done else "-"
                progress.update(task_id, completed=done, rate=rate)

            runs.append(simulate(campaign, policy, config, update))
    took = time.perf_counter() - started
    print_summary(console, runs)
    legacy = runs[0].legacy_decisions if runs else 0
    learned = max((r.warm_learned for r in runs), default=0)
    start = (
        f"Warm start: the policies that learn first learned {learned:,} reward records of the "
        f"legacy random campaign's last {warm_start_days:g} days (of {legacy:,} legacy decisions)."
        if warm_start_days > 0
        else f"Cold start: no policy learned from the {legacy:,} legacy random decisions."
    )
    facts = [
        f"Command: kairos simulate --customers {customers} --decisions {decisions} --seed {seed}"
        + (f" --warm-start {warm_start_days:g}" if warm_start_days > 0 else ""),
        start,
        f"Campaign: {campaign.name} ({len(campaign.actions)} arms, objective {campaign.objective},"
        f" exploration {campaign.exploration.kind}), holdout "
        f"{campaign.guardrails.holdout_share:.0%}; in process; took {took:.0f} s.",
        "Best single action: chosen on a separate uniformly random exploration run (seed + "
        "10000) by exact mean incremental value, i.e. what a perfect A/B test would pick.",
        "Every policy runs its own closed loop on the same population and seed (its decisions "
        "change what the customers do next).",
    ]
    path = write_report(out or default_report_path(), runs, "Kairos customer simulation", facts)
    console.print(start)
    console.print(f"report: [bold]{path}[/bold]")
    return path


# ---- through Kafka ---------------------------------------------------------------------------


def kafka_settings(base: Settings, run_dir: Path) -> Settings:
    """Isolated settings (own topics, group, tables, port) running the simulation campaign."""
    from streams.demo import demo_settings

    campaign_file = run_dir / "simulated_nudge.toml"
    campaign_file.write_text(simulation_campaign_toml(KAFKA_WINDOW_S), encoding="utf-8")
    return demo_settings(base, run_dir).model_copy(update={"campaigns": [str(campaign_file)]})


def run_kafka_simulation(
    settings: Settings,
    console: Console,
    customers: int = 200,
    decisions: int = 300,
    seed: int = 0,
    timeout_s: float = 45.0,
    out: Path | None = None,
    start_worker: bool = True,
) -> Path:
    """Simulated customers against a real worker through the broker; returns the report's path.

    With `start_worker` (default) it starts an isolated worker (its own topics, running the
    simulation campaign with a 5 s attribution window: time is compressed) and stops it after;
    otherwise `settings` must name a running worker's topics and campaign.
    """
    from confluent_kafka import Consumer, Producer

    from streams.topics import consumer_config, ensure_topics, producer_config
    from streams.worker_process import WorkerProcess

    run_dir = Path(tempfile.mkdtemp(prefix="kairos-sim-"))
    if start_worker:
        settings = kafka_settings(settings, run_dir)
    campaign = simulation_campaign(KAFKA_WINDOW_S if start_worker else None)
    ensure_topics(settings, settings.broker_wait_s)
    worker = WorkerProcess(settings, run_dir / "worker.log").start() if start_worker else None
    run_tag = uuid.uuid4().hex[:6]
    population = make_population(customers, seed, prefix=f"kafka-{run_tag}")
    by_id = {c.customer_id: i for i, c in enumerate(population)}
    lives = [Life(random.Random(c.seed)) for c in population]
    run = Run(
        "Kairos", SimConfig(customers=customers, decisions=decisions, seed=seed), campaign.name
    )
    run.personas = [c.persona.name for c in population]
    from engine.guardrails import in_holdout

    run.holdout = [in_holdout(c.customer_id, campaign) for c in population]
    rewards_joined = 0
    latencies: list[float] = []
    consumer = Consumer(consumer_config(settings, f"{settings.app_id}-simulator"))
    consumer.subscribe([settings.topics.decisions, settings.topics.rewards])
    started = time.monotonic()
    try:
        if worker is not None:
            ready = worker.wait_ready(60)
            console.print(f"worker ready in {ready:.1f} s (log: {worker.log_path})")
        producer = Producer(producer_config(settings))

        def send_events(events: Sequence[Event]) -> None:
            now = datetime.now(UTC)
            for event in events:  # compressed time: a visit happens now, in order
                stamped = replace_ts(event, now)
                producer.produce(
                    settings.topics.events, key=stamped.customer_id.encode(), value=encode(stamped)
                )

        order = list(range(customers))
        rng = random.Random(f"kafka-order:{seed}")
        deadline = started + timeout_s
        next_visit = 0
        with _progress(console) as progress:
            task = progress.add_task("Kairos via Kafka", total=decisions, rate="-")
            reward_sum = 0.0
            batch = max(10, min(customers, decisions) // 5)
            next_batch_at = 0.0
            while len(run.log) < decisions and time.monotonic() < deadline:
                # A batch of visits every half second: not every visit causes a decision.
                if time.monotonic() >= next_batch_at:
                    for _ in range(batch):
                        if next_visit % customers == 0:
                            rng.shuffle(order)
                        i = order[next_visit % customers]
                        next_visit += 1
                        send_events(session_events(population[i], lives[i], datetime.now(UTC)))
                    producer.flush(5)
                    next_batch_at = time.monotonic() + 0.5
                message = consumer.poll(0.05)
                if message is None or message.error():
                    continue
                if message.topic() == settings.topics.rewards:
                    record = decode_reward(message.value() or b"")
                    if record.decision.customer_id in by_id:
                        rewards_joined += 1
                    continue
                decision = decode_decision(message.value() or b"")
                index = by_id.get(decision.customer_id)
                if index is None:
                    continue
                customer, life = population[index], lives[index]
                latencies.append((decision.decided_ts - decision.trigger_ts).total_seconds())
                allowed = (
                    tuple(decision.probabilities)
                    if decision.reason == "policy"
                    else (NO_ACTION_ID,)
                )
                values = action_values(
                    campaign,
                    customer,
                    life,
                    decision.trigger_type,
                    decision.trigger_ts,
                    decision.decided_ts,
                    allowed,
                    customer.timezone,
                )
                action = campaign.action(decision.action_id)
                from engine.guardrails import send_time

                sent = send_time(campaign, action, decision.decided_ts, customer.timezone)
                r = response(
                    customer, life, decision.trigger_type, decision.trigger_ts, action, sent
                )
                if action.is_message and not decision.holdout:
                    life.messages.append(sent.timestamp())
                outcomes = sample(
                    r,
                    random.Random(f"{seed}:{decision.decision_id}"),
                    customer.customer_id,
                    decision.decision_id,
                    campaign.name,
                    sent,
                )
                closing = next((o for o in outcomes if o.type in CLOSING), None)
                counted = [o for o in outcomes if closing is None or o.ts <= closing.ts]
                now = datetime.now(UTC)
                for outcome in counted:
                    stamped_outcome = msgspec.structs.replace(outcome, ts=now)
                    producer.produce(
                        settings.topics.outcomes,
                        key=customer.customer_id.encode(),
                        value=encode(stamped_outcome),
                    )
                    if outcome.type == "unsubscribed":
                        life.unsubscribed.add(action.channel)
                    elif outcome.type == "converted":
                        send_events(
                            [purchase_event(customer, life, now, random.Random(outcome.outcome_id))]
                        )
                reward = reward_of(campaign, counted) if counted else campaign.reward.default
                best = max(allowed, key=lambda a: values[a])
                realized = reward - decision.cost
                reward_sum += realized
                run.log.append(
                    DecisionLog(
                        ts=decision.decided_ts.timestamp(),
                        customer=index,
                        persona=customer.persona.name,
                        trigger=decision.trigger_type,
                        action_id=decision.action_id,
                        holdout=decision.holdout,
                        reason=decision.reason,
                        explore=decision.explore,
                        chosen=values[decision.action_id],
                        baseline=values[NO_ACTION_ID],
                        best=values[best],
                        best_action=best,
                        realized=realized,
                        preferred_channel=action.channel == customer.channel,
                    )
                )
                progress.update(
                    task, completed=len(run.log), rate=f"{reward_sum / len(run.log):+.4f}"
                )
        producer.flush(5)
        # Let the last windows close so their rewards come back joined.
        drain_until = time.monotonic() + min(
            KAFKA_WINDOW_S + 3.0, max(deadline - time.monotonic(), 2.0)
        )
        while time.monotonic() < drain_until:
            message = consumer.poll(0.2)
            if (
                message is not None
                and not message.error()
                and message.topic() == settings.topics.rewards
            ):
                rewards_joined += 1
    finally:
        consumer.close()
        if worker is not None:
            worker.stop()
    took = time.monotonic() - started
    run.learned = rewards_joined
    run.simulated_days = took / 86400.0
    print_summary(console, [run])
    p50 = sorted(latencies)[len(latencies) // 2] * 1000 if latencies else float("nan")
    facts = [
        f"Through Kafka ({settings.kafka_bootstrap}): {len(run.log)} decisions read from "
        f"{settings.topics.decisions}, {rewards_joined} rewards joined by the worker; "
        f"{customers} customers, seed {seed}, took {took:.0f} s; trigger-to-decision p50 "
        f"{p50:.0f} ms.",
        f"Compressed time: events are stamped when produced; the campaign's attribution window "
        f"is {KAFKA_WINDOW_S} s; customers start without history (cold start), so this checks "
        "the loop end to end rather than how much Kairos learns (see the in-process run).",
        "'incremental' and 'regret' compare Kairos' decisions with no-action and the oracle on "
        "the very same decisions (exact hidden expected values).",
    ]
    path = write_report(
        out or default_report_path("simulation-kafka"),
        [run],
        "Kairos simulation through Kafka",
        facts,
    )
    console.print(
        f"{len(run.log)} decisions came back through the worker, {rewards_joined} rewards joined; "
        f"report: [bold]{path}[/bold]"
    )
    return path


def replace_ts(event: Event, ts: datetime) -> Event:
    """The event stamped with another time (msgspec Structs are frozen)."""
    return msgspec.structs.replace(event, ts=ts)


def simulate_command(
    customers: int,
    decisions: int,
    seed: int,
    kafka: bool,
    policies: Sequence[str] | None,
    out: Path | None,
    console: Console,
    settings_factory: Callable[[], Settings] | None = None,
    warm_start_days: float = 0.0,
) -> Path:
    """What `kairos simulate` runs: in process, or through Kafka with --kafka.

    A warm start (`warm_start_days` > 0, SimConfig.warm_start_days) is in process only.
    """
    if kafka and warm_start_days > 0:
        raise ValueError("a warm start is in process only (not with --kafka)")
    if kafka:
        settings = settings_factory() if settings_factory is not None else Settings()
        return run_kafka_simulation(
            settings, console, customers=customers, decisions=decisions, seed=seed, out=out
        )
    names = list(policies) if policies else list(POLICY_NAMES)
    unknown = [n for n in names if n not in POLICY_NAMES]
    if unknown:
        raise ValueError(f"unknown policies {unknown}; known: {', '.join(POLICY_NAMES)}")
    return run_simulation(customers, decisions, seed, console, names, out, warm_start_days)


__all__ = [
    "KAFKA_WINDOW_S",
    "default_report_path",
    "kafka_settings",
    "print_summary",
    "run_kafka_simulation",
    "run_simulation",
    "simulate_command",
    "write_report",
]

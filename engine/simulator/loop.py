"""The in-process closed loop: simulated customers -> Kairos' engine path -> outcomes -> learning.

It runs the same functions as a worker (streams/processor.py), in simulated time:
`apply` + `detect` for events, `due` for timers, the policy's decision (Kairos:
`CampaignRuntime.decide`), `record_decision`, `apply_outcome` for outcomes, `reward_of` when the
attribution window closes (at a conversion or unsubscribe, or at the deadline), then `learn`.
A heap orders every customer's sessions, events, timers, outcomes and window closings by time.

Customers first live `warmup_days` under the shop's previous campaign (uniformly random nudges
among the allowed actions, not logged), so Kairos' state starts with a purchase history and with
engagement counts per channel, as it would at a real launch; then the policy decides every trigger
until `decisions` decisions were made. With `SimConfig.warm_start_days` the policy also learns,
through its own `learn`, from the reward records of the legacy campaign's decisions of the last
that many days before launch whose attribution window closed before launch (the previous
campaign's logs a shop would hand over at launch: uniformly random over the allowed actions, so
their propensities are known); with 0 (the default, a cold start) it learns only from its own
decisions. For each decision
the log keeps the exact expected net reward (reward minus cost) of the chosen action, of
no-action and of the best allowed action (the oracle's), so reward, regret and lift are exact.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from engine.campaign import NO_ACTION_ID, Campaign
from engine.guardrails import send_time
from engine.rewards import reward_of
from engine.simulator.baselines import Options, Policy, RandomPolicy, options_for
from engine.simulator.population import (
    Customer,
    Life,
    make_population,
    next_session_at,
    purchase_event,
    session_events,
)
from engine.simulator.responses import expected_reward, response, sample
from engine.state import CustomerState, apply, apply_outcome, record_decision
from engine.triggers import TriggerConfig, detect, due, next_due
from schemas.records import Decision, Event, Outcome, RewardRecord, Trigger

__all__ = ["DecisionLog", "Run", "SimConfig", "action_values", "simulate"]

#: Default start of the simulated calendar (a Monday, UTC).
DEFAULT_START: Final[datetime] = datetime(2025, 1, 6, tzinfo=UTC)
CLOSING: Final[frozenset[str]] = frozenset({"converted", "unsubscribed"})

_SESSION, _EVENT, _TIMER, _OUTCOME, _CLOSE = range(5)


@dataclass(frozen=True, slots=True)
class SimConfig:
    """How big and how long a simulation is; everything random derives from `seed`."""

    customers: int = 2000
    decisions: int = 100_000
    seed: int = 0
    start: datetime = DEFAULT_START
    warmup_days: float = 60.0
    max_days: float = 3650.0
    triggers: TriggerConfig = field(default_factory=TriggerConfig)
    warm_start_days: float = 0.0
    """Warm start: before launch, the policy learns through its `learn` from the reward records
    of the legacy campaign's decisions of the last this many days (closed before launch); 0 is a
    cold start. Policies that do not learn are unaffected."""


@dataclass(frozen=True, slots=True)
class DecisionLog:
    """One decision and its exact value: what was chosen, what no-action and the oracle get."""

    ts: float
    customer: int
    persona: str
    trigger: str
    action_id: str
    holdout: bool
    reason: str
    explore: bool
    chosen: float
    """Expected net reward (reward - cost) of the chosen action."""
    baseline: float
    """Expected reward of no-action."""
    best: float
    """Expected net reward of the best allowed action."""
    best_action: str
    realized: float
    """Reward actually drawn, minus the action's cost."""
    preferred_channel: bool
    """The action's channel is the customer's preferred one."""


@dataclass(slots=True)
class Run:
    """The outcome of one simulation: the decisions and enough context to report on them."""

    policy: str
    config: SimConfig
    campaign: str
    log: list[DecisionLog] = field(default_factory=list)
    personas: list[str] = field(default_factory=list)
    """Persona of each customer, by index."""
    holdout: list[bool] = field(default_factory=list)
    """Holdout membership of each customer, by index."""
    learned: int = 0
    """Reward records the policy was given to learn from (its own, and with a warm start the
    legacy ones)."""
    warm_learned: int = 0
    """Of those, legacy (pre-launch) reward records (SimConfig.warm_start_days)."""
    legacy_decisions: int = 0
    """Decisions the legacy campaign made before launch (learned from or not)."""
    events: int = 0
    simulated_days: float = 0.0


def action_values(
    campaign: Campaign,
    customer: Customer,
    life: Life,
    trigger_type: str,
    trigger_ts: datetime,
    now: datetime,
    allowed: tuple[str, ...],
    timezone: str | None,
) -> dict[str, float]:
    """The exact expected net reward (reward - cost) of each allowed action, and of no-action."""
    out: dict[str, float] = {}
    for action_id in {*allowed, NO_ACTION_ID}:
        action = campaign.action(action_id)
        sent = send_time(campaign, action, now, timezone)
        r = response(customer, life, trigger_type, trigger_ts, action, sent)
        out[action_id] = expected_reward(campaign, r) - action.cost
    return out


class _World:
    """The mutable simulation: customers' Kairos state, their lives, and the event heap."""

    def __init__(
        self,
        campaign: Campaign,
        policy: Policy,
        config: SimConfig,
        progress: Callable[[int, float], None] | None,
    ) -> None:
        self.campaign = campaign
        self.policy = policy
        self.config = config
        self.progress = progress
        self.customers = make_population(config.customers, config.seed)
        self.lives = [Life(random.Random(c.seed)) for c in self.customers]
        self.states: list[CustomerState | None] = [None] * len(self.customers)
        self.timer_at: list[float | None] = [None] * len(self.customers)
        self.heap: list[tuple[float, int, int, int, Any]] = []
        self.seq = 0
        self.live_from = config.start + timedelta(days=config.warmup_days)
        self.warm_from = self.live_from - timedelta(days=config.warm_start_days)
        self.reward_sum = 0.0
        self.run = Run(policy.name, config, campaign.name)
        self.run.personas = [c.persona.name for c in self.customers]
        from engine.guardrails import in_holdout

        self.run.holdout = [in_holdout(c.customer_id, campaign) for c in self.customers]
        self.legacy = RandomPolicy(campaign, config.seed)

    def push(self, ts: float, kind: int, index: int, payload: Any = None) -> None:
        """Schedule an item (ties keep insertion order)."""
        self.seq += 1
        heapq.heappush(self.heap, (ts, self.seq, kind, index, payload))

    def start(self) -> None:
        """Schedule every customer's first visit."""
        for i, customer in enumerate(self.customers):
            at = next_session_at(customer, self.lives[i], self.config.start)
            self.push(at.timestamp(), _SESSION, i)

    def loop(self) -> Run:
        """Process the heap until enough decisions were made (or the calendar ends)."""
        end = (self.config.start + timedelta(days=self.config.max_days)).timestamp()
        target = self.config.decisions
        log = self.run.log
        while self.heap and len(log) < target:
            ts, _seq, kind, index, payload = heapq.heappop(self.heap)
            if ts > end:
                break
            now = datetime.fromtimestamp(ts, UTC)
            if kind == _SESSION:
                self.session(index, now)
            elif kind == _EVENT:
                self.event(index, payload, now)
            elif kind == _TIMER:
                self.timer(index, now)
            elif kind == _OUTCOME:
                self.outcome(index, payload, now)
            else:
                self.policy.learn(payload)
                self.run.learned += 1
                if payload.decision.decided_ts < self.live_from:
                    self.run.warm_learned += 1
            self.run.simulated_days = (ts - self.live_from.timestamp()) / 86400.0
        if self.progress is not None:
            self.progress(len(log), self.reward_sum)
        return self.run

    def session(self, index: int, now: datetime) -> None:
        """A visit: schedule its events and the next visit."""
        customer, life = self.customers[index], self.lives[index]
        for event in session_events(customer, life, now):
            self.push(event.ts.timestamp(), _EVENT, index, event)
        self.push(next_session_at(customer, life, now).timestamp(), _SESSION, index)

    def event(self, index: int, event: Event, now: datetime) -> None:
        """apply + detect, then decide on the triggers (as Processor.on_event)."""
        self.run.events += 1
        prev = self.states[index]
        state = apply(prev, event)
        triggers, state = detect(prev, state, event, self.config.triggers)
        self.states[index] = self.decide_all(index, state, triggers, now)

    def timer(self, index: int, now: datetime) -> None:
        """Fire due timers (derived cart abandonment), then decide (as Processor.on_tick)."""
        state = self.states[index]
        self.timer_at[index] = None
        if state is None:
            return
        triggers, state = due(state, now, self.config.triggers)
        self.states[index] = self.decide_all(index, state, triggers, now)

    def outcome(self, index: int, item: tuple[Outcome, str | None], now: datetime) -> None:
        """Count engagement; an unsubscribe closes the channel; a conversion is a purchase."""
        outcome, channel = item
        state = self.states[index]
        if state is not None:
            self.states[index] = apply_outcome(state, outcome, channel)
        life = self.lives[index]
        if outcome.type == "unsubscribed" and channel:
            life.unsubscribed.add(channel)
        elif outcome.type == "converted":
            rng = random.Random(f"{self.config.seed}:{outcome.outcome_id}")
            self.event(index, purchase_event(self.customers[index], life, now, rng), now)

    def decide_all(
        self, index: int, state: CustomerState, triggers: list[Trigger], now: datetime
    ) -> CustomerState:
        """Decide every trigger of a live campaign, record, draw outcomes, schedule the join."""
        live = now >= self.live_from
        for trigger in triggers:
            if not self.campaign.responds_to(trigger.type):
                continue
            if len(self.run.log) >= self.config.decisions:
                break
            state = self.decide(index, state, trigger, now, live)
        due_at = next_due(state)
        if due_at is not None and due_at != self.timer_at[index]:
            self.timer_at[index] = due_at
            self.push(float(due_at), _TIMER, index)
        return state

    def decide(
        self, index: int, state: CustomerState, trigger: Trigger, now: datetime, live: bool
    ) -> CustomerState:
        """One decision, its exact values, its sampled outcomes and its reward join.

        Before launch (`live` false) the legacy random campaign decides and nothing is logged.
        """
        campaign, customer, life = self.campaign, self.customers[index], self.lives[index]
        options: Options = options_for(campaign, state, trigger, now)
        values = action_values(
            campaign, customer, life, trigger.type, trigger.ts, now, options.allowed, state.timezone
        )
        policy: Policy = self.policy if live else self.legacy
        decision: Decision = policy.decide(state, trigger, now, options, values)
        state = record_decision(state, decision)
        action = campaign.action(decision.action_id)
        sent = send_time(campaign, action, now, state.timezone)
        r = response(customer, life, trigger.type, trigger.ts, action, sent)
        if action.is_message and not decision.holdout:
            life.messages.append(sent.timestamp())
        rng = random.Random(f"{self.config.seed}:{decision.decision_id}")
        outcomes = sample(r, rng, customer.customer_id, decision.decision_id, campaign.name, sent)
        deadline = decision.attribution_deadline
        closing = next((o for o in outcomes if o.type in CLOSING), None)
        counted = [o for o in outcomes if o.ts <= (closing.ts if closing else deadline)]
        reward = reward_of(campaign, counted) if counted else campaign.reward.default
        close_at = closing.ts if closing else deadline
        channel = decision.action.get("channel")
        for o in counted:
            self.push(o.ts.timestamp(), _OUTCOME, index, (o, channel))
        record = RewardRecord(
            decision=decision,
            reward=reward,
            outcome_ids=[o.outcome_id for o in counted],
            outcome_types=[o.type for o in counted],
            expired=not counted,
            joined_ts=close_at,
        )
        if not live:
            self.run.legacy_decisions += 1
            if (
                self.config.warm_start_days > 0
                and self.warm_from <= now
                and close_at < self.live_from
            ):
                self.push(close_at.timestamp(), _CLOSE, index, record)
            return state
        self.push(close_at.timestamp(), _CLOSE, index, record)
        best_action = max(options.allowed, key=lambda a: values[a])
        realized = reward - decision.cost
        self.reward_sum += realized
        self.run.log.append(
            DecisionLog(
                ts=now.timestamp(),
                customer=index,
                persona=customer.persona.name,
                trigger=trigger.type,
                action_id=decision.action_id,
                holdout=decision.holdout,
                reason=decision.reason,
                explore=decision.explore,
                chosen=values[decision.action_id],
                baseline=values[NO_ACTION_ID],
                best=values[best_action],
                best_action=best_action,
                realized=realized,
                preferred_channel=action.channel == customer.channel,
            )
        )
        if self.progress is not None and len(self.run.log) % 500 == 0:
            self.progress(len(self.run.log), self.reward_sum)
        return state


def simulate(
    campaign: Campaign,
    policy: Policy,
    config: SimConfig,
    progress: Callable[[int, float], None] | None = None,
) -> Run:
    """Run one policy through the closed loop; `progress(decisions, reward so far)` is optional."""
    world = _World(campaign, policy, config, progress)
    world.start()
    return world.loop()

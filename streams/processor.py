"""Per-record processing of a worker, independent of Faust: records in, table updates and records out.

The Faust agent (streams/app.py) owns I/O: it reads the customer's rows, calls one of the ``on_*``
methods, writes the rows back and sends the outputs. Keeping this layer free of Faust lets the
component tests and benchmarks drive it with plain dictionaries.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, Protocol

import msgspec

from engine.campaign import Campaign
from engine.clock import Clock
from engine.decide import CampaignRuntime, decision_id
from engine.evaluation import PolicyValueMonitor
from engine.rewards import reward_of
from engine.state import (
    EVENT_DIGEST_BYTES,
    CustomerState,
    StateError,
    apply,
    apply_outcome,
    decode_last_seen,
    decode_state,
    encode_state,
    epoch_seconds,
    is_duplicate,
    record_decision,
)
from engine.triggers import TriggerConfig, detect, due
from schemas.codec import (
    RecordError,
    check_time,
    decode_event,
    decode_outcome,
    encode,
    encode_action,
)
from schemas.records import ERASURE_REQUESTED, Decision, Outcome, RewardRecord, Trigger
from streams.dead_letters import dead_letter_record
from streams.logs import customer_ref
from streams.metrics import Children, WorkerMetrics
from streams.partitioning import partition_of
from streams.settings import Settings
from streams.timer_index import KEEP, TimerIndex, Unchanged

log = logging.getLogger("kairos.processor")

# Outcome types that end a decision's attribution window at once: nothing later can change the
# reward of a conversion or an unsubscribe, so learning need not wait for the window to close.
CLOSING_OUTCOMES = frozenset({"converted", "unsubscribed"})
RECENT_CLOSED = 64
RECENT_OUTCOMES = 64


class OpenDecision(msgspec.Struct, array_like=True):
    """A decision waiting for outcomes until its attribution deadline."""

    decision: Decision
    deadline: float
    outcome_ids: list[str] = []
    outcome_types: list[str] = []
    outcome_values: list[float] = []


class AttributedOutcome(NamedTuple):
    """An outcome as kept with its open decision: enough to compute the reward."""

    outcome_id: str
    type: str
    value: float


class PendingSet(msgspec.Struct, array_like=True):
    """A customer's open decisions plus recent closed decision and outcome ids (for dedupe)."""

    open: list[OpenDecision] = []
    closed: list[str] = []
    outcome_ids: list[str] = []


_pending_encoder = msgspec.msgpack.Encoder()
_pending_decoder = msgspec.msgpack.Decoder(PendingSet)


def encode_pending(pending: PendingSet) -> bytes:
    """Serialize a customer's pending decisions for the RocksDB table."""
    return _pending_encoder.encode(pending)


class UnreadableRowError(ValueError):
    """A table row that does not decode (corrupt bytes, or written by something else).

    The record that needed it is dead-lettered; scans (timers, retention) skip it. Both keep
    the row as it is: a decoder bug in a new release must not wipe every customer it meets.
    """

    def __init__(self, table: str, detail: str) -> None:
        super().__init__(f"unreadable {table} row: {detail}")
        self.table = table


def decode_pending(data: bytes | None) -> PendingSet:
    """Read a customer's pending decisions; an absent row is an empty set."""
    if not data:
        return PendingSet()
    try:
        return _pending_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise UnreadableRowError("pending", str(exc)) from None


_EMPTY_PENDING = encode_pending(PendingSet())


class _OpenDeadline(msgspec.Struct, array_like=True):
    """An open decision read for its deadline only: the decision stays undecoded bytes."""

    decision: msgspec.Raw
    deadline: float


class _PendingDeadlines(msgspec.Struct, array_like=True):
    """A pending row read for its open deadlines only (trailing fields are skipped)."""

    open: list[_OpenDeadline] = []


_deadlines_decoder = msgspec.msgpack.Decoder(_PendingDeadlines)


def pending_deadlines(data: bytes | None) -> list[float]:
    """The attribution deadlines of a pending row, without decoding its decisions (far cheaper)."""
    if not data:
        return []
    try:
        return [o.deadline for o in _deadlines_decoder.decode(data).open]
    except msgspec.DecodeError as exc:
        raise UnreadableRowError("pending", str(exc)) from None


#: Header of a rerouted record: topic:partition:offset it was read from before.
REROUTED_FROM_HEADER = "kairos-rerouted-from"


@dataclass
class Output:
    """A record to send: topic name, key and value (already encoded)."""

    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass
class Result:
    """What processing one record changed and produced."""

    customer_id: str | None
    state: bytes | None = None
    pending: bytes | None = None
    outputs: list[Output] = field(default_factory=list)
    #: The soonest timer of the customer's state (None: none), or KEEP if the state was not read.
    next_due: float | Unchanged | None = KEEP
    #: The soonest deadline of its open decisions (None: none), or KEEP if pending was not read.
    next_deadline: float | Unchanged | None = KEEP
    new_customer: bool = False
    #: The record goes back to its topic keyed right (reroute): the runtime adds its headers.
    rerouted: bool = False
    decisions: list[Decision] = field(default_factory=list)
    rewards: list[RewardRecord] = field(default_factory=list)
    expired: bool = False
    """True when the customer's rows are to be deleted (idle past the retention period)."""


def carry_headers(
    result: Result,
    headers: Mapping[str, str | bytes | None] | Iterable[tuple[str, str | bytes | None]] | None,
) -> None:
    """Give a rerouted record's outputs the headers it came with (tracing ids and the like),
    before Kairos' own; a header without a value is kept with an empty one."""
    if not result.rerouted or not headers:
        return
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    carried = [
        (name, value.encode() if isinstance(value, str) else value or b"") for name, value in pairs
    ]
    for output in result.outputs:
        output.headers[:0] = carried


class CustomerRows(Protocol):
    """Read access to a customer's rows in the worker's tables."""

    def state(self, customer_id: str) -> bytes | None:
        """The encoded customer state, or None."""
        ...

    def pending(self, customer_id: str) -> bytes | None:
        """The encoded pending decisions, or None."""
        ...


class MemoryRows:
    """The customer tables as dictionaries, updated from each result as a worker writes them: the
    processor without a store, for the latency bench's machine-speed probe and the tests."""

    def __init__(self) -> None:
        self.states: dict[str, bytes] = {}
        self.pendings: dict[str, bytes] = {}

    def state(self, customer_id: str) -> bytes | None:
        """The encoded customer state, or None."""
        return self.states.get(customer_id)

    def pending(self, customer_id: str) -> bytes | None:
        """The encoded pending decisions, or None."""
        return self.pendings.get(customer_id)

    def save(self, result: Result) -> Result:
        """Apply a result's rows (or its expiry) as the worker would; returns the result."""
        customer = result.customer_id
        if customer is not None and result.expired:
            self.states.pop(customer, None)
            self.pendings.pop(customer, None)
        elif customer is not None:
            if result.state is not None:
                self.states[customer] = result.state
            if result.pending is not None:
                self.pendings[customer] = result.pending
        return result


class Processor:
    """Turns events, outcomes and timer ticks into state updates, decisions and rewards."""

    def __init__(
        self,
        settings: Settings,
        campaigns: Sequence[Campaign],
        clock: Clock,
        metrics: WorkerMetrics | None = None,
        on_learn: Callable[[str, RewardRecord], None] | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.metrics = metrics or WorkerMetrics()
        self.runtimes = {c.name: CampaignRuntime.from_campaign(c, settings.seed) for c in campaigns}
        self.trigger_config = TriggerConfig(
            cart_abandon_after_s=settings.cart_abandon_after_s,
            lapse_after_days=settings.lapse_after_days,
        )
        self._by_trigger: dict[str, list[CampaignRuntime]] = {}
        for runtime in self.runtimes.values():
            for trigger_type in runtime.campaign.triggers:
                self._by_trigger.setdefault(trigger_type, []).append(runtime)
        self._on_learn = on_learn
        self._topics = settings.topics
        self.value_monitors = {name: PolicyValueMonitor() for name in self.runtimes}
        # The event-age window as float seconds, computed once instead of per event.
        self._max_event_past_s = timedelta(days=settings.max_event_age_days).total_seconds()
        self._max_event_future_s = timedelta(seconds=settings.max_event_future_s).total_seconds()
        # Children of the metrics counted on every record, by label values (same series).
        m = self.metrics
        self._events_in = Children(m.events_in)
        self._outcomes_in = Children(m.outcomes_in)
        self._duplicates = Children(m.duplicates)
        self._triggers = Children(m.triggers)
        self._stale_triggers = Children(m.stale_triggers)
        self._max_trigger_age = timedelta(seconds=settings.max_trigger_age_s)
        self._decisions = Children(m.decisions)
        self._decision_reasons = Children(m.decision_reasons)
        self._guardrail_hits = Children(m.guardrail_hits)
        self._rewards = Children(m.rewards)
        self._reward_value = Children(m.reward_value)
        self._policy_value = Children(m.policy_value)
        self._min_propensity = Children(m.min_propensity)
        self._policy_ess = Children(m.policy_ess)
        self._model_updates = Children(m.model_updates)
        self._model_version = Children(m.model_version)

    # ---- events -------------------------------------------------------------------------------

    def on_event(
        self,
        raw: bytes,
        rows: CustomerRows,
        source: tuple[str, int, int],
        key: bytes | None = None,
        partitions: int | None = None,
    ) -> Result:
        """Validate an event, update the customer's state, and decide on the triggers it causes.

        `key` is the Kafka record key when known: a record keyed by something other than its
        customer id sits on the wrong partition for that customer's state, so it is sent back to
        the topic under the right key instead of being applied here. `partitions` (the topic's
        count) is given by the runtimes for a record without a key: if its customer belongs on
        another partition than `source`'s, it is sent back keyed too (see `_misplaced`).
        """
        now = self.clock.now()
        try:
            event = decode_event(raw)
            if event.type != ERASURE_REQUESTED:  # honoured however late it comes
                check_time(event.ts, now, self._max_event_past_s, self._max_event_future_s)
        except RecordError as error:
            return self._dead_letter(raw, source, error, key)
        customer_id = event.customer_id
        if self._misplaced(customer_id, source, key, partitions):
            return self._reroute(raw, source, customer_id)
        self._events_in(event.type).inc()
        if event.type == ERASURE_REQUESTED:
            return self._erase(customer_id, rows)
        prev, applied = decode_state_row(rows.state(customer_id))
        _, partition, offset = source
        if prev is not None and applied.partition == partition and offset <= applied.offset:
            # A redelivery after a crash: the state row already holds this record's effect.
            # Its decisions may not have left the producer before the crash: send them again.
            self._duplicates("event_replay").inc()
            result = Result(customer_id)
            for item in decode_pending(rows.pending(customer_id)).open:
                if item.decision.trigger_event_id == event.event_id:
                    self._resend(item.decision, result)
            return result
        if prev is not None and is_duplicate(prev, event.event_id):
            self._duplicates("event").inc()
            return Result(customer_id)
        state = apply(prev, event)
        triggers, state = detect(prev, state, event, self.trigger_config)
        result = Result(customer_id, new_customer=prev is None)
        if not triggers:
            # Nothing to decide: the pending row is not read (its deadlines stay as indexed).
            self._finish_state(result, state, Applied(partition, offset), None)
            return result
        pending_row = rows.pending(customer_id)
        pending = decode_pending(pending_row)
        state = self._decide_all(state, pending, triggers, now, result)
        return self._finish(result, state, pending, Applied(partition, offset), None, pending_row)

    def _erase(self, customer_id: str, rows: CustomerRows) -> Result:
        """Remove the customer's rows (state and open decisions) without reading them, so an
        unreadable row goes too. Open decisions are dropped unrewarded: learning from them
        would keep the customer's features in the rewards topic."""
        result = Result(customer_id)
        if rows.state(customer_id) is not None or rows.pending(customer_id) is not None:
            result.expired = True
        self.metrics.erased_customers.inc()
        log.info(
            "customer erased",
            extra={
                "customer": customer_ref(customer_id, self.settings.log_customer_ids),
                "had_rows": result.expired,
            },
        )
        return result

    # ---- outcomes -----------------------------------------------------------------------------

    def on_outcome(
        self,
        raw: bytes,
        rows: CustomerRows,
        source: tuple[str, int, int],
        key: bytes | None = None,
        partitions: int | None = None,
    ) -> Result:
        """Attach an outcome to its decision (by id, or by the customer's open window); `key` and
        `partitions` as for on_event."""
        now = self.clock.now()
        try:
            outcome = decode_outcome(raw)
            # The same windows as events: a sender's clock far off is refused, not joined.
            check_time(outcome.ts, now, self._max_event_past_s, self._max_event_future_s)
        except RecordError as error:
            return self._dead_letter(raw, source, error, key)
        customer_id = outcome.customer_id
        if self._misplaced(customer_id, source, key, partitions):
            return self._reroute(raw, source, customer_id)
        self._outcomes_in(outcome.type).inc()
        pending_row = rows.pending(customer_id)
        pending = decode_pending(pending_row)
        if outcome.outcome_id in pending.outcome_ids:
            self._duplicates("outcome").inc()
            return Result(customer_id)
        target = _find_open(pending, outcome)
        if target is None:
            result = Result(customer_id)
            if outcome.type == "unsubscribed":
                # Nothing to learn from, but the customer's wish is kept whatever the decision's
                # fate (closed, unknown, or no id): see engine.state.apply_outcome.
                self._keep_unsubscribe(outcome, rows, result)
            if outcome.decision_id is not None and outcome.decision_id in pending.closed:
                self.metrics.late_outcomes.inc()
                log.info("late outcome %s for closed decision", outcome.type)
                return result
            if outcome.decision_id is not None and outcome.type != "unsubscribed":
                return self._dead_letter(
                    raw,
                    source,
                    key=key,
                    error=RecordError(
                        "unknown_decision",
                        f"no decision {outcome.decision_id!r} of customer {customer_id!r} "
                        "open or recently closed",
                    ),
                )
            self.metrics.unattributed_outcomes.inc()
            return result
        pending.outcome_ids = _ring(pending.outcome_ids, outcome.outcome_id, RECENT_OUTCOMES)
        target.outcome_ids.append(outcome.outcome_id)
        target.outcome_types.append(outcome.type)
        target.outcome_values.append(outcome.value)
        result = Result(customer_id)
        state_row = rows.state(customer_id)
        state, applied = decode_state_row(state_row)
        if state is not None:
            channel = target.decision.action.get("channel")
            state = apply_outcome(state, outcome, channel)
        if outcome.type in CLOSING_OUTCOMES:
            self._close(pending, target, now, expired=False, result=result)
        return self._finish(result, state, pending, applied, state_row, pending_row)

    def _keep_unsubscribe(self, outcome: Outcome, rows: CustomerRows, result: Result) -> None:
        """Record an unsubscribe no open decision claims in the customer's state (made if new)."""
        state_row = rows.state(outcome.customer_id)
        state, applied = decode_state_row(state_row)
        if state is None:
            seen = epoch_seconds(outcome.ts)
            state = CustomerState(customer_id=outcome.customer_id, first_seen=seen, last_seen=seen)
            result.new_customer = True  # a row the customers gauge counts
        log.info("unsubscribe kept without an open decision", extra={"channel": outcome.channel})
        self._finish_state(result, apply_outcome(state, outcome, None), applied, state_row)

    # ---- timers -------------------------------------------------------------------------------

    def on_tick(self, customer_id: str, rows: CustomerRows) -> Result:
        """Fire the customer's due timers (derived triggers) and close expired attribution windows."""
        now = self.clock.now()
        state_row = rows.state(customer_id)
        state, applied = decode_state_row(state_row)
        pending_row = rows.pending(customer_id)
        pending = decode_pending(pending_row)
        result = Result(customer_id)
        if state is not None:
            triggers, state = due(state, now, self.trigger_config)
            state = self._decide_all(state, pending, triggers, now, result)
        now_epoch = now.timestamp()
        for item in [o for o in pending.open if o.deadline <= now_epoch]:
            self._close(pending, item, now, expired=not item.outcome_ids, result=result)
        if not pending.open and (state is None or self.idle_past_retention(state.last_seen, now)):
            # Retention: nothing is open and the customer has been idle past the TTL (or only a
            # pending row is left): remove both rows. The rewards just closed still go out.
            if state is not None or pending_row is not None:
                result.expired = True
                self.metrics.expired_customers.inc()
            return result
        return self._finish(result, state, pending, applied, state_row, pending_row)

    def idle_past_retention(self, last_seen: int, now: datetime) -> bool:
        """True if a customer last seen at `last_seen` (epoch s) is past the state TTL at `now`."""
        return last_seen + self.settings.state_ttl_days * 86_400 <= now.timestamp()

    def expires(
        self, key: bytes, state_row: bytes, pending_row: Callable[[], bytes | None], now: datetime
    ) -> bool:
        """True if this customers-table row is idle past the state TTL with no decision open
        (the retention sweep's test; the pending row is read only for an idle customer).

        An open decision keeps the customer: its window's own tick comes later. An unreadable
        row is skipped (logged, counted) and kept: it stopped the sweep at that row before.
        """
        try:
            last_seen = decode_last_seen(state_row[ROW_HEADER_SIZE:])
            return (
                self.idle_past_retention(last_seen, now) and not decode_pending(pending_row()).open
            )
        except StateError as exc:
            unreadable = UnreadableRowError("customers", str(exc))
        except UnreadableRowError as exc:
            unreadable = exc
        _skip_unreadable(key, unreadable, self.metrics, self.settings.log_customer_ids)
        return False

    # ---- learning -----------------------------------------------------------------------------

    def learn(self, record: RewardRecord) -> bool:
        """Update the deciding campaign's models in process (one worker: no staleness); True if
        they learned (local learning, and a record that teaches something).

        The engine's rule decides what a record teaches (engine.decide.learn): a holdout's reward
        teaches an uplift campaign's no-action baseline, the one unconfounded sample of it.
        """
        runtime = self.runtimes.get(record.decision.campaign)
        if runtime is None or self.settings.learning != "local" or not runtime.learn(record):
            return False
        self._model_updates(runtime.campaign.name).inc()
        self._model_version(runtime.campaign.name).set(runtime.bandit.version)
        if self._on_learn is not None:
            self._on_learn(runtime.campaign.name, record)
        return True

    # ---- internals ----------------------------------------------------------------------------

    def _action(self, decision: Decision) -> bytes:
        """The action topic's record: lean unless `action_features` asks for the features."""
        return encode_action(decision, features=self.settings.action_features)

    def _resend(self, decision: Decision, result: Result) -> None:
        """Send a decision made before again, byte-identical (downstream drops it by its id).

        At-least-once: after a crash, a replayed record can find its effect in the local tables
        (written as it was processed) while its decision was still in the producer's queue when
        the worker died; without this the decision would be lost for good.
        """
        self.metrics.decisions_resent.labels(campaign=decision.campaign).inc()
        result.outputs.append(
            Output(self._topics.decisions, decision.customer_id.encode(), self._action(decision))
        )

    def _decide_all(
        self,
        state: CustomerState,
        pending: PendingSet,
        triggers: Iterable[Trigger],
        now: datetime,
        result: Result,
    ) -> CustomerState:
        for trigger in triggers:
            self._triggers(trigger.type).inc()
            if now - trigger.ts > self._max_trigger_age:  # history, not a moment to act on
                self._stale_triggers(trigger.type).inc()
                continue
            for runtime in self._by_trigger.get(trigger.type, ()):
                did = decision_id(runtime.campaign.name, trigger.trigger_id)
                made = next((o for o in pending.open if o.decision.decision_id == did), None)
                if made is not None or did in pending.closed:
                    # Decided before (a replay whose state write was lost): never decide anew;
                    # send the open decision again in case it was lost with the state write.
                    self._duplicates("decision").inc()
                    if made is not None:
                        # Counted again for caps and cooldowns (a no-op if the state has it).
                        state = record_decision(state, made.decision)
                        self._resend(made.decision, result)
                    continue
                trace = runtime.decide_traced(state, trigger, now)
                decision = trace.decision
                state = record_decision(state, decision)
                pending.open.append(
                    OpenDecision(decision, decision.attribution_deadline.timestamp())
                )
                result.decisions.append(decision)
                result.outputs.append(
                    Output(
                        self._topics.decisions,
                        decision.customer_id.encode(),
                        self._action(decision),
                    )
                )
                self._decisions(
                    decision.campaign,
                    decision.action_id,
                    str(decision.explore).lower(),
                    str(decision.holdout).lower(),
                ).inc()
                self._decision_reasons(decision.campaign, decision.reason).inc()
                if trace.guardrails.removed:
                    for guardrail in trace.guardrails.counts():
                        self._guardrail_hits(decision.campaign, guardrail).inc()
                if log.isEnabledFor(logging.DEBUG):
                    log.debug(
                        "decided",
                        extra={
                            "customer": customer_ref(
                                decision.customer_id, self.settings.log_customer_ids
                            ),
                            "campaign": decision.campaign,
                            "action": decision.action_id,
                            "propensity": decision.propensity,
                            "reason": decision.reason,
                        },
                    )
                latency = (decision.decided_ts - decision.trigger_ts).total_seconds()
                if latency >= 0:
                    self.metrics.latency.observe(latency)
        return state

    def _close(
        self,
        pending: PendingSet,
        item: OpenDecision,
        now: datetime,
        *,
        expired: bool,
        result: Result,
    ) -> None:
        decision = item.decision
        runtime = self.runtimes.get(decision.campaign)
        outcomes = [
            AttributedOutcome(oid, kind, value)
            for oid, kind, value in zip(
                item.outcome_ids, item.outcome_types, item.outcome_values, strict=True
            )
        ]
        if runtime is None:
            reward = 0.0
        elif expired:
            reward = runtime.campaign.reward.default
        else:
            reward = reward_of(runtime.campaign, outcomes)
        record = RewardRecord(
            decision=decision,
            reward=reward,
            outcome_ids=list(item.outcome_ids),
            outcome_types=list(item.outcome_types),
            expired=expired,
            joined_ts=now,
        )
        pending.open.remove(item)
        pending.closed = _ring(pending.closed, decision.decision_id, RECENT_CLOSED)
        if self.learn(record) and runtime is not None:
            record = msgspec.structs.replace(record, learned_version=runtime.bandit.version)
        result.rewards.append(record)
        result.outputs.append(
            Output(self._topics.rewards, decision.customer_id.encode(), encode(record))
        )
        closed_by = "expired" if expired else ("window" if now >= _deadline(item) else "outcome")
        self._rewards(decision.campaign, closed_by).inc()
        self._reward_value(decision.campaign, decision.action_id).observe(reward)
        monitor = self.value_monitors.get(decision.campaign)
        if monitor is not None and not decision.holdout:
            monitor.update(record)
            self._policy_value(decision.campaign).set(monitor.snips)
            self._min_propensity(decision.campaign).set(monitor.min_propensity)
            self._policy_ess(decision.campaign).set(monitor.ess)

    def _finish(
        self,
        result: Result,
        state: CustomerState | None,
        pending: PendingSet,
        applied: Applied,
        state_before: bytes | None,
        pending_before: bytes | None,
    ) -> Result:
        """Set the rows to write, leaving out those unchanged: each write is a changelog record."""
        self._finish_state(result, state, applied, state_before)
        row = encode_pending(pending)
        if row != (_EMPTY_PENDING if pending_before is None else pending_before):
            result.pending = row
        result.next_deadline = min((o.deadline for o in pending.open), default=None)
        return result

    def _finish_state(
        self,
        result: Result,
        state: CustomerState | None,
        applied: Applied,
        state_before: bytes | None,
    ) -> None:
        """Set the state row to write (unless unchanged) and its timers as the next due time."""
        if state is None:
            return
        row = encode_state_row(state, applied)
        if row != state_before:
            result.state = row
        timers = state.timers
        result.next_due = min(due_at for due_at, _ in timers.values()) if timers else None

    def reroute(self, raw: bytes, source: tuple[str, int, int], key: bytes) -> Result:
        """Send a record that arrived on the wrong partition back to its topic, partitioned right,
        with a header naming where it was (the runtime adds the record's own headers first)."""
        self.metrics.rerouted.labels(topic=source[0]).inc()
        topic, partition, offset = source
        where = f"{topic}:{partition}:{offset}".encode()
        output = Output(topic, key, raw, [(REROUTED_FROM_HEADER, where)])
        return Result(None, outputs=[output], rerouted=True)

    @staticmethod
    def _misplaced(
        customer_id: str, source: tuple[str, int, int], key: bytes | None, partitions: int | None
    ) -> bool:
        """True if a record is not where its customer's state is: keyed by someone else, or sent
        without a key (a round-robin or sticky producer) to another partition than murmur2's."""
        if key is not None:
            return key != customer_id.encode()
        return (
            partitions is not None and partition_of(customer_id.encode(), partitions) != source[1]
        )

    def _reroute(self, raw: bytes, source: tuple[str, int, int], customer_id: str) -> Result:
        log.warning(
            "record on %s not keyed by its customer id, or on another partition: re-sent keyed",
            source[0],
        )
        return self.reroute(raw, source, customer_id.encode())

    def processing_error(self, raw: bytes, source: tuple[str, int, int], exc: Exception) -> Result:
        """Dead-letter a record whose processing raised: the worker goes on with the next one."""
        if isinstance(exc, UnreadableRowError):  # not a bug here: the row is kept as it is
            error = RecordError("unreadable_row", str(exc)[:500])
            return self._dead_letter(raw, source, error)
        log.exception("processing failed for %s[%d]@%d", *source)
        error = RecordError("processing_error", f"{type(exc).__name__}: {exc}"[:500])
        return self._dead_letter(raw, source, error)

    def _dead_letter(
        self,
        raw: bytes,
        source: tuple[str, int, int],
        error: RecordError,
        key: bytes | None = None,
    ) -> Result:
        self.metrics.dead_letters.labels(reason=error.reason).inc()
        topic, partition, offset = source
        log.warning(
            "dead-lettered record from %s[%d]@%d: %s", topic, partition, offset, error.reason
        )
        value = dead_letter_record(raw, topic, partition, offset, error, self.clock.now(), key)
        return Result(
            None, outputs=[Output(self._topics.dlq, f"{topic}:{partition}".encode(), value)]
        )


class Applied(NamedTuple):
    """Where the last event applied to a customer's state came from (events topic position)."""

    partition: int
    offset: int


NOTHING_APPLIED = Applied(-1, -1)
_ROW_HEADER = struct.Struct(">iq")
ROW_HEADER_SIZE = _ROW_HEADER.size


def encode_state_row(state: CustomerState, applied: Applied) -> bytes:
    """The customers-table row: the last applied event's partition and offset, then the state.

    Kept in the same row as the state so that the two reach the changelog together: after a
    crash, the records redelivered since the last offset commit are recognised exactly, however
    many there are (the state's own ring of recent event ids only remembers the last few).
    """
    return _ROW_HEADER.pack(applied.partition, applied.offset) + encode_state(state)


def decode_state_row(data: bytes | None) -> tuple[CustomerState | None, Applied]:
    """Read a customers-table row; an absent row is no state and nothing applied."""
    if not data:
        return None, NOTHING_APPLIED
    try:
        partition, offset = _ROW_HEADER.unpack_from(data)
        return decode_state(data[_ROW_HEADER.size :]), Applied(partition, offset)
    except (struct.error, StateError) as exc:
        raise UnreadableRowError("customers", str(exc)) from None


def index_timers(
    timers: TimerIndex,
    customers: Iterable[tuple[Any, Any]],
    pending: Iterable[tuple[Any, Any]],
    metrics: WorkerMetrics,
    log_customer_ids: str,
) -> int:
    """Schedule the due times (timers, attribution deadlines) of these table rows (key and value
    bytes, as RocksDB gives them in raw mode); returns how many customer rows there are.

    An unreadable row is skipped, logged and counted: it stopped both runtimes at every start
    (the index is rebuilt on each assignment)."""
    rows = 0
    for key, data in customers:
        rows += 1
        try:
            state, _ = decode_state_row(data)
        except UnreadableRowError as exc:
            _skip_unreadable(key, exc, metrics, log_customer_ids)
            continue
        if state is not None:
            dues = [due_at for due_at, _ in state.timers.values()]
            if dues:
                timers.schedule(_key_text(key), min(dues))
    for key, data in pending:
        try:
            deadlines = pending_deadlines(data)
        except UnreadableRowError as exc:
            _skip_unreadable(key, exc, metrics, log_customer_ids)
            continue
        if deadlines:
            timers.schedule(_key_text(key), KEEP, min(deadlines))
    return rows


def _key_text(key: bytes) -> str:
    return key.decode(errors="replace")


def _skip_unreadable(
    key: bytes, exc: UnreadableRowError, metrics: WorkerMetrics, log_customer_ids: str
) -> None:
    metrics.unreadable_rows.labels(table=exc.table).inc()
    log.warning(
        "skipped an unreadable table row",
        extra={"customer": customer_ref(_key_text(key), log_customer_ids), "error": str(exc)},
    )


def _find_open(pending: PendingSet, outcome: Outcome) -> OpenDecision | None:
    if outcome.decision_id is not None:
        for item in pending.open:
            if item.decision.decision_id == outcome.decision_id:
                return item
        return None
    ts = outcome.ts.timestamp()
    candidates = [
        o
        for o in pending.open
        if (outcome.campaign is None or o.decision.campaign == outcome.campaign)
        and o.decision.decided_ts.timestamp() <= ts <= o.deadline
    ]
    # Last touch: the most recent decision whose window is open gets the credit.
    return max(candidates, key=lambda o: o.decision.decided_ts) if candidates else None


def _deadline(item: OpenDecision) -> datetime:
    return datetime.fromtimestamp(item.deadline, tz=UTC)


def _ring(items: list[str], new: str, size: int) -> list[str]:
    items = [*items, new]
    return items[-size:]


#: State fields held as epoch seconds, shown as ISO-8601 UTC times.
_EPOCH_FIELDS = (
    "first_seen",
    "last_seen",
    "last_purchase",
    "last_cart_activity",
    "cart_abandoned_at",
)


def _when(epoch_s: float | None) -> datetime | None:
    return None if epoch_s is None else datetime.fromtimestamp(epoch_s, UTC)


def state_view(state: CustomerState) -> dict[str, object]:
    """A customer's state for people, as JSON: field names, not the compact array; times in
    ISO-8601 UTC, not epoch seconds; the number of remembered ids, not their digests."""
    view: dict[str, object] = msgspec.structs.asdict(state)
    view["recent_ids"] = len(state.recent_ids) // EVENT_DIGEST_BYTES
    for name in _EPOCH_FIELDS:
        view[name] = _when(getattr(state, name))
    view["sent"] = [
        {"at": _when(ts), "channel": channel, "action": action, "campaign": campaign}
        for ts, channel, action, campaign in state.sent
    ]
    view["last_action"] = {action: _when(ts) for action, ts in state.last_action.items()}
    view["timers"] = {
        kind: {"due": _when(due_at), "armed_by": event_id}
        for kind, (due_at, event_id) in state.timers.items()
    }
    return msgspec.to_builtins(view)  # type: ignore[no-any-return]


def customer_view(state_row: bytes | None, pending_row: bytes | None) -> dict[str, object] | None:
    """A customer's rows as JSON for the web lookup (state_view and open decisions), or None;
    {"error": ...} if a row does not decode."""
    if state_row is None:
        return None
    try:
        state, _ = decode_state_row(state_row)
        pending = decode_pending(pending_row)
    except UnreadableRowError as exc:
        return {"error": str(exc)}  # the web lookup answers 500 with it
    open_decisions = [
        {
            "decision_id": o.decision.decision_id,
            "campaign": o.decision.campaign,
            "action": o.decision.action_id,
            "window_ends": _deadline(o),
        }
        for o in pending.open
    ]
    return {
        "state": {} if state is None else state_view(state),
        "open_decisions": msgspec.to_builtins(open_decisions),
    }

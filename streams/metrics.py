"""Prometheus metrics of a worker: what operators watch (issue 6 extends the set)."""

from __future__ import annotations

from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary
from prometheus_client.metrics import MetricWrapperBase

_M = TypeVar("_M", bound=MetricWrapperBase)

# Trigger-to-decision latency buckets in seconds: sub-millisecond to seconds.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.02,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


class Children(Generic[_M]):
    """A labelled metric's children by label values, kept: each labels() call costs microseconds.

    Values are given positionally, in the metric's label-name order. The children are the
    metric's own, so what is exported is unchanged; only remove()/clear() on the metric would
    make a kept child stale, and no worker code calls them.
    """

    def __init__(self, metric: _M) -> None:
        """Wrap `metric` (a labelled Counter, Gauge, Histogram or Summary)."""
        self._metric = metric
        self._children: dict[tuple[str, ...], _M] = {}

    def __call__(self, *values: str) -> _M:
        """The child for these label values, created by prometheus_client on first use."""
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class WorkerMetrics:
    """All metrics of one worker, on their own registry so tests and several apps don't collide."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events_in = Counter(
            "kairos_events_total", "Customer events consumed, by type", ["type"], registry=r
        )
        self.outcomes_in = Counter(
            "kairos_outcomes_total", "Outcomes consumed, by type", ["type"], registry=r
        )
        self.expired_customers = Counter(
            "kairos_expired_customers_total",
            "Customers removed from the tables after the state TTL with nothing open",
            registry=r,
        )
        self.erased_customers = Counter(
            "kairos_erased_customers_total",
            "Erasure requests (erasure_requested events) carried out: the customer's rows removed",
            registry=r,
        )
        self.duplicates = Counter(
            "kairos_duplicates_total", "Records ignored as already processed", ["kind"], registry=r
        )
        self.decisions_resent = Counter(
            "kairos_decisions_resent_total",
            "Decisions sent again (byte-identical) after a crash: a replayed record's, or noted",
            ["campaign"],
            registry=r,
        )
        self.triggers = Counter(
            "kairos_triggers_total", "Triggers detected, by type", ["type"], registry=r
        )
        self.stale_triggers = Counter(
            "kairos_stale_triggers_total",
            "Triggers not decided on: older than KAIROS_MAX_TRIGGER_AGE_S when reached",
            ["type"],
            registry=r,
        )
        self.decisions = Counter(
            "kairos_decisions_total",
            "Decisions sent to the action topic",
            ["campaign", "action", "explore", "holdout"],
            registry=r,
        )
        self.decision_reasons = Counter(
            "kairos_decision_reasons_total",
            "Decisions by why their action was chosen: policy, holdout, no_eligible_action (the "
            "rules left only no-action) or guardrail:<name> (guardrails did)",
            ["campaign", "reason"],
            registry=r,
        )
        self.guardrail_hits = Counter(
            "kairos_guardrail_hits_total",
            "Decisions in which a guardrail (unsubscribed, quiet_hours, caps, cooldown) took "
            "one action or more off the table",
            ["campaign", "guardrail"],
            registry=r,
        )
        self.latency = Histogram(
            "kairos_trigger_to_decision_seconds",
            "Time from the trigger (event time or timer due time) to the decision",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rewards = Counter(
            "kairos_rewards_total",
            "Reward records emitted, by how the window closed",
            ["campaign", "closed_by"],
            registry=r,
        )
        self.late_outcomes = Counter(
            "kairos_late_outcomes_total",
            "Outcomes for decisions whose window had closed",
            registry=r,
        )
        self.unattributed_outcomes = Counter(
            "kairos_unattributed_outcomes_total",
            "Outcomes with no decision id and no open attribution window",
            registry=r,
        )
        self.dead_letters = Counter(
            "kairos_dead_letters_total",
            "Records sent to the dead-letter topic",
            ["reason"],
            registry=r,
        )
        self.unreadable_rows = Counter(
            "kairos_unreadable_rows_total",
            "Table rows that did not decode and were skipped by a scan (timer index, retention); "
            "a record that needs one is dead-lettered (reason unreadable_row)",
            ["table"],
            registry=r,
        )
        self.rerouted = Counter(
            "kairos_rerouted_total",
            "Records that arrived on the wrong partition for their customer and were re-sent",
            ["topic"],
            registry=r,
        )
        self.reward_value = Summary(
            "kairos_reward_value",
            "Reward of joined decisions, by campaign and action",
            ["campaign", "action"],
            registry=r,
        )
        self.model_updates = Counter(
            "kairos_model_updates_total", "Rewards learned in process", ["campaign"], registry=r
        )
        self.model_version = Gauge(
            "kairos_model_version", "Model version (updates learned)", ["campaign"], registry=r
        )
        self.snapshots = Counter(
            "kairos_snapshots_total",
            "Model snapshots published or loaded",
            ["direction"],
            registry=r,
        )
        self.worker_state = Gauge(
            "kairos_worker_state",
            "1 for the worker's current state",
            ["state"],
            registry=r,
        )
        self.policy_value = Gauge(
            "kairos_policy_value_snips",
            "Running self-normalised IPS value of the greedy policy on closed rewards",
            ["campaign"],
            registry=r,
        )
        self.min_propensity = Gauge(
            "kairos_min_propensity", "Smallest logged propensity seen", ["campaign"], registry=r
        )
        self.policy_ess = Gauge(
            "kairos_policy_ess",
            "Effective sample size of the running policy-value estimate",
            ["campaign"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "kairos_consumer_lag",
            "Records on the broker not yet processed, per source topic partition",
            ["topic", "partition"],
            registry=r,
        )
        self.table_rows = Gauge(
            "kairos_table_rows", "Rows in this worker's tables (customers)", ["table"], registry=r
        )
        self.loop_lag = Histogram(
            "kairos_event_loop_lag_seconds",
            "How late a 10 ms sleep on the worker's event loop wakes: stalls that every decision "
            "queued meanwhile waits out (long scans, GC, bursts)",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        self.cpu_latency_request = Gauge(
            "kairos_cpu_latency_request_seconds",
            "The CPU wake-up latency request this worker holds (KAIROS_CPU_LATENCY_US), "
            "-1 when it holds none",
            registry=r,
        )
        self.cpu_latency_request.set(-1)
        self.pending_timers = Gauge(
            "kairos_pending_timers", "Timers and attribution deadlines indexed", registry=r
        )
        self.kafka_brokers_up = Gauge(
            "kairos_kafka_brokers_up",
            "Brokers this Kafka client of the worker is connected to (librdkafka statistics, each "
            "second; 0 while the cluster is unreachable)",
            ["client"],
            registry=r,
        )
        self.kafka_brokers_known = Gauge(
            "kairos_kafka_brokers_known",
            "Brokers of the cluster this Kafka client of the worker knows of",
            ["client"],
            registry=r,
        )
        self.producer_queued = Gauge(
            "kairos_producer_queued_records",
            "Records in this producer not yet acknowledged by the broker",
            ["client"],
            registry=r,
        )

    def set_state(self, state: str) -> None:
        """Mark the worker state (starting, recovering, running, stopping)."""
        for name in ("starting", "recovering", "running", "stopping"):
            self.worker_state.labels(state=name).set(1.0 if name == state else 0.0)

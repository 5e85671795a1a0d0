"""librdkafka's statistics as gauges: can each of the worker's Kafka clients reach its brokers, and
how many records wait in each producer.

Without them an outage shows only in the logs: the worker keeps running, decides from its local
tables and queues what it produces (and the redo log keeps it), so every other gauge looks calm.
librdkafka emits a JSON document per client every `statistics.interval.ms`, from the same poll
calls the worker makes anyway; reading it costs well under a millisecond a second.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import orjson

from streams.metrics import WorkerMetrics

#: How often each client reports (ms): the gauges are at most this old.
STATS_INTERVAL_MS: Final[int] = 1000


def brokers_up(stats: dict[str, Any]) -> tuple[int, int]:
    """(brokers connected, brokers known) in one client's statistics.

    The bootstrap addresses are entries of their own (node id -1) until the cluster's metadata
    names the brokers; they are not counted: a client that never reached the cluster knows none.
    """
    known = up = 0
    for broker in stats.get("brokers", {}).values():
        if broker.get("nodeid", -1) < 0:
            continue
        known += 1
        if broker.get("state") == "UP":
            up += 1
    return up, known


def stats_config(metrics: WorkerMetrics, client: str) -> dict[str, Any]:
    """Client settings that report `client`'s statistics to `metrics` (merge into its config)."""
    return {"statistics.interval.ms": STATS_INTERVAL_MS, "stats_cb": _on_stats(metrics, client)}


def _on_stats(metrics: WorkerMetrics, client: str) -> Callable[[str], None]:
    up_gauge = metrics.kafka_brokers_up.labels(client=client)
    known_gauge = metrics.kafka_brokers_known.labels(client=client)
    queued_gauge = metrics.producer_queued.labels(client=client)

    def on_stats(raw: str) -> None:
        try:
            stats = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return  # librdkafka's own output: nothing to act on, the next one comes in a second
        up, known = brokers_up(stats)
        up_gauge.set(up)
        known_gauge.set(known)
        if stats.get("type") == "producer":
            queued_gauge.set(stats.get("msg_cnt", 0))

    return on_stats

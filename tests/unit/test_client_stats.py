"""librdkafka statistics read into the worker's broker and producer-queue gauges."""

from __future__ import annotations

import orjson

from streams.client_stats import brokers_up, stats_config
from streams.metrics import WorkerMetrics


def _stats(kind: str, states: dict[str, tuple[int, str]], queued: int = 0) -> str:
    """A statistics document shaped as librdkafka's (only the fields read), brokers by name."""
    return orjson.dumps(
        {
            "name": f"rdkafka#{kind}-1",
            "type": kind,
            "msg_cnt": queued,
            "brokers": {
                name: {"name": name, "nodeid": nodeid, "state": state}
                for name, (nodeid, state) in states.items()
            },
        }
    ).decode()


def _gauge(metrics: WorkerMetrics, name: str, client: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"client": client})


def test_bootstrap_entries_are_not_brokers_and_only_connected_ones_are_up() -> None:
    stats = orjson.loads(
        _stats(
            "consumer",
            {
                "127.0.0.1:9092/bootstrap": (-1, "UP"),
                "127.0.0.1:9092/1": (1, "UP"),
                "127.0.0.1:9093/2": (2, "TRY_CONNECT"),
                "GroupCoordinator": (-1, "UP"),
            },
        )
    )
    assert brokers_up(stats) == (1, 2)
    assert brokers_up({}) == (0, 0)


def test_the_callback_follows_an_outage_and_the_producer_queue() -> None:
    metrics = WorkerMetrics()
    on_stats = stats_config(metrics, "producer")["stats_cb"]
    on_stats(_stats("producer", {"b/1": (1, "UP")}, queued=3))
    assert _gauge(metrics, "kairos_kafka_brokers_up", "producer") == 1
    assert _gauge(metrics, "kairos_kafka_brokers_known", "producer") == 1
    assert _gauge(metrics, "kairos_producer_queued_records", "producer") == 3
    # The broker goes away: still known, no longer up, records pile up.
    on_stats(_stats("producer", {"b/1": (1, "DOWN")}, queued=250))
    assert _gauge(metrics, "kairos_kafka_brokers_up", "producer") == 0
    assert _gauge(metrics, "kairos_kafka_brokers_known", "producer") == 1
    assert _gauge(metrics, "kairos_producer_queued_records", "producer") == 250
    # A consumer's statistics set no producer queue.
    consumer = stats_config(metrics, "consumer")["stats_cb"]
    consumer(_stats("consumer", {"b/1": (1, "UP")}, queued=7))
    assert _gauge(metrics, "kairos_kafka_brokers_up", "consumer") == 1
    assert _gauge(metrics, "kairos_producer_queued_records", "consumer") == 0
    # Something that is not JSON changes nothing.
    consumer("not json")
    assert _gauge(metrics, "kairos_kafka_brokers_up", "consumer") == 1

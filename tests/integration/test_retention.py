"""Retention on the real broker: idle customers leave both tables, and stay gone after recovery."""

from __future__ import annotations

import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

from streams.settings import Settings
from streams.worker_process import WorkerProcess
from tests.integration.kafka_io import TopicReader, event, produce
from tests.integration.metrics_scrape import scrape, total

TTL_S = 4.0


def _status(worker: WorkerProcess, customer_id: str) -> int:
    try:
        with urllib.request.urlopen(f"{worker.url}/customers/{customer_id}", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def _wait_for_metric(worker: WorkerProcess, name: str, value: float, timeout_s: float) -> float:
    """Poll /metrics until `name` reaches `value` (or the timeout); returns the last reading."""
    deadline = time.monotonic() + timeout_s
    seen = total(scrape(worker.url), name)
    while seen < value and time.monotonic() < deadline:
        time.sleep(0.2)
        seen = total(scrape(worker.url), name)
    return seen


def test_idle_customers_are_removed_and_the_removal_survives_a_changelog_restore(
    settings: Settings, tmp_path: Path
) -> None:
    settings = settings.model_copy(
        update={
            "state_ttl_days": TTL_S / 86_400,
            "lapse_after_days": 1.0 / 86_400,
            "state_sweep_interval_s": 0.5,
        }
    )
    idle = [f"idle-{i}" for i in range(8)]
    decisions = TopicReader(settings, settings.topics.decisions)
    with WorkerProcess(settings, tmp_path / "worker-1.log") as worker:
        worker.wait_ready(60)
        produce(
            settings,
            settings.topics.events,
            [event(cid, "product_view", product_id="p1", category="shoes") for cid in idle]
            + [event("busy", "cart_abandoned")],
        )
        # The busy customer's decision keeps its 2 h attribution window open past the TTL.
        decisions.until(lambda r: any(d["customer_id"] == "busy" for d in r))
        assert _status(worker, idle[0]) == 200
        removed = _wait_for_metric(worker, "kairos_expired_customers_total", len(idle), 60)
        assert removed == len(idle), worker.log_tail()
        assert [_status(worker, cid) for cid in idle] == [404] * len(idle)
        assert _status(worker, "busy") == 200
        assert total(scrape(worker.url), "kairos_table_rows", table="customers") == 1
    decisions.close()
    # The removals reached the changelog as tombstones: a worker rebuilding its tables from
    # Kafka alone does not bring the idle customers back.
    shutil.rmtree(settings.data_dir)
    with WorkerProcess(settings, tmp_path / "worker-2.log") as worker:
        worker.wait_ready(90)
        assert [_status(worker, cid) for cid in idle] == [404] * len(idle)
        assert _status(worker, "busy") == 200
        # A removed customer who comes back starts afresh.
        produce(settings, settings.topics.events, [event(idle[0], "page_view")])
        deadline = time.monotonic() + 30
        while _status(worker, idle[0]) != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _status(worker, idle[0]) == 200
    # The tables' RocksDB memory is bounded by the settings, not Faust's defaults (a 2 GiB block
    # cache and 3 x 64 MiB write buffers per partition): RocksDB records what it opened with.
    options = sorted(settings.data_dir.rglob("OPTIONS-*"))
    tables = {path.parent.name.split("-")[0] for path in options}
    # (The rdkafka runtime's index of unacknowledged writes is a RocksDB database too, bounded
    # the same way.)
    assert {"customers", "pending"} <= tables <= {"customers", "pending", "unacked"}, options
    for path in options:
        text = path.read_text()
        assert f"write_buffer_size={settings.rocksdb_write_buffer_mib * 1024 * 1024}\n" in text
        assert f"max_write_buffer_number={settings.rocksdb_max_write_buffers}\n" in text

"""The broker's request threads, as the latency benchmark reports them, on the real broker.

When the broker is the one deploy/kafka/kafka.sh started (as `make test` does), it runs with the
threads the script sized to this machine's cores.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from bench._proc_stats import broker_run_dir
from bench.latency import broker_request_threads
from streams.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def _started_by_the_script(bootstrap: str) -> bool:
    """True if the broker at `bootstrap` is the local one kafka.sh records as running."""
    try:
        port = (broker_run_dir(REPO) / "kafka.port").read_text().strip()
    except OSError:
        return False
    return bootstrap.split(",")[0] == f"127.0.0.1:{port}"


def test_the_benchmark_names_the_brokers_request_threads(settings: Settings) -> None:
    described = broker_request_threads(settings)
    found = re.fullmatch(r"(\d+) network \+ (\d+) I/O request threads", described)
    assert found is not None, described
    network, io = int(found[1]), int(found[2])
    assert network >= 1 and io >= 1
    if _started_by_the_script(settings.kafka_bootstrap):
        cores = len(os.sched_getaffinity(0))
        assert network == min(max(cores // 2, 1), 3)
        assert io == min(cores, 8)

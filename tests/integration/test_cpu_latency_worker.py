"""A worker asked for a CPU latency request holds it while it runs and drops it when it stops."""

from __future__ import annotations

import os
import struct
from pathlib import Path

from streams.cpu_latency import DEVICE
from streams.settings import Settings
from streams.worker_process import WorkerProcess
from tests.integration.metrics_scrape import scrape, total


def _machine_limit() -> int:
    with DEVICE.open("rb") as device:
        value: int = struct.unpack("=i", device.read(4))[0]
        return value


def test_a_worker_holds_its_cpu_latency_request_while_it_runs(
    settings: Settings, tmp_path: Path
) -> None:
    writable = DEVICE.exists() and os.access(DEVICE, os.W_OK)
    before = _machine_limit() if writable else None
    log = tmp_path / "worker.log"
    with WorkerProcess(settings.model_copy(update={"cpu_latency_us": 0}), log) as worker:
        worker.wait_ready(60)
        held = total(scrape(worker.url), "kairos_cpu_latency_request_seconds")
        during = _machine_limit() if writable else None
    text = log.read_text(errors="replace")
    if not writable:  # the worker says why and runs without it
        assert held == -1
        assert "CPU latency request not held" in text
        return
    assert held == 0
    assert "CPU latency request held" in text
    assert during == 0
    if before != 0:  # nobody else held 0: the worker's exit withdrew its request
        assert _machine_limit() == before

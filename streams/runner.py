"""Start a worker process: logging, topics, campaigns, model snapshots, then the runtime's loop."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.campaign import Campaign
from streams.campaign_files import resolve_campaigns
from streams.cpu_latency import CpuLatencyRequest
from streams.gc_pauses import GcPauseRecorder
from streams.logs import configure_logging
from streams.model_store import load_latest_snapshots
from streams.settings import Settings
from streams.topics import ensure_topics

if TYPE_CHECKING:  # imported where used: Faust only for its runtime (its import takes a while)
    from streams.app import KairosApp
    from streams.rdkafka_worker import RdkafkaWorker

log = logging.getLogger("kairos.worker")


def use_event_loop(name: str) -> None:
    """Install the event-loop policy the worker runs on; must run before Faust creates its loop."""
    if name == "uvloop":
        import mode.loop

        mode.loop.use("uvloop")


class DataDirError(RuntimeError):
    """The table directory (KAIROS_DATA_DIR) cannot be made or written."""


def check_data_dir(path: Path) -> None:
    """Make the table directory and write a file in it, or raise DataDirError naming it.

    Checked before the worker joins its group: a file in its place or a read-only directory was
    found only once partitions were assigned, as a rebalance failure that did not name the path.
    """
    probe = path / f".kairos-write-check-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise DataDirError(
            f"cannot write the table directory {path} (KAIROS_DATA_DIR): {exc.strerror or exc}"
        ) from None


def run_worker(settings: Settings) -> None:
    """Run a worker in this process until SIGTERM or Ctrl-C; returns after a clean stop."""
    started = time.monotonic()
    configure_logging(settings.log_level)
    campaigns = resolve_campaigns(settings.campaigns)
    check_data_dir(settings.data_dir)
    ensure_topics(settings, settings.broker_wait_s)
    # Held for the process's life: the kernel drops it when the process ends, however it ends.
    cpu_latency = hold_cpu_latency(settings)
    if settings.runtime == "rdkafka":
        try:
            code = run_rdkafka_worker(settings, campaigns, started, cpu_latency)
        finally:
            if cpu_latency is not None:
                cpu_latency.release()
        if code:
            raise SystemExit(code)
        return
    use_event_loop(settings.event_loop)
    from faust.worker import Worker  # the Faust runtime only: importing Faust takes a while

    from streams.app import KairosApp

    kairos = KairosApp(settings, campaigns)
    if settings.processing_guarantee == "exactly_once":
        removed = kairos.discard_local_tables()
        log.info(
            "exactly-once: local tables rebuilt from the changelog", extra={"removed": removed}
        )
    _prepare(kairos, settings, campaigns, started, cpu_latency)
    worker = Worker(
        kairos.app,
        loglevel=settings.log_level,
        quiet=True,
        redirect_stdouts=False,
        override_logging=False,
    )
    worker.execute_from_commandline()


def hold_cpu_latency(settings: Settings) -> CpuLatencyRequest | None:
    """Hold the configured CPU latency request (None if none is configured; see cpu_latency)."""
    if settings.cpu_latency_us is None:
        return None
    request = CpuLatencyRequest(settings.cpu_latency_us)
    request.hold()
    return request


def run_rdkafka_worker(
    settings: Settings,
    campaigns: list[Campaign],
    started: float,
    cpu_latency: CpuLatencyRequest | None = None,
) -> int:
    """The rdkafka runtime (streams/rdkafka_worker.py) with its web server; returns the exit code."""
    from streams.processor import customer_view
    from streams.rdkafka_worker import RdkafkaWorker
    from streams.web_server import WorkerWebServer

    worker = RdkafkaWorker(settings, campaigns)
    _prepare(worker, settings, campaigns, started, cpu_latency)

    def lookup(customer_id: str) -> dict[str, Any] | None:
        rows = worker.customer_rows(customer_id)
        return None if rows is None else customer_view(*rows)

    web = WorkerWebServer(
        settings.web_host,
        settings.web_port,
        worker.metrics,
        lambda: worker.ready and not worker.rebalancing,
        lookup,
    ).start()
    try:
        return worker.run()
    finally:
        web.stop()


def _prepare(
    worker: KairosApp | RdkafkaWorker,
    settings: Settings,
    campaigns: list[Campaign],
    started: float,
    cpu_latency: CpuLatencyRequest | None = None,
) -> None:
    """What every runtime does before it runs: snapshots, GC pause metrics, model following."""
    loaded = load_latest_snapshots(settings, worker.processor)
    log.info(
        "worker configured",
        extra={
            "runtime": settings.runtime,
            "campaigns": [c.name for c in campaigns],
            "snapshots_loaded": loaded,
            "bootstrap": settings.kafka_bootstrap,
            "data_dir": str(settings.data_dir),
        },
    )
    worker.started_at = started
    if cpu_latency is not None and cpu_latency.held:
        worker.metrics.cpu_latency_request.set(cpu_latency.microseconds / 1e6)
    GcPauseRecorder(worker.metrics.registry).install()
    worker.freeze_heap_when_ready = settings.gc_freeze
    if settings.learning == "remote":
        from streams.learner import ModelFollower

        ModelFollower(settings, worker.processor.runtimes, worker.metrics).start()

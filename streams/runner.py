"""Start a worker process: logging, topics, campaigns, model snapshots, then the Faust worker."""

from __future__ import annotations

import logging
import time

from faust.worker import Worker

from streams.app import KairosApp
from streams.campaign_files import resolve_campaigns
from streams.gc_pauses import GcPauseRecorder
from streams.logs import configure_logging
from streams.model_store import load_latest_snapshots
from streams.settings import Settings
from streams.topics import ensure_topics

log = logging.getLogger("kairos.worker")


def use_event_loop(name: str) -> None:
    """Install the event-loop policy the worker runs on; must run before Faust creates its loop."""
    if name == "uvloop":
        import mode.loop

        mode.loop.use("uvloop")


def run_worker(settings: Settings) -> None:
    """Run a worker in this process until SIGTERM or Ctrl-C; returns after a clean stop."""
    started = time.monotonic()
    configure_logging(settings.log_level)
    use_event_loop(settings.event_loop)
    campaigns = resolve_campaigns(settings.campaigns)
    ensure_topics(settings)
    kairos = KairosApp(settings, campaigns)
    if settings.processing_guarantee == "exactly_once":
        removed = kairos.discard_local_tables()
        log.info(
            "exactly-once: local tables rebuilt from the changelog", extra={"removed": removed}
        )
    loaded = load_latest_snapshots(settings, kairos.processor)
    log.info(
        "worker configured",
        extra={
            "campaigns": [c.name for c in campaigns],
            "snapshots_loaded": loaded,
            "bootstrap": settings.kafka_bootstrap,
            "data_dir": str(settings.data_dir),
        },
    )
    kairos.started_at = started
    GcPauseRecorder(kairos.metrics.registry).install()
    kairos.freeze_heap_when_ready = settings.gc_freeze
    if settings.learning == "remote":
        from streams.learner import ModelFollower

        ModelFollower(settings, kairos.processor.runtimes, kairos.metrics).start()
    worker = Worker(
        kairos.app,
        loglevel=settings.log_level,
        quiet=True,
        redirect_stdouts=False,
        override_logging=False,
    )
    worker.execute_from_commandline()

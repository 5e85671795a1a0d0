"""Garbage-collector pauses of a worker: measured as a metric, and made shorter by freezing the
start-up heap.

CPython's cyclic collector stops the event loop while it runs, and a full (generation 2)
collection walks every tracked object: in a worker that is Faust, aiokafka, River models and the
campaign runtimes, hundreds of thousands of objects that live as long as the process. A pause
there delays every decision queued behind it. ``gc.freeze()`` after start-up moves those objects
to a permanent generation that collections skip; what is frozen is still freed by reference
counting, only cycles among start-up objects would stay (they are built once and kept).
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

log = logging.getLogger("kairos.gc")

#: Collection pauses from tens of microseconds (young generation) to a tenth of a second.
PAUSE_BUCKETS = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25)


class GcPauseRecorder:
    """Times every collection through ``gc.callbacks`` into ``kairos_gc_pause_seconds``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.pauses = Histogram(
            "kairos_gc_pause_seconds",
            "Garbage-collector pauses (the event loop stops meanwhile), by generation",
            ["generation"],
            buckets=PAUSE_BUCKETS,
            registry=registry,
        )
        self._by_generation = [self.pauses.labels(generation=str(g)) for g in range(3)]
        self._started = 0.0

    def install(self) -> None:
        """Start timing collections (idempotent)."""
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def uninstall(self) -> None:
        """Stop timing collections."""
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started:
            self._by_generation[info["generation"]].observe(time.perf_counter() - self._started)
            self._started = 0.0


def freeze_startup_heap() -> int:
    """Collect once, then exempt every surviving object from later collections; returns how many."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("start-up heap frozen for the garbage collector", extra={"objects": frozen})
    return frozen

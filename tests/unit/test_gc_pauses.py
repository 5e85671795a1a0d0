"""The worker's garbage-collector pause metric and start-up heap freeze."""

from __future__ import annotations

import gc

from prometheus_client import CollectorRegistry

from streams.gc_pauses import GcPauseRecorder, freeze_startup_heap


def _count(registry: CollectorRegistry, generation: str) -> float:
    value = registry.get_sample_value("kairos_gc_pause_seconds_count", {"generation": generation})
    return value or 0.0


def test_each_collection_is_timed_under_its_generation_until_uninstalled() -> None:
    registry = CollectorRegistry()
    recorder = GcPauseRecorder(registry)
    recorder.install()
    recorder.install()  # twice: still one callback
    try:
        gc.collect(2)
        gc.collect(2)
        assert _count(registry, "2") == 2
        total = registry.get_sample_value("kairos_gc_pause_seconds_sum", {"generation": "2"})
        assert total is not None and total > 0
    finally:
        recorder.uninstall()
    gc.collect(2)
    assert _count(registry, "2") == 2


def test_freezing_moves_the_live_heap_out_of_the_collected_generations() -> None:
    survivors = [[i] for i in range(10_000)]  # tracked objects that outlive the freeze
    try:
        frozen = freeze_startup_heap()
        assert frozen == gc.get_freeze_count() >= len(survivors)
        collected = {id(o) for g in range(3) for o in gc.get_objects(generation=g)}
        assert not any(id(s) in collected for s in survivors)  # no collection walks them
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0

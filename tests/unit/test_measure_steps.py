"""The latency bench's reader is never held up by its own bookkeeping (bench/_measure_steps.py)."""

from __future__ import annotations

import gc
import threading

from bench._measure_steps import LagSampler, collector_paused


class _BlockingProbe:
    """A lag probe whose first answer waits until the test releases it (a slow broker)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def lag(self) -> int | None:
        self.calls += 1
        self.entered.set()
        self.release.wait(10)
        return 7 * self.calls


def test_lag_sampler_samples_on_its_own_thread() -> None:
    probe = _BlockingProbe()
    sampler = LagSampler(probe, interval_s=0.0).start()
    # The probe is blocked inside lag(), and this thread still runs: the reader would too.
    assert probe.entered.wait(10)
    assert sampler.samples == []
    probe.release.set()
    sampler.stop()
    last = sampler.join()
    assert last == 7 * probe.calls  # stop() takes one last sample
    assert sampler.samples == [7 * n for n in range(1, probe.calls)]
    assert sampler.samples  # the first, blocked sample was kept


def test_collector_paused_turns_cyclic_collection_off_and_back() -> None:
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_collector_paused_leaves_a_disabled_collector_disabled() -> None:
    gc.disable()
    try:
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()

"""The CPU latency request: what it writes to the device, when it lets go, how it fails."""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path

import pytest

from streams import cpu_latency
from streams.cpu_latency import DEVICE, CpuLatencyRequest
from streams.runner import hold_cpu_latency
from streams.settings import Settings


def _fd_count() -> int:
    return sum(1 for _ in Path("/proc/self/fd").iterdir())


def test_the_request_writes_one_native_int32_and_holds_the_device_until_released(
    tmp_path: Path,
) -> None:
    device = tmp_path / "cpu_dma_latency"
    device.write_bytes(b"")
    before = _fd_count()
    request = CpuLatencyRequest(25, device)
    assert not request.held
    assert request.hold()
    assert request.held
    assert request.hold()  # holding again neither rewrites nor opens a second descriptor
    assert device.read_bytes() == struct.pack("=i", 25)
    assert request.effective() == 25
    assert _fd_count() == before + 1
    request.release()
    assert not request.held
    assert request.effective() is None
    assert _fd_count() == before
    request.release()  # twice is harmless


def test_the_context_manager_releases_the_request_even_when_the_block_fails(
    tmp_path: Path,
) -> None:
    device = tmp_path / "cpu_dma_latency"
    device.write_bytes(b"")
    before = _fd_count()
    with pytest.raises(RuntimeError), CpuLatencyRequest(0, device) as request:
        assert request.held
        raise RuntimeError("stop")
    assert not request.held
    assert _fd_count() == before


def test_a_missing_or_unwritable_device_is_a_warning_not_a_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = CpuLatencyRequest(0, tmp_path / "absent")
    with caplog.at_level(logging.WARNING, logger="kairos.cpu_latency"):
        assert not missing.hold()
    assert not missing.held
    assert "CPU latency request not held" in caplog.text
    assert str(tmp_path / "absent") in caplog.text


def test_a_negative_request_is_refused() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        CpuLatencyRequest(-1)


def test_the_setting_comes_from_the_environment_and_is_off_by_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert Settings().cpu_latency_us is None
    assert hold_cpu_latency(Settings()) is None
    monkeypatch.setenv("KAIROS_CPU_LATENCY_US", "0")
    assert Settings().cpu_latency_us == 0
    device = tmp_path / "cpu_dma_latency"
    device.write_bytes(b"")
    monkeypatch.setattr(cpu_latency, "DEVICE", device)
    request = hold_cpu_latency(Settings())
    assert request is not None and request.held
    assert device.read_bytes() == struct.pack("=i", 0)
    request.release()
    monkeypatch.setenv("KAIROS_CPU_LATENCY_US", "-5")
    with pytest.raises(ValueError, match="cpu_latency_us"):
        Settings()


def test_on_the_real_device_a_held_zero_is_the_machines_limit_until_released() -> None:
    """Where the kernel offers the device and it is writable; otherwise hold() must say no."""
    request = CpuLatencyRequest(0)
    if not (DEVICE.exists() and os.access(DEVICE, os.W_OK)):
        assert not request.hold()
        return
    with request:
        assert request.held
        assert request.effective() == 0
    assert not request.held

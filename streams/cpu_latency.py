"""Hold a Linux CPU wake-up latency request (PM QoS, /dev/cpu_dma_latency) while the worker runs.

Why: on virtual machines whose idle vCPU halts at once (cpuidle `haltpoll` with polling off, as
on this project's 2-core VMs), a worker that sleeps between records wakes on cold caches and
pays the hypervisor's wake-up. Measured in process (BENCHMARKS.md, Latency): a trigger cost
186-194 µs of CPU back to back, 495-514 µs with 1 ms of sleep between triggers, and 271-274 µs
the same way with a 0 µs request held. A request of 0 makes the kernel's idle loop poll instead
of halting, so a woken thread starts at once on a warm CPU.

The request is the kernel's documented interface (Documentation/power/pm_qos_interface.rst): it
lasts while the device stays open, so it ends with the process, however that ends. It is
machine-wide (every process on the machine gets the faster wake-ups, and idle CPUs look busy to
the host), and it needs write access to the device (root, or a udev rule), hence off unless the
operator asks for it (`KAIROS_CPU_LATENCY_US`). If it cannot be held the worker says why and runs
on without it.
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path
from types import TracebackType

log = logging.getLogger("kairos.cpu_latency")

DEVICE = Path("/dev/cpu_dma_latency")
#: The device takes and returns one native signed 32-bit integer (microseconds).
_VALUE = struct.Struct("=i")


class CpuLatencyRequest:
    """A held PM QoS CPU latency request of `microseconds`; released by release() or exit.

    ``with CpuLatencyRequest(0): ...`` holds it for the block. `held` says whether the kernel
    took it (False when the device is missing or not writable; the reason is logged).
    """

    def __init__(self, microseconds: int, device: Path | None = None) -> None:
        if microseconds < 0:
            raise ValueError(f"a CPU latency request is >= 0 µs, not {microseconds}")
        self.microseconds = microseconds
        self.device = device or DEVICE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """True while the request is registered with the kernel."""
        return self._fd is not None

    def hold(self) -> bool:
        """Register the request (idempotent); False, with a warning logged, if it cannot be."""
        if self._fd is not None:
            return True
        try:
            try:
                fd = os.open(self.device, os.O_RDWR | os.O_CLOEXEC)
            except PermissionError:  # writing is what counts; reading back is a nicety
                fd = os.open(self.device, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            log.warning(
                "CPU latency request not held: cannot open %s (%s); the worker runs without it",
                self.device,
                exc.strerror or exc,
                extra={"cpu_latency_us": self.microseconds},
            )
            return False
        try:
            os.write(fd, _VALUE.pack(self.microseconds))
        except OSError as exc:
            os.close(fd)
            log.warning(
                "CPU latency request not held: writing %s failed (%s)",
                self.device,
                exc.strerror or exc,
                extra={"cpu_latency_us": self.microseconds},
            )
            return False
        self._fd = fd
        log.info(
            "CPU latency request held: idle CPUs wake within %d µs",
            self.microseconds,
            extra={"cpu_latency_us": self.microseconds, "device": str(self.device)},
        )
        return True

    def effective(self) -> int | None:
        """The machine's effective limit now (the strictest request of any process), if held."""
        if self._fd is None:
            return None
        try:
            data = os.pread(self._fd, _VALUE.size, 0)
        except OSError:  # opened write-only
            return None
        if len(data) != _VALUE.size:
            return None
        value: int = _VALUE.unpack(data)[0]
        return value

    def release(self) -> None:
        """Withdraw the request (closing the device is how the kernel's interface does it)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> CpuLatencyRequest:
        self.hold()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

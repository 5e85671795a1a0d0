"""A worker in a child process: start it, wait until it is ready, stop or kill it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from streams.settings import Settings, settings_env


class WorkerProcess:
    """`kairos worker` (or another command, e.g. `learner`) as a child process, configured by
    environment variables. Readiness (/readyz) is the worker's: a learner serves no web page."""

    def __init__(
        self,
        settings: Settings,
        log_path: Path,
        command: str = "worker",
        module: str = "streams.cli",
    ) -> None:
        self.settings = settings
        self.log_path = log_path
        self.command = command
        #: The module run with `python -m` (tests run the CLI through a fault-injecting wrapper).
        self.module = module
        self.process: subprocess.Popen[bytes] | None = None
        self.ready_after_s: float | None = None

    def start(self) -> WorkerProcess:
        """Launch the worker; returns at once (see wait_ready)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("KAIROS_")}
        env.update(settings_env(self.settings))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self._started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module, self.command],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        return self

    @property
    def url(self) -> str:
        """Base URL of the worker's web server."""
        return f"http://{self.settings.web_host}:{self.settings.web_port}"

    def is_ready(self) -> bool:
        """True when /readyz answers 200 (tables recovered, partitions assigned)."""
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=1.0) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def wait_ready(self, timeout_s: float = 60.0) -> float:
        """Block until ready; return seconds since start. Raises if the worker exits or times out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"worker exited during start-up; log: {self.log_tail()}")
            if self.is_ready():
                self.ready_after_s = time.monotonic() - self._started
                return self.ready_after_s
            time.sleep(0.05)
        raise TimeoutError(f"worker not ready after {timeout_s} s; log: {self.log_tail()}")

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """Graceful stop (SIGTERM), then SIGKILL if it does not exit in time."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)

    def kill(self) -> int:
        """Crash the worker (SIGKILL): no clean shutdown, no final commit."""
        assert self.process is not None
        self.process.kill()
        return self.process.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the worker's log, for error messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

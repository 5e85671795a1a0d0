"""librdkafka's log lines as Kairos log records, one line per kind of message instead of per retry.

Left to itself librdkafka writes to stderr in a format of its own and repeats a connection failure
at every reconnect: about 580 lines in the 30 s a command waits for a broker that is not running.
Every confluent-kafka client Kairos makes is given `kafka_logger()` (Settings.confluent_config), so
its lines reach the JSON logs of the worker, at librdkafka's own level, and `RepeatFilter` passes
the first line of a kind and then one a window with how many like it were held back.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Final

#: Name of the logger every librdkafka client of Kairos writes to.
KAFKA_LOGGER_NAME: Final[str] = "kairos.kafka"
#: Seconds during which lines of the same kind after the first are held back (and counted).
REPEAT_WINDOW_S: Final[float] = 60.0

# What differs between two lines that say the same thing: the client's name (admin, producer and
# consumer fail alike) and the elapsed times and repeat counts librdkafka appends. Broker
# addresses are kept, so a cluster with two brokers down shows both.
_CLIENT_NAME = re.compile(r"\[rdkafka#[a-z]+-\d+\]")
_ELAPSED = re.compile(
    r"\(after \d+ms in state [A-Z_]+\)|\d+ms|, \d+ identical error\(s\) suppressed"
)


def line_kind(message: str) -> str:
    """The part of a librdkafka line that says what happened, without who and how long."""
    return _ELAPSED.sub("", _CLIENT_NAME.sub("", message))


class RepeatFilter(logging.Filter):
    """Pass the first line of each kind, then at most one a window, noting how many were held back."""

    def __init__(
        self, window_s: float = REPEAT_WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        # kind -> (when a line of it last passed, lines held back since)
        self._seen: dict[tuple[int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """True for a line to log; a passing line after held-back ones says how many there were."""
        key = (record.levelno, line_kind(record.getMessage()))
        now = self._clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] < self.window_s:
                self._seen[key] = (seen[0], seen[1] + 1)
                return False
            self._seen[key] = (now, 0)
            if len(self._seen) > 1000:  # bounded: forget kinds not seen for a window
                self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.window_s}
        if seen is not None and seen[1]:
            record.msg = f"{record.getMessage()} ({seen[1]} more like it in the last "
            record.msg += f"{now - seen[0]:.0f} s not shown)"
            record.args = None
            record.repeats = seen[1]
        return True


def kafka_logger() -> logging.Logger:
    """The logger librdkafka clients write to, with its RepeatFilter attached once."""
    logger = logging.getLogger(KAFKA_LOGGER_NAME)
    if not any(isinstance(f, RepeatFilter) for f in logger.filters):
        logger.addFilter(RepeatFilter())
    return logger

"""librdkafka's lines reach Kairos' logs once per kind, not once per reconnect, and never raw on stderr."""

from __future__ import annotations

import logging
import time

import pytest

from streams.kafka_logs import KAFKA_LOGGER_NAME, RepeatFilter, line_kind
from streams.settings import Settings
from streams.topics import TopicSetupError, ensure_topics, existing_topics

REFUSED = (
    "[thrd:127.0.0.1:1/bootstrap]: 127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: "
    "Connection refused (after {ms}ms in state CONNECT)"
)


def _record(
    message: str, client: str = "producer-1", level: int = logging.ERROR
) -> logging.LogRecord:
    # confluent-kafka logs as logger.log(level, "%s [%s] %s", facility, client name, text)
    return logging.LogRecord(
        KAFKA_LOGGER_NAME, level, "", 0, "%s [%s] %s", ("FAIL", f"rdkafka#{client}", message), None
    )


def test_a_kind_of_line_is_the_text_without_client_name_or_elapsed_time() -> None:
    first = _record(REFUSED.format(ms=0)).getMessage()
    other = _record(REFUSED.format(ms=17), client="consumer-3").getMessage()
    assert line_kind(first) == line_kind(other)
    counted = other + ", 584 identical error(s) suppressed"  # librdkafka's own count: same kind
    assert line_kind(counted) == line_kind(first)
    elsewhere = first.replace("127.0.0.1:1", "10.0.0.2:9092")
    assert line_kind(elsewhere) != line_kind(first)  # each broker down is shown


def test_repeats_within_the_window_are_held_back_and_counted() -> None:
    now = [100.0]
    repeat = RepeatFilter(window_s=60.0, clock=lambda: now[0])
    assert repeat.filter(_record(REFUSED.format(ms=0)))
    for ms in range(5):
        now[0] += 1.0
        assert not repeat.filter(_record(REFUSED.format(ms=ms), client="consumer-2"))
    warning = _record("something else", level=logging.WARNING)
    assert repeat.filter(warning)
    now[0] += 60.0
    later = _record(REFUSED.format(ms=3))
    assert repeat.filter(later)
    assert later.getMessage().endswith("(5 more like it in the last 65 s not shown)")
    assert later.repeats == 5  # type: ignore[attr-defined]
    now[0] += 1.0
    assert not repeat.filter(_record(REFUSED.format(ms=0)))


def test_waiting_for_a_broker_that_is_not_running_logs_one_line_and_fails_in_time(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(kafka_bootstrap="127.0.0.1:1")
    logger = logging.getLogger(KAFKA_LOGGER_NAME)
    for attempt in (existing_topics, ensure_topics):
        caplog.clear()
        logger.filters[:] = [RepeatFilter()]  # forget what earlier tests logged
        started = time.monotonic()
        with (
            caplog.at_level(logging.DEBUG, logger=KAFKA_LOGGER_NAME),
            pytest.raises(TopicSetupError, match=r"no answer from 127.0.0.1:1 within 2 s"),
        ):
            attempt(settings, timeout_s=2.0)
        assert time.monotonic() - started < 10.0
        refused = [r for r in caplog.records if "Connection refused" in r.getMessage()]
        # librdkafka retried every ~50 ms (about 40 lines in 2 s); the first is shown
        assert len(refused) == 1, [r.getMessage() for r in refused]
    assert "%3|" not in capfd.readouterr().err  # nothing in librdkafka's own stderr format

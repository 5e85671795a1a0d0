"""Injected clocks: the core never reads the wall clock itself, so tests and replays are exact."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """Anything that tells the current time as a timezone-aware UTC datetime."""

    def now(self) -> datetime:
        """Return the current time (aware, UTC)."""
        ...


class SystemClock:
    """The real wall clock, in UTC."""

    def now(self) -> datetime:
        """Return the wall-clock time now, aware, in UTC."""
        return datetime.now(UTC)


def _aware_utc(dt: datetime) -> datetime:
    """Reject naive datetimes (ambiguous) and convert aware ones to UTC."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"naive datetime {dt!r}: the clock needs a timezone-aware time")
    return dt.astimezone(UTC)


class ManualClock:
    """A clock that only moves when told to: for tests, replays and simulations."""

    def __init__(self, start: datetime) -> None:
        """Start at `start` (must be timezone-aware; kept in UTC)."""
        self._now = _aware_utc(start)

    def now(self) -> datetime:
        """Return the clock's current time (aware, UTC)."""
        return self._now

    def advance(self, seconds: float) -> datetime:
        """Move forward by `seconds` (not backwards: time in the core is monotonic); return now."""
        if seconds < 0:
            raise ValueError(f"cannot advance by a negative amount ({seconds}s); use set()")
        self._now = self._now + timedelta(seconds=seconds)
        return self._now

    def set(self, dt: datetime) -> datetime:
        """Jump to `dt` (aware; may go backwards, e.g. to replay); return it in UTC."""
        self._now = _aware_utc(dt)
        return self._now

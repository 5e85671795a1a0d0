"""The Faust runtime's timer task and data directory (no broker needed)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from engine.campaign import builtin_campaign
from engine.clock import ManualClock
from streams.app import KairosApp
from streams.settings import Settings

TICK = 0.05


def _app(tmp_path: Path) -> tuple[KairosApp, float]:
    clock = ManualClock(datetime(2026, 3, 2, 12, 0, tzinfo=UTC))
    kairos = KairosApp(Settings(data_dir=tmp_path), [builtin_campaign("cart_abandonment")], clock)
    return kairos, clock.now().timestamp()


def test_the_timer_task_wakes_at_the_soonest_due_time_and_at_most_a_tick_later(
    tmp_path: Path,
) -> None:
    kairos, now = _app(tmp_path)
    kairos.ready = True
    assert kairos.timer_wait(TICK) == TICK  # nothing due: a tick
    kairos.timers.schedule("far", now + 30.0)
    assert kairos.timer_wait(TICK) == TICK
    kairos.timers.schedule("soon", now + 0.012)
    assert abs(kairos.timer_wait(TICK) - 0.012) < 1e-6  # epoch floats: ~0.2 µs apart
    kairos.timers.schedule("past", now - 5.0)
    assert kairos.timer_wait(TICK) == 0.0


def test_the_timer_task_sleeps_a_tick_while_nothing_may_fire(tmp_path: Path) -> None:
    kairos, now = _app(tmp_path)
    kairos.timers.schedule("past", now - 5.0)
    assert kairos.timer_wait(TICK) == TICK  # not ready yet
    kairos.ready = True
    kairos.app.rebalancing = True
    assert kairos.timer_wait(TICK) == TICK  # due times already past must not spin the task
    kairos.app.rebalancing = False
    assert kairos.timer_wait(TICK) == 0.0


def test_a_new_nested_data_directory_is_made_before_faust_starts(tmp_path: Path) -> None:
    data_dir = tmp_path / "not" / "there" / "yet"
    kairos = KairosApp(Settings(data_dir=data_dir), [builtin_campaign("cart_abandonment")])
    kairos.app._create_directories()  # what Faust's first start does; it makes no parents
    assert Path(kairos.app.conf.tabledir).is_dir()

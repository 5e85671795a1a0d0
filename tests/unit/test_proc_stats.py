"""The benches' machine CPU readings from /proc/stat: busy, total and stolen time."""

from __future__ import annotations

import os
from pathlib import Path

from bench._proc_stats import CpuMeter, machine_ticks, process_cpu_s


def test_machine_ticks_counts_steal_as_busy_and_reports_it(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  100 5 50 800 20 0 10 15 0 0\ncpu0 50 2 25 400 10 0 5 8 0 0\n")
    busy, total, steal = machine_ticks(stat)
    assert total == 100 + 5 + 50 + 800 + 20 + 0 + 10 + 15  # guest time is inside user already
    assert busy == total - 800 - 20
    assert steal == 15


def test_machine_ticks_of_an_unreadable_file_is_zero(tmp_path: Path) -> None:
    assert machine_ticks(tmp_path / "missing") == (0, 0, 0)


def test_cpu_meter_reports_stolen_apart_from_others() -> None:
    meter = CpuMeter({})
    meter.start()
    first = machine_ticks()[1]
    while machine_ticks()[1] == first:  # busy until /proc/stat moves (it ticks at 100 Hz)
        pass
    reading = meter.stop()
    assert set(reading) == {"machine", "stolen", "others"}
    assert reading["stolen"] >= 0.0
    assert reading["others"] >= 0.0


def test_cpu_meter_adds_up_the_processes_of_one_system() -> None:
    # A system of several processes (e.g. two workers): one column, their CPU added up. The
    # same process named twice in a group counts twice, which shows that the group is summed.
    me = os.getpid()
    meter = CpuMeter({"alone": me, "group": (me, me), "none": 0, "gone": (me, 2**22 + 1)})
    meter.start()
    until = process_cpu_s(me)
    assert until is not None
    while (process_cpu_s(me) or 0.0) < until + 0.05:  # burn 50 ms of CPU in this process
        pass
    reading = meter.stop()
    assert "none" not in reading  # pid 0: not measured
    assert "gone" not in reading  # a process of the group has no /proc entry: no reading
    assert reading["alone"] > 0.0
    # Twice the lone reading, give or take a clock tick between the two readings of each.
    assert 1.5 * reading["alone"] < reading["group"] < 2.5 * reading["alone"]

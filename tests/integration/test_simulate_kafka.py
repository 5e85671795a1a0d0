"""`kairos simulate --kafka`: simulated customers against a real worker through the broker."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from streams.settings import Settings
from streams.simulate_command import run_kafka_simulation


def test_simulation_through_kafka_and_a_worker(settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    console = Console(record=True, width=120)
    path = run_kafka_simulation(
        settings, console, customers=60, decisions=60, seed=3, timeout_s=60.0, out=out
    )
    assert path == out and out.exists()
    page = out.read_text()
    assert "<svg" in page and "through Kafka" in page
    text = console.export_text()
    assert "decisions came back through the worker" in text
    came_back = int(text.split(" decisions came back through the worker")[0].split()[-1])
    assert came_back >= 60

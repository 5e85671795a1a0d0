"""The worker's live dashboard and metrics against a real worker on the real broker.

Events go in, /metrics counters must grow by exactly what was produced, and /dashboard rendered by
headless Chromium must show the same figures. The screenshot is kept in artifacts/ (gitignored).
Chromium is the Debian package `chromium`; without it this test fails under CI and skips elsewhere.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.settings import Settings
from streams.worker_process import WorkerProcess
from tests.integration.kafka_io import TopicReader, event, produce

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _chromium() -> str:
    """Path of a Chromium binary; fail under CI, skip elsewhere, when there is none."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    message = "chromium not found: apt-get update && apt-get install -y chromium"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return bytes(response.read())


def _scrape(worker: WorkerProcess) -> Scrape:
    """Every sample of /metrics, by (sample name, sorted labels)."""
    samples: Scrape = {}
    text = _get(f"{worker.url}/metrics").decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _sum(scrape: Scrape, name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, sample_labels), value in scrape.items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    )


def _grew(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return _sum(after, name, **labels) - _sum(before, name, **labels)


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)


def _chromium_run(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1280,900",
        "--virtual-time-budget=5000",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def _figure(dom: str, element_id: str) -> str:
    """The data-value attribute of the element with this id in the rendered DOM."""
    match = re.search(rf'id="{element_id}"[^>]*\sdata-value="([^"]*)"', dom) or re.search(
        rf'data-value="([^"]*)"[^>]*\sid="{element_id}"', dom
    )
    assert match is not None, f"#{element_id} has no data-value in the rendered page"
    return html.unescape(match.group(1))


def _journeys(customers: list[str]) -> list[dict[str, Any]]:
    records = []
    for cid in customers:
        records.append(event(cid, "product_view", product_id="p1", category="shoes", price=80.0))
        records.append(event(cid, "cart_add", product_id="p1", category="shoes", price=80.0))
        records.append(event(cid, "cart_abandoned"))
    return records


def test_dashboard_and_metrics_follow_the_records_that_flow(
    settings: Settings, tmp_path: Path
) -> None:
    chromium = _chromium()
    customers = [f"dash-{i}" for i in range(15)]
    bad_records = [b"not json at all", b'{"customer_id": "x"}']
    decisions = TopicReader(settings, settings.topics.decisions)
    dlq = TopicReader(settings, settings.topics.dlq)
    with WorkerProcess(settings, tmp_path / "worker.log") as worker:
        worker.wait_ready(60)
        before = _scrape(worker)
        assert _sum(before, "kairos_worker_state", state="running") == 1.0

        journeys = _journeys(customers)  # event times now: the latency is the worker's own
        produce(settings, settings.topics.events, journeys)
        produce(settings, settings.topics.events, bad_records)

        # Every customer abandons explicitly: one cart_abandonment decision each, at least.
        decisions.until(
            lambda r: (
                {d["customer_id"] for d in r if d["campaign"] == "cart_abandonment"}
                >= set(customers)
            )
        )
        dlq.until(lambda r: len(r) >= len(bad_records))
        _wait_for(
            lambda: _grew(before, _scrape(worker), "kairos_events_total") >= len(journeys),
            30,
            "the events counter",
        )
        # Let derived triggers (cart timers of 2 s) fire too, then require a quiet second.
        decisions.poll(3.0)
        seen = len(decisions.records)
        _wait_for(
            lambda: _grew(before, _scrape(worker), "kairos_decisions_total") == seen,
            30,
            f"kairos_decisions_total to grow by the {seen} decisions on the action topic",
        )
        after = _scrape(worker)

        # Counters grew by exactly what flowed.
        for kind in ("product_view", "cart_add", "cart_abandoned"):
            assert _grew(before, after, "kairos_events_total", type=kind) == len(customers), kind
        assert _grew(before, after, "kairos_dead_letters_total") == len(bad_records)
        assert len(dlq.records) == len(bad_records)
        assert _grew(before, after, "kairos_triggers_total", type="cart_abandoned") >= len(
            customers
        )
        assert _grew(before, after, "kairos_decisions_total", campaign="cart_abandonment") == len(
            [d for d in decisions.records if d["campaign"] == "cart_abandonment"]
        )
        holdouts = sum(1 for d in decisions.records if d["holdout"])
        explores = sum(1 for d in decisions.records if d["explore"])
        assert _grew(before, after, "kairos_decisions_total", holdout="true") == holdouts
        assert _grew(before, after, "kairos_decisions_total", explore="true") == explores
        # Every decision is counted once by its reason.
        assert _grew(before, after, "kairos_decision_reasons_total") == seen
        latency_count = _grew(before, after, "kairos_trigger_to_decision_seconds_count")
        assert latency_count == seen
        assert _grew(before, after, "kairos_trigger_to_decision_seconds_bucket", le="+Inf") == seen
        # The event loop's stalls are watched all along (a 10 ms probe: tens per second).
        assert _grew(before, after, "kairos_event_loop_lag_seconds_count") >= 10
        # GC pauses are timed (the worker process installs the recorder).
        assert _sum(after, "kairos_gc_pause_seconds_count") > 0
        # Every Kafka client reports its broker connection (librdkafka statistics, each second).
        for client in ("consumer", "producer", "decisions"):
            assert _sum(after, "kairos_kafka_brokers_up", client=client) == 1.0, client
            assert _sum(after, "kairos_kafka_brokers_known", client=client) == 1.0, client

        # The JSON behind the page agrees with /metrics.
        data = json.loads(_get(f"{worker.url}/dashboard/data"))
        totals = data["totals"]
        assert data["state"] == "running"
        assert totals["decisions"] == _sum(after, "kairos_decisions_total") == seen
        assert totals["events"] == _sum(after, "kairos_events_total") == len(journeys)
        assert totals["dead_letters"] == len(bad_records)
        assert data["latency_ms"]["since_start"]["count"] == seen
        assert any(p["decisions_per_s"] > 0 for p in data["history"]), data["history"]
        by_action: dict[str, float] = {}
        for d in decisions.records:
            key = f"{d['campaign']}/{d['action_id']}"
            by_action[key] = by_action.get(key, 0.0) + 1
        assert {f"{a['campaign']}/{a['action']}": a["decisions"] for a in data["actions"]} == (
            by_action
        )
        reasons = {row["reason"]: row["count"] for row in data["dead_letters"]}
        assert sum(reasons.values()) == len(bad_records)

        # The page, rendered by a real browser, shows the same figures.
        ARTIFACTS.mkdir(exist_ok=True)
        screenshot = ARTIFACTS / "dashboard.png"
        screenshot.unlink(missing_ok=True)
        url = f"{worker.url}/dashboard"
        rendered = _chromium_run(chromium, tmp_path / "profile-dom", "--dump-dom", url)
        dom = rendered.stdout
        assert 'data-loaded="true"' in dom, f"page did not load its data: {rendered.stderr[-2000:]}"
        assert float(_figure(dom, "decisions-total")) == seen > 0
        assert float(_figure(dom, "events-total")) == len(journeys)
        assert float(_figure(dom, "dead-letters-total")) == len(bad_records)
        assert float(_figure(dom, "latency-p50")) > 0
        assert 'class="state running"' in dom
        for key in by_action:
            campaign, action = key.split("/", 1)
            assert f'data-campaign="{campaign}" data-action="{action}"' in dom, key
        shot = _chromium_run(chromium, tmp_path / "profile-shot", f"--screenshot={screenshot}", url)
        assert screenshot.is_file(), f"no screenshot: {shot.stderr[-2000:]}"
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert screenshot.stat().st_size > 20_000, "the screenshot looks blank"
    decisions.close()
    dlq.close()

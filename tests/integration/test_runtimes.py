"""The two worker runtimes on the real broker: interchangeable state, and the rdkafka one's restarts."""

from __future__ import annotations

import time
import urllib.error
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from bench._proc_stats import process_cpu_s
from streams.cli import app as cli_app
from streams.settings import Settings, settings_env
from streams.worker_process import WorkerProcess
from tests.integration.kafka_io import TopicReader, event, produce
from tests.integration.metrics_scrape import scrape, total
from tests.integration.test_topology import customer_view

CUSTOMERS = [f"rt-{i}" for i in range(12)]


def _log_records(worker: WorkerProcess, message: str) -> list[dict[str, Any]]:
    lines = worker.log_path.read_text(errors="replace").splitlines()
    found = []
    for line in lines:
        if line.startswith("{") and f'"msg":"{message}"' in line:
            found.append(orjson.loads(line))
    return found


def _at_least(count: int, records: list[dict[str, Any]]) -> bool:
    return len(records) >= count


def _view(worker: WorkerProcess, customer_id: str) -> dict[str, Any] | None:
    try:
        return customer_view(worker, customer_id)
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise


def _views_when(worker: WorkerProcess, events_each: int) -> dict[str, Any]:
    """Every customer's view once each has `events_each` events applied (or fail after 60 s)."""
    deadline = time.monotonic() + 60
    while True:
        views = {c: _view(worker, c) for c in CUSTOMERS}
        # The view counts the ids in the recent event-id ring: one per event applied.
        counts = [v["state"]["recent_ids"] if v else -1 for v in views.values()]
        if all(n == events_each for n in counts):
            return views
        if time.monotonic() > deadline:
            raise AssertionError(f"event counts {counts}, want {events_each}: {worker.log_tail()}")
        time.sleep(0.1)


def _states(worker: WorkerProcess, each: int) -> dict[str, Any]:
    return {c: v["state"] for c, v in _views_when(worker, each).items()}


def test_a_worker_switches_runtime_without_losing_state_or_reprocessing(
    settings: Settings, tmp_path: Path
) -> None:
    """Faust, then rdkafka, then Faust again: same group, same changelogs, no decision twice."""
    decisions = TopicReader(settings, settings.topics.decisions)
    seen_decisions = 0
    previous: dict[str, Any] | None = None
    for round_, runtime in enumerate(("faust", "rdkafka", "faust"), start=1):
        s = settings.model_copy(update={"runtime": runtime})
        with WorkerProcess(s, tmp_path / f"worker-{round_}-{runtime}.log") as worker:
            worker.wait_ready(90)
            if previous is not None:
                # Before anything new arrives: the other runtime's rows, read from the changelog.
                assert _states(worker, round_ - 1) == previous
            produce(
                s,
                s.topics.events,
                [event(c, "cart_abandoned", cart_value=10.0 + round_) for c in CUSTOMERS],
            )
            previous = _states(worker, round_)
            seen_decisions += len(CUSTOMERS)  # one cart-abandonment decision per trigger
            decisions.until(partial(_at_least, seen_decisions))
    decisions.poll(2.0)
    ids = [d["decision_id"] for d in decisions.records]
    # Committed offsets carried over: no runtime decided again on what another had processed.
    assert len(ids) == len(set(ids)) == len(CUSTOMERS) * 3
    decisions.close()


def test_rdkafka_restarts_resume_from_the_checkpoint_or_keep_the_crashed_tables(
    settings: Settings, tmp_path: Path
) -> None:
    s = settings.model_copy(update={"runtime": "rdkafka"})
    with WorkerProcess(s, tmp_path / "worker-1.log") as worker:
        worker.wait_ready(60)
        produce(s, s.topics.events, [event(c, "product_view", product_id="p1") for c in CUSTOMERS])
        before = _states(worker, 1)
    # A clean stop left checkpoints: the next start reads nothing from the changelogs.
    clean = WorkerProcess(s, tmp_path / "worker-2.log").start()
    try:
        clean.wait_ready(60)
        assigned = _log_records(clean, "partitions assigned")[-1]
        assert assigned["changelog_records"] == 0, assigned
        assert assigned["kept_after_crash"] == []
        assert _states(clean, 1) == before
        produce(s, s.topics.events, [event(c, "product_view", product_id="p2") for c in CUSTOMERS])
        after = _states(clean, 2)
    finally:
        clean.kill()  # a crash: no checkpoint
    crashed = WorkerProcess(s, tmp_path / "worker-3.log").start()
    try:
        crashed.wait_ready(60)
        assigned = _log_records(crashed, "partitions assigned")[-1]
        # Nobody else wrote the changelogs since: the crashed tables are kept, not rebuilt.
        assert sorted(assigned["kept_after_crash"]) == sorted(
            f"{table}-{p}" for table in ("customers", "pending") for p in range(s.partitions)
        ), assigned
        assert assigned["changelog_records"] == 0, assigned
        assert _states(crashed, 2) == after
    finally:
        crashed.stop()
    # And a worker that has only the changelogs (a new machine) rebuilds the same rows.
    fresh = s.model_copy(update={"data_dir": tmp_path / "elsewhere"})
    with WorkerProcess(fresh, tmp_path / "worker-4.log") as rebuilt:
        rebuilt.wait_ready(60)
        assigned = _log_records(rebuilt, "partitions assigned")[-1]
        assert assigned["changelog_records"] >= len(CUSTOMERS), assigned
        assert _states(rebuilt, 2) == after


def test_a_crashed_rdkafka_store_is_rebuilt_when_another_worker_wrote_its_changelog(
    settings: Settings, tmp_path: Path
) -> None:
    s = settings.model_copy(update={"runtime": "rdkafka"})
    first = WorkerProcess(s, tmp_path / "worker-1.log").start()
    try:
        first.wait_ready(60)
        produce(s, s.topics.events, [event(c, "product_view", product_id="p1") for c in CUSTOMERS])
        _states(first, 1)
    finally:
        first.kill()
    # Meanwhile another worker (its own data dir) takes the partitions over and writes on.
    other = s.model_copy(update={"data_dir": tmp_path / "other"})
    with WorkerProcess(other, tmp_path / "worker-2.log") as taker:
        taker.wait_ready(60)
        produce(s, s.topics.events, [event(c, "product_view", product_id="p2") for c in CUSTOMERS])
        after = _states(taker, 2)
    with WorkerProcess(s, tmp_path / "worker-3.log") as back:
        back.wait_ready(60)
        assigned = _log_records(back, "partitions assigned")[-1]
        # Someone else wrote the customers changelogs: those tables are rebuilt. (Product views
        # write no pending rows, so the pending tables, untouched by the other worker, are kept.)
        assert not [t for t in assigned["kept_after_crash"] if t.startswith("customers")], assigned
        assert assigned["changelog_records"] >= len(CUSTOMERS), assigned
        assert _states(back, 2) == after


def test_a_spinning_rdkafka_worker_decides_each_trigger_once_and_idles_without_spinning(
    settings: Settings, tmp_path: Path
) -> None:
    """KAIROS_CONSUMER_SPIN_US: records still flow once each, and the spin ends when work does."""
    s = settings.model_copy(update={"runtime": "rdkafka", "consumer_spin_us": 5_000})
    decisions = TopicReader(s, s.topics.decisions)
    with WorkerProcess(s, tmp_path / "worker-spin.log") as worker:
        worker.wait_ready(90)
        assert worker.process is not None
        produce(
            s, s.topics.events, [event(c, "cart_abandoned", cart_value=12.0) for c in CUSTOMERS]
        )
        decisions.until(partial(_at_least, len(CUSTOMERS)))
        # Idle now: the worker must block again (a spin that never ended would use a whole core).
        cpu_before, started = process_cpu_s(worker.process.pid), time.monotonic()
        decisions.poll(2.0)
        cpu_after, elapsed = process_cpu_s(worker.process.pid), time.monotonic() - started
    ids = [d["decision_id"] for d in decisions.records]
    decisions.close()
    assert len(ids) == len(set(ids)) == len(CUSTOMERS)
    assert cpu_before is not None and cpu_after is not None
    assert (cpu_after - cpu_before) / elapsed < 0.3


@pytest.mark.parametrize("runtime", ["rdkafka", "faust"])
def test_kairos_erase_removes_a_customer_for_good_and_leaves_the_others(
    settings: Settings, tmp_path: Path, runtime: str
) -> None:
    """`kairos erase` as an operator runs it: the customer's rows go, open decision included,
    and stay gone after a restart (the changelog holds tombstones, not the old rows)."""
    s = settings.model_copy(update={"runtime": runtime})
    gone, kept = "erase-me", "keep-me"
    decisions = TopicReader(s, s.topics.decisions)
    with WorkerProcess(s, tmp_path / "worker-1.log") as worker:
        worker.wait_ready(90)
        produce(s, s.topics.events, [event(c, "cart_abandoned") for c in (gone, kept)])
        decisions.until(lambda rs: {r["customer_id"] for r in rs} >= {gone, kept})
        assert _view(worker, gone) is not None
        answer = CliRunner().invoke(cli_app, ["erase", gone], env=settings_env(s))
        assert answer.exit_code == 0, answer.output
        assert "erasure requested for 1 customer" in answer.output
        _wait_for(lambda: _view(worker, gone) is None, worker)
        assert _view(worker, kept) is not None
        erased = total(scrape(worker.url), "kairos_erased_customers_total")
    assert erased == 1
    with WorkerProcess(s, tmp_path / "worker-2.log") as worker:
        worker.wait_ready(90)
        assert _view(worker, gone) is None
        view = _view(worker, kept)
        assert view is not None and len(view["open_decisions"]) == 1
    decisions.close()


def _wait_for(condition: Callable[[], bool], worker: WorkerProcess, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {worker.log_tail()}")
        time.sleep(0.1)


def test_the_faust_runtime_reports_its_producers_broker_connections(
    settings: Settings, tmp_path: Path
) -> None:
    """The broker gauges (librdkafka statistics) on the Faust runtime too: its two producers."""
    s = settings.model_copy(update={"runtime": "faust"})
    with WorkerProcess(s, tmp_path / "worker.log") as worker:
        worker.wait_ready(90)
        produce(s, s.topics.events, [event("faust-stats", "cart_abandoned")])

        def connected() -> bool:
            samples = scrape(worker.url)
            return all(
                total(samples, "kairos_kafka_brokers_up", client=client) == 1
                and total(samples, "kairos_kafka_brokers_known", client=client) == 1
                for client in ("producer", "decisions")
            )

        _wait_for(connected, worker)

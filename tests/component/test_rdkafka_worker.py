"""The rdkafka runtime's own parts without a broker: commit epochs, stores, a turn's writes."""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import TopicPartition

from engine.campaign import builtin_campaign
from engine.clock import ManualClock
from streams.learner import RecentIds
from streams.partitioning import partition_of
from streams.processor import decode_state_row
from streams.rdkafka_worker import (
    PartitionTables,
    RdkafkaWorker,
    TableStore,
    UnackedWrites,
    _CommitEpochs,
    _store_options,
)
from streams.settings import Settings
from streams.topics import TABLES, changelog_topic


def test_offsets_commit_only_once_every_record_before_them_is_acknowledged() -> None:
    epochs = _CommitEpochs()
    start = epochs.current
    first = [epochs.callback() for _ in range(3)]
    epochs.close_epoch({("events", 0): 10})
    second = epochs.callback()
    epochs.close_epoch({("events", 0): 20})
    delivered: Any = None
    assert epochs.ready() is None
    second(None, delivered)  # the later epoch is done, the earlier is not: nothing may commit
    assert epochs.ready() is None
    first[0](None, delivered)
    first[1](None, delivered)
    assert epochs.ready() is None
    first[2](None, delivered)
    # Both epochs complete: the newest offsets, with the epoch they close.
    assert epochs.ready() == (start + 1, {("events", 0): 20})
    assert epochs.ready() is None
    assert epochs.failure is None


def test_a_failed_delivery_is_kept_for_the_worker_to_stop_on() -> None:
    epochs = _CommitEpochs()
    callback = epochs.callback()

    class Failure:
        def str(self) -> str:
            return "boom"

    callback(Failure(), None)  # type: ignore[arg-type]
    assert epochs.failure is not None


def test_an_epoch_without_records_commits_at_once() -> None:
    epochs = _CommitEpochs()
    epochs.close_epoch({("outcomes", 3): 7})
    assert epochs.ready() == (epochs.current - 1, {("outcomes", 3): 7})


def _store(root: Path, changelog: str = "app-customers-changelog") -> TableStore:
    return TableStore(root, "customers", 2, _store_options(Settings()), changelog=changelog)


def test_a_cleanly_closed_store_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert store.resume_from is None
    store.db.put(b"c1", b"row")
    store.close(changelog_offset=42)
    reopened = _store(tmp_path)
    assert reopened.resume_from == 42
    assert reopened.db.get(b"c1") == b"row"
    reopened.close(changelog_offset=None)


def test_a_checkpoint_written_for_another_changelog_means_a_rebuild(tmp_path: Path) -> None:
    """A data directory reused under another app id: the other app's checkpoint offset fell
    inside this changelog's range, so its rows were kept and this app's missed (QA)."""
    store = _store(tmp_path, "other-app-customers-changelog")
    store.db.put(b"theirs", b"row")
    store.close(changelog_offset=42)
    mine = _store(tmp_path)
    assert mine.resume_from is None and mine.db.get(b"theirs") is None
    mine.close(changelog_offset=7)
    again = _store(tmp_path)  # its own checkpoint, naming its changelog, is taken
    assert again.resume_from == 7
    again.close(changelog_offset=None)


def test_a_store_not_closed_cleanly_is_rebuilt_from_nothing(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.db.put(b"c1", b"row")
    store.close(changelog_offset=42)
    taken = _store(tmp_path)  # opening takes the checkpoint: a crash now leaves none
    taken.db.put(b"c2", b"newer")
    taken.close(changelog_offset=None)  # as after a crash or a failed final commit
    rebuilt = _store(tmp_path)
    assert rebuilt.resume_from is None
    assert rebuilt.db.get(b"c1") is None
    assert rebuilt.db.get(b"c2") is None
    rebuilt.close(changelog_offset=None)


def test_a_garbled_checkpoint_means_a_rebuild(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.db.put(b"c1", b"row")
    store.close(changelog_offset=5)
    (tmp_path / "customers-2.checkpoint").write_text("{not json")
    rebuilt = _store(tmp_path)
    assert rebuilt.resume_from is None
    assert rebuilt.db.get(b"c1") is None
    rebuilt.close(changelog_offset=None)


def test_partition_of_matches_the_java_client() -> None:
    # Kafka's own murmur2 test vectors (DefaultPartitionerTest / Utils.murmur2), modulo 4 and 1000.
    assert partition_of(b"a-little-bit-long-string", 1000) == (-985981536 & 0x7FFFFFFF) % 1000
    assert partition_of(b"21", 4) == (-973932308 & 0x7FFFFFFF) % 4


def test_at_least_once_a_crashed_store_is_kept_with_its_owner_for_recovery_to_check(
    tmp_path: Path,
) -> None:
    options = _store_options(Settings())
    store = TableStore(tmp_path, "pending", 1, options, keep_crashed=True)
    store.mark_owner("writer-a", 17)
    store.db.put(b"c1", b"row")
    store.db.close()  # a crash: no checkpoint, the owner marker stays
    kept = TableStore(tmp_path, "pending", 1, options, keep_crashed=True)
    assert kept.resume_from is None
    assert kept.crashed_owner == ("writer-a", 17)
    assert kept.db.get(b"c1") == b"row"
    kept.close(changelog_offset=30)  # clean: a checkpoint, and the owner marker is gone
    reopened = TableStore(tmp_path, "pending", 1, options, keep_crashed=True)
    assert (reopened.resume_from, reopened.crashed_owner) == (30, None)
    reopened.close(changelog_offset=None)


def test_unacked_writes_are_forgotten_once_their_epoch_and_every_earlier_one_is_acknowledged(
    tmp_path: Path,
) -> None:
    unacked = UnackedWrites(tmp_path, 0, _store_options(Settings()))
    unacked.note(100, [("customers", b"c1", b"s1")], [("decisions", b"c1", b"d1", [])])
    unacked.note(101, [("pending", b"c1", b"p1")], [])
    unacked.note(
        102,
        [("customers", b"c2", b"s2"), ("pending", b"c2", None)],
        [("rewards", b"c2", b"r2", [("h", b"v")]), ("decisions", b"c2", b"d2", [])],
    )
    unacked.note(103, [("customers", b"c2", b"s2-newer")], [])
    unacked.forget_through(101)
    # The newest value of each row still noted (None: deleted), to redo after a crash.
    assert unacked.rows() == {("customers", b"c2"): b"s2-newer", ("pending", b"c2"): None}
    # Outputs come back in the order they were produced, byte-identical.
    assert unacked.outputs() == [
        ("rewards", b"c2", b"r2", [("h", b"v")]),
        ("decisions", b"c2", b"d2", []),
    ]
    unacked.clear()
    assert unacked.rows() == {}
    assert unacked.outputs() == []
    unacked.close()


def test_the_learner_drops_a_repeated_reward_record_but_forgets_old_ids() -> None:
    recent = RecentIds(2)
    assert recent.first_time("d1")
    assert not recent.first_time("d1")  # a resend after a crash: learned once
    assert recent.first_time("d2")
    assert recent.first_time("d3")  # d1 is now beyond the window
    assert recent.first_time("d1")


class _Message:
    """A consumed record as confluent-kafka hands it over (the parts the worker reads)."""

    def __init__(self, topic: str, partition: int, offset: int, key: bytes, value: bytes) -> None:
        self._where = (topic, partition, offset)
        self._key = key
        self._value = value

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._where[0]

    def partition(self) -> int:
        return self._where[1]

    def offset(self) -> int:
        return self._where[2]

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return self._value


class _Producer:
    """Records what the worker produces, in order, without a broker."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None]] = []

    def produce(
        self, topic: str, value: bytes | None, key: bytes, partition: int = -1, **_: Any
    ) -> None:
        self.sent.append((topic, key, value))

    def poll(self, timeout: float = 0) -> int:
        return 0


def _worker_on(tmp_path: Path, write_batch_ms: float) -> tuple[RdkafkaWorker, _Producer, int]:
    """A worker holding the tables of one partition, its producer a recorder."""
    settings = Settings(data_dir=tmp_path, write_batch_ms=write_batch_ms)
    clock = ManualClock(datetime(2026, 3, 2, 12, 0, tzinfo=UTC))
    worker = RdkafkaWorker(settings, [builtin_campaign("cart_abandonment")], clock)
    producer = _Producer()
    worker.producer = producer  # type: ignore[assignment]
    p = partition_of(b"c1", settings.partitions)
    options = _store_options(settings)
    root = settings.data_dir / "rdkafka"
    worker.tables[p] = PartitionTables(
        p,
        TableStore(root, "customers", p, options, keep_crashed=True),
        TableStore(root, "pending", p, options, keep_crashed=True),
        UnackedWrites(root, p, options),
    )
    worker.ready = True
    return worker, producer, p


def _event(
    worker: RdkafkaWorker, p: int, offset: int, kind: str, customer: str = "c1", **fields: Any
) -> _Message:
    value = orjson.dumps(
        {
            "event_id": f"e{offset}",
            "customer_id": customer,
            "type": kind,
            "ts": worker.clock.now().isoformat(),
            **fields,
        }
    )
    return _Message(worker.settings.topics.events, p, offset, customer.encode(), value)


def test_a_turn_writes_and_sends_its_records_together_and_reads_its_own_rows(
    tmp_path: Path,
) -> None:
    worker, producer, p = _worker_on(tmp_path, write_batch_ms=1000.0)
    tables = worker.tables[p]
    worker._handle(_event(worker, p, 0, "cart_add", product_id="sku", quantity=1, price=40.0))
    worker._handle(_event(worker, p, 1, "cart_abandoned"))
    # Staged, not yet written or sent.
    assert producer.sent == []
    assert tables.customers.db.get(b"c1") is None
    assert tables.unacked is not None and tables.unacked.rows() == {}
    worker._flush()
    state_row = tables.customers.db.get(b"c1")
    state, applied = decode_state_row(state_row)
    # The second event saw the first one's staged state: both applied, the cart is kept.
    assert applied.offset == 1
    assert state is not None and "sku" in state.cart
    names = worker.settings.topics
    decisions = [value for topic, _, value in producer.sent if topic == names.decisions]
    changelogs = [
        (topic, value) for topic, _, value in producer.sent if topic.endswith("changelog")
    ]
    assert len(decisions) == 1
    # One changelog record per row of the turn (the newest value), not one per record.
    assert sorted(topic for topic, _ in changelogs) == sorted(
        changelog_topic(worker.settings, table) for table in TABLES
    )
    assert (changelog_topic(worker.settings, "customers"), state_row) in changelogs
    # The decision left before the changelog records; the note holds what was sent.
    assert producer.sent[0][0] == names.decisions
    assert tables.unacked.rows()[("customers", b"c1")] == state_row
    assert [value for _, _, value, _ in tables.unacked.outputs()] == decisions
    for store in tables.stores():
        store.close(changelog_offset=None)
    tables.unacked.close()


def test_with_no_write_batch_each_record_is_written_and_sent_at_once(tmp_path: Path) -> None:
    worker, producer, p = _worker_on(tmp_path, write_batch_ms=0.0)
    tables = worker.tables[p]
    worker._handle(_event(worker, p, 0, "cart_add", product_id="sku", quantity=1, price=40.0))
    assert tables.customers.db.get(b"c1") is not None
    assert len(producer.sent) == 1  # the customers row's changelog record
    for store in tables.stores():
        store.close(changelog_offset=None)
    assert tables.unacked is not None
    tables.unacked.close()


def _customers_on(p: int, partitions: int, count: int) -> list[str]:
    """Customer ids whose key falls on partition p."""
    found = []
    n = 0
    while len(found) < count:
        cid = f"c{n}"
        if partition_of(cid.encode(), partitions) == p:
            found.append(cid)
        n += 1
    return found


def test_timers_fire_at_their_exact_due_time_and_their_decisions_leave_as_they_go(
    tmp_path: Path,
) -> None:
    # A flush interval of 1 µs: every tick after the first finds the previous one's decision
    # staged long enough, so decisions leave one by one, not after the last timer.
    worker, producer, p = _worker_on(tmp_path, write_batch_ms=0.001)
    clock = worker.clock
    assert isinstance(clock, ManualClock)
    first, second = _customers_on(p, worker.settings.partitions, 2)
    start = clock.now()
    for offset, (cid, delay_s) in enumerate(((first, 0.25), (second, 0.75))):
        clock.set(start + timedelta(seconds=delay_s))
        worker._handle(
            _event(worker, p, offset, "cart_add", cid, product_id="sku", quantity=1, price=40.0)
        )
    worker._flush()
    due = start.timestamp() + 0.25 + worker.settings.cart_abandon_after_s
    wait = worker._next_timer_in()
    # Rounded up to the poll's milliseconds: a poll of that long never returns before the due time.
    assert wait is not None
    assert int(wait * 1000) / 1000 >= due - clock.now().timestamp()
    assert wait - (due - clock.now().timestamp()) < 0.002
    decisions = worker.settings.topics.decisions
    producer.sent.clear()
    clock.set(datetime.fromtimestamp(due, UTC) - timedelta(milliseconds=1))
    worker._fire_timers()
    worker._flush()
    assert producer.sent == []  # not a millisecond early
    clock.set(datetime.fromtimestamp(due + 0.5, UTC))  # both due now
    worker._fire_timers()
    # The first timer's decision left before the second timer was handled.
    assert [key for topic, key, _ in producer.sent if topic == decisions] == [first.encode()]
    worker._flush()
    assert [key for topic, key, _ in producer.sent if topic == decisions] == [
        first.encode(),
        second.encode(),
    ]
    tables = worker.tables[p]
    for store in tables.stores():
        store.close(changelog_offset=None)
    assert tables.unacked is not None
    tables.unacked.close()


class _Consumer:
    """Answers polls from a script: `None` or a record per poll, then `None`; records each wait."""

    def __init__(self, answers: list[_Message | None]) -> None:
        self.answers = list(answers)
        self.waits: list[float] = []

    def poll(self, timeout: float = 0) -> _Message | None:
        self.waits.append(timeout)
        return self.answers.pop(0) if self.answers else None


def test_while_spinning_the_worker_polls_without_blocking_and_takes_a_record_that_comes(
    tmp_path: Path,
) -> None:
    worker, _, p = _worker_on(tmp_path, write_batch_ms=2.0)
    record = _event(worker, p, 0, "cart_abandoned")
    consumer = _Consumer([None, None, record])
    worker.consumer = consumer  # type: ignore[assignment]
    # Within the spin: polls of 0 until the record comes; no blocking poll at all.
    assert worker._poll(0.05, time.perf_counter() + 10.0) is record
    assert consumer.waits == [0, 0, 0]


def test_after_the_spin_the_worker_blocks_for_what_is_left_of_its_wait(tmp_path: Path) -> None:
    worker, _, _ = _worker_on(tmp_path, write_batch_ms=2.0)
    consumer = _Consumer([])
    worker.consumer = consumer  # type: ignore[assignment]
    # No spin (the default, or no turn just ended): one blocking poll of the whole wait.
    assert worker._poll(0.05, 0.0) is None
    assert consumer.waits == [0.05]
    # A spin that runs out: the blocking poll waits only what is left, so timers stay due (how
    # much is left depends on how long the spin really took, preemptions included).
    consumer.waits.clear()
    spin_s = 0.02
    started = time.perf_counter()
    assert worker._poll(0.5, started + spin_s) is None
    spun = time.perf_counter() - started
    *spins, blocking = consumer.waits
    assert all(w == 0 for w in spins)
    assert 0.5 - spun <= blocking < 0.5
    # A turn due at once (wait 0: timers or the sweep) never spins.
    consumer.waits.clear()
    assert worker._poll(0.0, time.perf_counter() + 10.0) is None
    assert consumer.waits == [0.0]


def test_decisions_sent_again_from_the_redo_log_after_a_crash_are_counted(
    tmp_path: Path,
) -> None:
    worker, producer, p = _worker_on(tmp_path, write_batch_ms=0.0)
    worker._handle(_event(worker, p, 0, "cart_abandoned"))
    decisions = worker.settings.topics.decisions
    first = [r for r in producer.sent if r[0] == decisions]
    assert len(first) == 1
    resent = worker.metrics.decisions_resent.labels(campaign="cart_abandonment")
    assert resent._value.get() == 0
    # As after a crash: the noted turn (not yet acknowledged) is sent again, decision included.
    summary = worker._resend_unacked(worker.tables, {(table, p) for table in TABLES})
    again = [r for r in producer.sent if r[0] == decisions]
    assert summary["outputs"] >= 1 and again[1:] == first
    assert resent._value.get() == 1


class _LoopConsumer(_Consumer):
    """A consumer for run(): scripted polls, no batch beyond them, commits recorded, and a
    close that revokes the partitions through the worker's callback, as librdkafka's does."""

    def __init__(self, worker: RdkafkaWorker, answers: list[_Message | None]) -> None:
        super().__init__(answers)
        self.worker = worker
        self.commits: list[Any] = []

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[_Message]:
        return []

    def commit(self, **kwargs: Any) -> None:
        self.commits.append(kwargs)

    def get_watermark_offsets(self, partition: Any, **_: Any) -> tuple[int, int]:
        return (0, 1)  # a changelog's end, as a clean stop reads it for its checkpoints

    def close(self) -> None:
        names = self.worker.settings.topics
        held = [TopicPartition(names.events, p) for p in self.worker.tables] or [
            TopicPartition(names.events, p) for p in range(self.worker.settings.partitions)
        ]
        self.worker._on_revoke(self, held)  # type: ignore[arg-type]


class _LoopProducer(_Producer):
    """A recorder whose records are all acknowledged at the next poll or flush."""

    def __init__(self) -> None:
        super().__init__()
        self.unacked: list[Any] = []

    def produce(
        self, topic: str, value: bytes | None, key: bytes, partition: int = -1, **kw: Any
    ) -> None:
        super().produce(topic, value, key, partition)
        self.unacked.append(kw["on_delivery"])

    def poll(self, timeout: float = 0) -> int:
        acked, self.unacked = self.unacked, []
        for delivered in acked:
            delivered(None, None)
        return len(acked)

    def flush(self, timeout: float = -1) -> int:
        self.poll()
        return 0


class _FullDisk:
    """A table's RocksDB handle whose writes fail as on a full disk (reads still work)."""

    def __init__(self, db: Any) -> None:
        self._db = db

    def write(self, batch: Any) -> None:
        raise OSError(28, "No space left on device")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def test_a_write_failing_mid_turn_stops_the_worker_as_a_crash_and_the_redo_log_keeps_it(
    tmp_path: Path,
) -> None:
    worker, _, p = _worker_on(tmp_path, write_batch_ms=2.0)
    producer = _LoopProducer()
    worker.producer = producer  # type: ignore[assignment]
    consumer = _LoopConsumer(worker, [_event(worker, p, 0, "cart_abandoned")])
    worker.consumer = consumer  # type: ignore[assignment]
    worker._start_clients = lambda: None  # type: ignore[method-assign]
    pending = worker.tables[p].pending
    pending.db = _FullDisk(pending.db)  # type: ignore[assignment]
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with pytest.raises(OSError, match="No space left"):
            worker.run()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    names = worker.settings.topics
    # The decision left before the table writes failed, and was acknowledged; still nothing may
    # be committed or forgotten: the pending row is in neither the table nor its changelog.
    assert [topic for topic, _, _ in producer.sent] == [names.decisions]
    assert consumer.commits == []
    assert not list((tmp_path / "rdkafka").glob("*.checkpoint"))
    # The next start redoes the noted turn: the pending row is written and sent, the decision
    # sent again (byte-identical).
    again, resent, _ = _worker_on(tmp_path, write_batch_ms=2.0)
    kept = {(table, p) for table in TABLES}
    summary = again._resend_unacked(again.tables, kept)
    assert summary["outputs"] == 1
    assert again.tables[p].pending.db.get(b"c1") is not None
    assert resent.sent[0][0] == names.decisions
    assert resent.sent[0][2] == producer.sent[0][2]
    assert changelog_topic(again.settings, "pending") in {topic for topic, _, _ in resent.sent}
    for store in again.tables[p].stores():
        store.close(changelog_offset=None)
    assert again.tables[p].unacked is not None
    again.tables[p].unacked.close()

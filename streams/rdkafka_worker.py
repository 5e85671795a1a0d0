"""A worker on librdkafka's consumer and producer, without Faust: the ``rdkafka`` runtime.

Why it exists: on a 2-core machine a bare Faust pass-through agent alone costs about 200 µs of
CPU per record and sits at a 5-10 ms p99 at 1,000 records/s (BENCHMARKS.md, Latency), so no
Kairos built on Faust's stream machinery can reach issue 4's goals. This worker keeps everything
Kairos decides and stores, and drops the framework between Kafka and the processor:

- **Group and partitions.** One confluent-kafka consumer in the group ``app_id`` (the group Faust
  uses, so committed offsets carry over between the runtimes) subscribes to the events, outcomes
  and tick topics with the range assignor, which gives a member the same partition numbers of
  topics with equal partition counts: a customer's events, outcomes and rows meet here.
- **Tables.** Per partition, the two tables are RocksDB databases (rocksdict, raw bytes), each
  mirrored to the compacted changelog Faust would use (``{app}-customers-changelog``, same raw
  key and value, tombstones for deletes), so either runtime can rebuild the other's state. The
  changelog is the truth: a partition's store is rebuilt from it at assignment unless the store
  was closed cleanly with a checkpoint (the changelog offset it had reached), in which case only
  the records after the checkpoint are read, or was left by a crash at least once that nobody
  else's changelog records followed (kept, then redone from its UnackedWrites).
- **Commits (at least once).** Offsets are committed only when every record produced for them
  (changelogs, decisions, rewards) is acknowledged: produced records are counted per commit
  epoch, and an epoch's offsets are committed, without blocking the loop, once its count is 0.
- **Exactly once.** One transactional producer; the records of a transaction interval and the
  consumed offsets commit together (KIP-447). A failed transaction stops the worker with an
  error, and the restart rebuilds the tables from the committed changelog (no checkpoint).
- **Timers** fire in the loop itself, under the same single-threaded order as the records: no
  tick records round-trip through Kafka (tick records on the tick topic, from a Faust worker or a
  tool, are still handled).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import shutil
import signal
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import rocksdict
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from engine.campaign import Campaign
from engine.clock import Clock, SystemClock
from streams.client_stats import stats_config
from streams.gc_pauses import freeze_startup_heap
from streams.metrics import WorkerMetrics
from streams.partitioning import partition_of
from streams.processor import (
    Processor,
    Result,
    carry_headers,
    index_timers,
)
from streams.redo_log import OutputRecord, RowWrite, UnackedWrites
from streams.settings import Settings
from streams.timer_index import TimerIndex
from streams.topics import TABLES, changelog_topic, producer_config

log = logging.getLogger("kairos.rdkafka_worker")

#: Longest a stop waits for the broker to acknowledge what is left (SIGTERM with the broker down
#: took ~60 s, past docker-compose's 30 s grace period; what is not acknowledged by then is sent
#: again from the redo log at the next start).
STOP_S = 10.0
#: Longest the loop blocks in poll() when nothing is due: bounds how late timers, commits and
#: stop requests are served. Records wake the poll at once, so this adds no latency to them.
MAX_WAIT_S = 0.05
#: Records taken from librdkafka's queue per loop turn after the first (a non-blocking consume).
BATCH = 500
#: How often consumer lag and the pending-timer gauge are refreshed.
GAUGE_INTERVAL_S = 1.0
CHECKPOINT_SUFFIX = ".checkpoint"
#: The changelog record header naming the worker incarnation that wrote it (see _recover).
WRITER_HEADER = "kairos-writer"


class WorkerFailedError(RuntimeError):
    """A condition the worker cannot go on from (a failed delivery or transaction)."""


def _store_options(settings: Settings) -> rocksdict.Options:
    """Bounded RocksDB memory: write buffers per table partition, one block cache for them all.

    The worker opens every table partition with these options, so they share this one block
    cache (rocksdb_block_cache_mib in all); the Faust runtime has one per table partition. A
    4x larger cache changed nothing measurable (BENCHMARKS.md, Latency).
    """
    mib = 1024 * 1024
    options = rocksdict.Options(raw_mode=True)
    options.create_if_missing(True)
    options.set_write_buffer_size(settings.rocksdb_write_buffer_mib * mib)
    options.set_max_write_buffer_number(settings.rocksdb_max_write_buffers)
    table = rocksdict.BlockBasedOptions()
    table.set_block_cache(rocksdict.Cache(settings.rocksdb_block_cache_mib * mib))
    table.set_bloom_filter(10, True)
    options.set_block_based_table_factory(table)
    return options


class TableStore:
    """One table partition: a RocksDB database mirrored to its changelog partition.

    Two small files beside the database say how far it can be trusted without the changelog:
    a checkpoint, written at a clean close, names the changelog offset the database had reached;
    an owner marker, written once the store is recovered, names the worker incarnation that
    writes it and the changelog offset it started from. Opening takes the checkpoint, so only a
    clean close leaves one. Without a checkpoint the database is deleted (rebuilt from the
    changelog), except after a crash at least once (`keep_crashed`), when the owner marker lets
    recovery check whether anyone else wrote the changelog since (RdkafkaWorker._recover).
    """

    def __init__(
        self,
        root: Path,
        table: str,
        partition: int,
        options: rocksdict.Options,
        keep_crashed: bool = False,
        changelog: str | None = None,
    ) -> None:
        self.table = table
        self.partition = partition
        #: The changelog topic this store mirrors: its checkpoint names it, and one written for
        #: another (a data directory reused under another app id) is not trusted.
        self.changelog = changelog
        self.path = root / f"{table}-{partition}.db"
        self._options = options
        self._checkpoint = root / f"{table}-{partition}{CHECKPOINT_SUFFIX}"
        self._owner = root / f"{table}-{partition}.owner"
        root.mkdir(parents=True, exist_ok=True)
        self.resume_from = self._take_checkpoint()
        #: (writer, changelog offset) of the incarnation that crashed while it held this store.
        self.crashed_owner: tuple[str, int] | None = None
        if self.resume_from is None:
            self.crashed_owner = self._read_owner() if keep_crashed else None
            if self.crashed_owner is None and self.path.exists():
                shutil.rmtree(self.path)  # rebuilt from the changelog
        self.db = rocksdict.Rdict(str(self.path), options)

    def _take_checkpoint(self) -> int | None:
        try:
            data = json.loads(self._checkpoint.read_text())
            self._checkpoint.unlink()
            offset = int(data["changelog_offset"])
        except (OSError, ValueError, KeyError, TypeError):
            self._checkpoint.unlink(missing_ok=True)
            return None
        written_for = data.get("changelog_topic")  # absent from checkpoints before 2026-12-07
        if written_for is not None and self.changelog is not None and written_for != self.changelog:
            # Its offset would fall inside this changelog's range too and be trusted: the worker
            # kept another app's rows and missed its own (found by QA, app id changed).
            log.warning(
                "table checkpoint written for another changelog: rebuilding",
                extra={"path": str(self.path), "checkpoint_for": written_for},
            )
            return None
        return offset

    def _read_owner(self) -> tuple[str, int] | None:
        try:
            data = json.loads(self._owner.read_text())
            return str(data["writer"]), int(data["changelog_offset"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def mark_owner(self, writer: str, changelog_offset: int) -> None:
        """Record that `writer` writes this store from `changelog_offset` on (before it writes)."""
        _write_atomically(self._owner, {"writer": writer, "changelog_offset": changelog_offset})

    def discard(self) -> None:
        """Empty the database: it is rebuilt from the changelog."""
        self.db.close()
        shutil.rmtree(self.path, ignore_errors=True)
        self.db = rocksdict.Rdict(str(self.path), self._options)
        self.resume_from = None
        self.crashed_owner = None

    def close(self, changelog_offset: int | None) -> None:
        """Flush and close; with an offset, write the checkpoint that lets the next open resume."""
        self.db.flush(True)
        self.db.close()
        if changelog_offset is not None:
            _write_atomically(
                self._checkpoint,
                {
                    "changelog_topic": self.changelog,
                    "changelog_offset": changelog_offset,
                    "closed_at": datetime.now(UTC).isoformat(),
                },
            )
            self._owner.unlink(missing_ok=True)


def _write_atomically(path: Path, data: dict[str, Any]) -> None:
    """Write a small JSON file so that a crash leaves the old content or the new, never half."""
    partial = path.with_suffix(path.suffix + ".tmp")
    partial.write_text(json.dumps(data))
    partial.replace(path)


@dataclass
class PartitionTables:
    """The customers and pending tables of one partition number, and its unacknowledged writes."""

    partition: int
    customers: TableStore
    pending: TableStore
    unacked: UnackedWrites | None = None

    def stores(self) -> tuple[TableStore, TableStore]:
        """Both stores, in TABLES order."""
        return self.customers, self.pending

    def store(self, table: str) -> TableStore:
        """The store of `table`."""
        return self.customers if table == "customers" else self.pending


class _StagedWrites:
    """One partition's writes of the current loop turn, written and sent together (`_flush`).

    Rows keep only their newest value (a customer written twice in a turn costs one row write
    and one changelog record); outputs keep their order.
    """

    __slots__ = ("outputs", "rows", "tables")

    def __init__(self, tables: PartitionTables) -> None:
        self.tables = tables
        self.rows: dict[tuple[str, bytes], bytes | None] = {}
        self.outputs: list[OutputRecord] = []


class _Rows:
    """The processor's view of one partition's tables (CustomerRows): staged rows, then RocksDB."""

    tables: PartitionTables | None = None

    def __init__(self, staged: dict[int, _StagedWrites]) -> None:
        self.staged = staged

    def row(self, table: str, key: bytes) -> bytes | None:
        """The newest value of a row: staged in this turn, else stored (None: absent)."""
        assert self.tables is not None
        staged = self.staged.get(self.tables.partition)
        if staged is not None and (table, key) in staged.rows:
            return staged.rows[(table, key)]  # None: deleted in this turn
        found = self.tables.store(table).db.get(key)
        return found if isinstance(found, bytes) else None

    def state(self, customer_id: str) -> bytes | None:
        return self.row("customers", customer_id.encode())

    def pending(self, customer_id: str) -> bytes | None:
        return self.row("pending", customer_id.encode())


@dataclass
class _CommitEpochs:
    """Records produced per commit epoch, and the offsets each epoch may commit once acknowledged."""

    #: Epoch numbers start at the start time in ms and count up once per commit, so a restarted
    #: worker's epochs are above its predecessor's (UnackedWrites keys sort by epoch).
    current: int = field(default_factory=lambda: time.time_ns() // 1_000_000)
    unacked: dict[int, int] = field(default_factory=dict)
    waiting: deque[tuple[int, dict[tuple[str, int], int]]] = field(default_factory=deque)
    callbacks: dict[int, Callable[[KafkaError | None, Message], None]] = field(default_factory=dict)
    failure: KafkaError | None = None

    def __post_init__(self) -> None:
        self.unacked.setdefault(self.current, 0)

    def callback(self) -> Callable[[KafkaError | None, Message], None]:
        """The delivery callback of the current epoch (one closure per epoch, not per record)."""
        epoch = self.current
        found = self.callbacks.get(epoch)
        if found is None:

            def delivered(error: KafkaError | None, message: Message) -> None:
                self.unacked[epoch] -= 1
                if error is not None and self.failure is None:
                    self.failure = error

            found = self.callbacks[epoch] = delivered
        self.unacked[epoch] += 1
        return found

    def close_epoch(self, offsets: dict[tuple[str, int], int]) -> None:
        """Offsets processed so far commit once this epoch's records are all acknowledged."""
        self.waiting.append((self.current, dict(offsets)))
        self.current += 1
        self.unacked[self.current] = 0

    def ready(self) -> tuple[int, dict[tuple[str, int], int]] | None:
        """The newest closed epoch whose records (and every earlier epoch's) are all
        acknowledged, with the offsets it may commit."""
        found = None
        while self.waiting:
            epoch, offsets = self.waiting[0]
            if any(count for e, count in self.unacked.items() if e <= epoch):
                break
            self.waiting.popleft()
            for e in [e for e in self.unacked if e <= epoch]:
                del self.unacked[e]
                self.callbacks.pop(e, None)
            found = epoch, offsets
        return found


class RdkafkaWorker:
    """A Kairos worker on confluent-kafka (see the module docstring): run() until stopped."""

    def __init__(
        self,
        settings: Settings,
        campaigns: Sequence[Campaign],
        clock: Clock | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.metrics = metrics or WorkerMetrics()
        self.metrics.set_state("starting")
        self.processor = Processor(settings, campaigns, self.clock, self.metrics)
        self.timers = TimerIndex()
        self.ready = False
        self.rebalancing = False
        self.started_at = time.monotonic()
        #: Set by the worker process (not by tests that build workers in-process): see gc_pauses.
        self.freeze_heap_when_ready = False
        self.exactly_once = settings.processing_guarantee == "exactly_once"
        self.root = settings.data_dir / "rdkafka"
        self.tables: dict[int, PartitionTables] = {}
        #: Guards opening and closing stores against readers on the web server's thread.
        self.tables_lock = threading.Lock()
        self._options = _store_options(settings)
        #: Writes of the current loop turn by partition, flushed together (_flush).
        self._staged: dict[int, _StagedWrites] = {}
        self._staged_since = 0.0
        self._flush_after_s = settings.write_batch_ms / 1000
        self._spin_s = settings.consumer_spin_us / 1e6
        self._rows = _Rows(self._staged)
        self._epochs = _CommitEpochs()
        #: This incarnation's id, in a header of every changelog record it writes.
        self.writer = uuid.uuid4().hex
        self._writer_header = [(WRITER_HEADER, self.writer.encode())]
        self._next_offsets: dict[tuple[str, int], int] = {}
        self._committed: dict[tuple[str, int], int] = {}
        self._published_versions: dict[str, int] = {}
        self._row_count = 0
        self._running = True
        self._in_transaction = False
        self._offsets_moved = False
        self._callback_error: Exception | None = None
        self._sweep: Iterator[list[str]] | None = None
        self._changelogs = {table: changelog_topic(settings, table) for table in TABLES}
        names = settings.topics
        self._sources = (names.events, names.outcomes, names.ticks)
        self._snapshot_key = settings.snapshot_key.encode() if settings.snapshot_key else None
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None
        self.urgent: Producer | None = None

    # ---- clients ------------------------------------------------------------------------------

    def transactional_id(self) -> str:
        """Stable per worker instance, so a restart fences (and aborts) its predecessor's transaction."""
        s = self.settings
        if s.group_instance_id:
            return f"{s.app_id}-{s.group_instance_id}"
        where = f"{socket.gethostname()}:{s.data_dir.resolve()}"
        return f"{s.app_id}-{hashlib.sha256(where.encode()).hexdigest()[:12]}"

    def _consumer_config(self) -> dict[str, Any]:
        s = self.settings
        config: dict[str, Any] = {
            **s.confluent_config(),
            "group.id": s.app_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            # Co-partitioning: range gives a member the same partition numbers of every topic.
            "partition.assignment.strategy": "range",
            "session.timeout.ms": int(s.session_timeout_s * 1000),
            "heartbeat.interval.ms": int(s.heartbeat_interval_s * 1000),
            "max.poll.interval.ms": max(300_000, int(s.rebalance_timeout_s * 1000)),
            # Defaults as the floor loop's: a record returns a fetch at once, an empty one after 10 ms.
            "fetch.min.bytes": s.consumer_fetch_min_bytes,
            "fetch.wait.max.ms": s.consumer_fetch_max_wait_ms,
            "isolation.level": "read_committed" if self.exactly_once else "read_uncommitted",
        }
        if s.group_instance_id:
            config["group.instance.id"] = s.group_instance_id
        return config

    def _start_clients(self) -> None:
        s = self.settings
        if self.exactly_once:
            self.producer = Producer(
                producer_config(
                    s,
                    **{
                        "transactional.id": self.transactional_id(),
                        "transaction.timeout.ms": 60_000,
                    },
                    **stats_config(self.metrics, "producer"),
                )
            )
            self.producer.init_transactions(30.0)  # aborts a crashed predecessor's transaction
        else:
            acks = {"acks": s.producer_acks, "enable.idempotence": s.producer_acks == -1}
            self.producer = Producer(
                producer_config(s, **acks, **stats_config(self.metrics, "producer"))
            )
            # Decisions never wait for a batch of changelog records to fill (rdkafka_producer.py);
            # with no linger at all, one client sends everything.
            if s.linger_ms > 0:
                self.urgent = Producer(
                    producer_config(
                        s, **acks, **{"linger.ms": 0}, **stats_config(self.metrics, "decisions")
                    )
                )
        self.consumer = Consumer(
            {**self._consumer_config(), **stats_config(self.metrics, "consumer")}
        )
        self.consumer.subscribe(
            list(self._sources),
            on_assign=self._guarded(self._on_assign),
            on_revoke=self._guarded(self._on_revoke),
        )

    def _guarded(
        self, callback: Callable[[Consumer, list[TopicPartition]], None]
    ) -> Callable[[Consumer, list[TopicPartition]], None]:
        """A rebalance callback whose exception stops the loop (confluent-kafka mangles it)."""

        def guarded(consumer: Consumer, partitions: list[TopicPartition]) -> None:
            try:
                callback(consumer, partitions)
            except Exception as exc:
                log.exception("rebalance callback failed")
                self._callback_error = exc
                self._running = False

        return guarded

    # ---- the loop -----------------------------------------------------------------------------

    def stop(self, *_: Any) -> None:
        """Ask the loop to stop after the current turn (a signal handler)."""
        self._running = False

    def run(self) -> int:
        """Consume, process, produce and commit until stop(); returns the process exit code."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        self._start_clients()
        assert self.consumer is not None
        failed: BaseException | None = None
        s = self.settings
        commit_every = s.transaction_interval_s if self.exactly_once else s.commit_interval_s
        next_commit = time.monotonic() + commit_every
        next_gauges = time.monotonic()
        next_snapshot = time.monotonic() + s.snapshot_interval_s
        next_sweep = time.monotonic() + s.state_sweep_interval_s
        spin_until = 0.0  # perf_counter time until which the next poll does not block
        try:
            while self._running:
                now = time.monotonic()
                wait = min(MAX_WAIT_S, max(0.0, next_commit - now))
                due = self._next_timer_in()
                if due is not None:
                    wait = min(wait, due)
                if self._sweep is not None:
                    wait = 0.0
                message = self._poll(wait, spin_until)
                # Loop lag: how long a record arriving now would wait for the next poll.
                busy_from = time.perf_counter()
                if message is not None:
                    self._handle(message)
                    for more in self.consumer.consume(BATCH, 0):
                        self._flush_if_due()  # bounds how long a turn's first decision waits
                        self._handle(more)
                    self._flush()
                    if self._spin_s:
                        spin_until = time.perf_counter() + self._spin_s
                if self._callback_error is not None:
                    raise WorkerFailedError(f"rebalance failed: {self._callback_error!r}")
                self._serve_producers()
                if self._epochs.failure is not None:
                    raise WorkerFailedError(
                        f"a record was not delivered: {self._epochs.failure.str()}"
                    )
                self._fire_timers()
                self._flush()
                now = time.monotonic()
                if now >= next_commit:
                    self._commit()
                    next_commit = now + commit_every
                if now >= next_gauges:
                    self._report_gauges()
                    next_gauges = now + GAUGE_INTERVAL_S
                if now >= next_snapshot:
                    self.publish_snapshots()
                    next_snapshot = now + s.snapshot_interval_s
                if now >= next_sweep and self._sweep is None and self.ready:
                    self._sweep = self._sweep_idle(s.state_sweep_chunk)
                    next_sweep = now + s.state_sweep_interval_s
                if self._sweep is not None:
                    self._advance_sweep()
                    self._flush()
                self.metrics.loop_lag.observe(time.perf_counter() - busy_from)
        except (WorkerFailedError, KafkaException) as exc:
            failed = exc
            log.error("worker stopped: %s", exc)
        except BaseException as exc:
            # Anything else (a disk error in the redo log or a table write, a bug) may have
            # struck between a turn's writes: stop as after a crash, and let it propagate.
            failed = exc
            raise
        finally:
            self._shutdown(clean=failed is None)
        return 0 if failed is None else 1

    def _poll(self, wait: float, spin_until: float) -> Message | None:
        """The next record: polled without blocking until `spin_until`, then waited for.

        Just after a turn with records the next one is likely near; blocking lets the vCPU halt
        and the record find it cold (`consumer_spin_us`). The spun time counts against `wait`,
        so timers stay due.
        """
        assert self.consumer is not None
        if wait > 0 and spin_until:  # spin_until stays 0 with spinning off: no clock read
            spun_from = time.perf_counter()
            while time.perf_counter() < spin_until:
                message = self.consumer.poll(0)
                if message is not None:
                    return message
            wait = max(0.0, wait - (time.perf_counter() - spun_from))
        return self.consumer.poll(wait)

    def _serve_producers(self) -> None:
        assert self.producer is not None
        self.producer.poll(0)
        if self.urgent is not None:
            self.urgent.poll(0)
        if not self.exactly_once:
            done = self._epochs.ready()
            if done is not None:
                self._forget_unacked(done[0])
                self._commit_offsets(done[1], asynchronous=True)

    def _commit_offsets(self, offsets: dict[tuple[str, int], int], asynchronous: bool) -> None:
        """Commit the offsets that moved since the last commit (an idle worker commits nothing)."""
        moved = {k: v for k, v in offsets.items() if self._committed.get(k) != v}
        if moved and self.consumer is not None:
            if asynchronous:
                self.consumer.commit(offsets=_partitions(moved), asynchronous=True)
            else:
                self.consumer.commit(offsets=_partitions(moved), asynchronous=False)
            self._committed.update(moved)

    def _forget_unacked(self, epoch: int) -> None:
        for tables in self.tables.values():
            if tables.unacked is not None:
                tables.unacked.forget_through(epoch)

    def _handle(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.fatal():
                raise KafkaException(error)
            log.warning("consumer: %s", error.str())
            return
        topic = message.topic() or ""
        partition = message.partition() or 0
        offset = message.offset() or 0
        tables = self.tables.get(partition)
        if tables is None:  # not ours (a record fetched before a revocation): not processed
            return
        self._next_offsets[(topic, partition)] = offset + 1
        self._offsets_moved = True
        self._rows.tables = tables
        value = message.value() or b""
        key = message.key()
        names = self.settings.topics
        source = (topic, partition, offset)
        processor = self.processor
        partitions = self.settings.partitions
        try:
            if topic != names.ticks and key is not None and self._misplaced(key, partition):
                result = processor.reroute(value, source, key)
            elif topic == names.events:
                result = processor.on_event(value, self._rows, source, key, partitions)
            elif topic == names.outcomes:
                result = processor.on_outcome(value, self._rows, source, key, partitions)
            elif key is not None:
                result = processor.on_tick(key.decode(errors="replace"), self._rows)
            else:
                return
        except Exception as exc:  # a bug must not stop the stream: dead-letter and go on
            result = processor.processing_error(value, source, exc)
        if result.rerouted:
            carry_headers(result, message.headers())
        self._apply(result, tables)

    def _misplaced(self, key: bytes, partition: int) -> bool:
        """True if a keyed record is not on the partition murmur2 gives its key."""
        return partition_of(key, self.settings.partitions) != partition

    def _produce(
        self,
        topic: str,
        key: bytes,
        value: bytes | None,
        partition: int = -1,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        producer = (
            self.urgent
            if (self.urgent is not None and topic == self.settings.topics.decisions)
            else self.producer
        )
        assert producer is not None
        self._begin()
        callback = self._epochs.callback()
        while True:
            try:
                if headers:
                    producer.produce(
                        topic, value, key, partition, on_delivery=callback, headers=list(headers)
                    )
                else:
                    producer.produce(topic, value, key, partition, on_delivery=callback)
                return
            except BufferError:  # librdkafka's queue is full: serve deliveries, then retry
                producer.poll(0.005)

    def _stage(
        self,
        tables: PartitionTables,
        rows: list[RowWrite],
        outputs: list[OutputRecord],
    ) -> None:
        """Keep a record's rows and outputs for this turn's flush; later reads see the rows."""
        if not rows and not outputs:
            return
        staged = self._staged.get(tables.partition)
        if staged is None:
            if not self._staged:
                self._staged_since = time.perf_counter()
            staged = self._staged[tables.partition] = _StagedWrites(tables)
        for table, key, value in rows:
            staged.rows[(table, key)] = value
        staged.outputs.extend(outputs)
        if self._flush_after_s <= 0:
            self._flush()

    def _flush_if_due(self) -> None:
        """Flush once the oldest staged write has waited `write_batch_ms`: a long turn (many
        records, or many timers due together) sends its first decisions before its last."""
        if self._staged and time.perf_counter() - self._staged_since >= self._flush_after_s:
            self._flush()

    def _flush(self) -> None:
        """Write and send what this turn staged: one note, one batch per table, for all records.

        Group commit: a RocksDB write costs a write() of its WAL, so a turn of N records makes
        a few writes instead of 3 per record. The outputs of a turn leave together, after its
        notes; `write_batch_ms` bounds how long a turn collects before it flushes.
        """
        if not self._staged:
            return
        staged = list(self._staged.values())
        self._staged.clear()
        self._write_all(
            [
                (
                    s.tables,
                    [(table, key, value) for (table, key), value in s.rows.items()],
                    s.outputs,
                )
                for s in staged
            ]
        )

    def _write_all(
        self, writes: list[tuple[PartitionTables, list[RowWrite], list[OutputRecord]]]
    ) -> None:
        """Note each partition's rows and outputs (at least once), send the outputs, write the rows.

        The outputs (decisions first of all) leave before the table writes, which they do not
        wait for: once noted, a crash anywhere after is redone from the note. Rows (value None:
        a delete) go to their table in one write batch per table, and to its changelog partition.
        """
        epoch = self._epochs.current
        for tables, rows, outputs in writes:
            if tables.unacked is not None and (rows or outputs):
                tables.unacked.note(epoch, rows, outputs)
        for _, _, outputs in writes:
            for topic, out_key, out_value, headers in outputs:
                self._produce(topic, out_key, out_value, headers=headers)
        for tables, rows, _ in writes:
            if not rows:
                continue
            batches: dict[str, rocksdict.WriteBatch] = {}
            for table, key, value in rows:
                batch = batches.get(table)
                if batch is None:
                    batch = batches[table] = rocksdict.WriteBatch(raw_mode=True)
                if value is None:
                    batch.delete(key)
                else:
                    batch.put(key, value)
            for table, batch in batches.items():
                tables.store(table).db.write(batch)
            for table, key, value in rows:
                self._produce(
                    self._changelogs[table],
                    key,
                    value,
                    tables.partition,
                    headers=self._writer_header,
                )

    def _begin(self) -> None:
        if self.exactly_once and not self._in_transaction:
            assert self.producer is not None
            self.producer.begin_transaction()
            self._in_transaction = True

    def _apply(self, result: Result, tables: PartitionTables) -> None:
        customer_id = result.customer_id
        rows: list[RowWrite] = []
        rows_before = self._row_count
        if customer_id is not None:
            key = customer_id.encode()
            if result.expired:  # self._rows reads `tables` (set by _handle or _tick)
                if self._rows.row("customers", key) is not None:
                    rows.append(("customers", key, None))
                    self._row_count = max(0, self._row_count - 1)
                if self._rows.row("pending", key) is not None:
                    rows.append(("pending", key, None))
                self.timers.cancel(customer_id)
            else:
                if result.state is not None:
                    rows.append(("customers", key, result.state))
                    if result.new_customer:
                        self._row_count += 1
                if result.pending is not None:
                    rows.append(("pending", key, result.pending))
                self.timers.schedule(customer_id, result.next_due, result.next_deadline)
        self._stage(tables, rows, [(o.topic, o.key, o.value, o.headers) for o in result.outputs])
        if self._row_count != rows_before:
            self.metrics.table_rows.labels(table="customers").set(self._row_count)

    # ---- timers and retention -----------------------------------------------------------------

    def _next_timer_in(self) -> float | None:
        """Seconds until the soonest due time, rounded up to the poll's whole milliseconds.

        confluent-kafka truncates a poll time-out to milliseconds: unrounded, a wait ending just
        before the due time would be followed by polls of 0 ms, a spin until it came.
        """
        soonest = self.timers.soonest()
        if soonest is None or not self.ready:
            return None
        left_ms = math.ceil((soonest - self.clock.now().timestamp()) * 1000.0)
        return max(0.0, (left_ms + 0.5) / 1000.0)

    def _fire_timers(self) -> None:
        """Tick every customer now due; decisions leave every `write_batch_ms`, not after all
        (timers due together, such as a restart's overdue ones, are a batch like a poll's)."""
        if not self.ready or not self.timers.heap:
            return
        for customer_id in self.timers.pop_due(self.clock.now().timestamp()):
            self._flush_if_due()
            self._tick(customer_id)

    def _tick(self, customer_id: str) -> None:
        tables = self.tables.get(partition_of(customer_id.encode(), self.settings.partitions))
        if tables is None:
            return
        self._rows.tables = tables
        try:
            result = self.processor.on_tick(customer_id, self._rows)
        except Exception:  # a bug must not stop the worker: the rows stay as they were
            log.exception("timer failed for a customer; its rows are left as they were")
            return
        self._apply(result, tables)

    def _sweep_idle(self, chunk: int) -> Iterator[list[str]]:
        """Customers idle past the state TTL with nothing open, `chunk` rows at a time."""
        now = self.clock.now()
        found: list[str] = []
        expires = self.processor.expires
        for tables in list(self.tables.values()):
            pending_db = tables.pending.db
            for n, (key, data) in enumerate(tables.customers.db.items(), start=1):
                if (  # raw mode: keys and values are bytes
                    isinstance(key, bytes)
                    and isinstance(data, bytes)
                    and expires(key, data, partial(pending_db.get, key), now)
                ):
                    found.append(_text(key))
                if n % chunk == 0:
                    yield found
                    found = []
        yield found

    def _advance_sweep(self) -> None:
        assert self._sweep is not None
        try:
            batch = next(self._sweep)
        except StopIteration:
            self._sweep = None
            return
        for customer_id in batch:
            self._tick(customer_id)

    # ---- commits ------------------------------------------------------------------------------

    def _commit(self) -> None:
        self._flush()  # the offsets about to close their epoch are of records written and sent
        if self.exactly_once:
            self._commit_transaction()
        else:
            self._epochs.close_epoch(self._next_offsets)

    def _commit_transaction(self) -> None:
        if not self._in_transaction and not self._offsets_moved:
            return
        assert self.producer is not None and self.consumer is not None
        self._begin()
        try:
            self.producer.send_offsets_to_transaction(
                _partitions(self._next_offsets), self.consumer.consumer_group_metadata(), 30.0
            )
            self.producer.commit_transaction(30.0)
        except KafkaException as exc:
            raise WorkerFailedError(f"transaction failed: {exc}") from exc
        self._in_transaction = False
        self._offsets_moved = False

    def _drain(self) -> None:
        """Every produced record acknowledged within STOP_S, and the processed offsets committed
        (a barrier before a stop or a revoke)."""
        self._flush()
        if self.exactly_once:
            self._commit_transaction()
            return
        deadline = time.monotonic() + STOP_S
        for producer in (self.producer, self.urgent):
            if producer is not None:
                left = producer.flush(max(0.0, deadline - time.monotonic()))
                if left:
                    raise WorkerFailedError(f"{left} records not acknowledged in {STOP_S:g} s")
        if self._epochs.failure is not None:
            raise WorkerFailedError(f"a record was not delivered: {self._epochs.failure.str()}")
        self._epochs.close_epoch(self._next_offsets)
        done = self._epochs.ready()
        if done is not None:
            self._forget_unacked(done[0])
            self._commit_offsets(done[1], asynchronous=False)

    # ---- rebalances ---------------------------------------------------------------------------

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = {tp.partition for tp in partitions}
        # Tables already closed: the revoke of consumer.close() after the stop's own drain, or
        # after a failure, whose offsets must not be committed (the replay redoes their records).
        if numbers & set(self.tables):
            self.rebalancing = True
            self.metrics.set_state("recovering")
            clean = True
            try:
                # Bounded like a stop: a revoke with the broker gone (its session timed out)
                # waited 30 s for acknowledgements that could not come, a SIGTERM behind it.
                self._drain()
            except (WorkerFailedError, KafkaException) as exc:
                log.error("could not commit before the rebalance: %s", exc)
                clean = False
            self._close_tables(numbers, clean)
        # Offsets of partitions that may move must not be committed later, over a new owner's.
        self._epochs.waiting.clear()
        for offsets in (self._next_offsets, self._committed):
            for key in [k for k in offsets if k[1] in numbers]:
                del offsets[key]
        self._sweep = None

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._flush()  # records of this turn handled before the rebalance
        self.rebalancing = True
        self.metrics.set_state("recovering")
        numbers = sorted({tp.partition for tp in partitions} - set(self.tables))
        started = time.perf_counter()
        keep_crashed = not self.exactly_once

        def store(table: str, p: int) -> TableStore:
            changelog = self._changelogs[table]
            return TableStore(self.root, table, p, self._options, keep_crashed, changelog)

        opened = {
            p: PartitionTables(
                p,
                store(TABLES[0], p),
                store(TABLES[1], p),
                UnackedWrites(self.root, p, self._options) if keep_crashed else None,
            )
            for p in numbers
        }
        restored, kept = self._recover(opened)
        with self.tables_lock:
            self.tables.update(opened)
        resent = self._resend_unacked(opened, kept)
        self._rebuild_timers()
        log.info(
            "partitions assigned",
            extra={
                "partitions": numbers,
                "changelog_records": restored,
                "kept_after_crash": sorted(f"{table}-{p}" for table, p in kept),
                "rows_resent_to_changelog": resent["rows"],
                "outputs_resent": resent["outputs"],
                "recovery_s": round(time.perf_counter() - started, 3),
            },
        )
        self.rebalancing = False
        if not self.ready:
            log.info(
                "worker ready",
                extra={"ready_after_s": round(time.monotonic() - self.started_at, 3)},
            )
            if self.freeze_heap_when_ready:
                freeze_startup_heap()
        self.ready = True
        self.metrics.set_state("running")

    def _resend_unacked(
        self, opened: dict[int, PartitionTables], kept: set[tuple[str, int]]
    ) -> dict[str, int]:
        """After a crash, send again what may have been lost in the producer (UnackedWrites)."""
        resent = {"rows": 0, "outputs": 0}
        for p, tables in opened.items():
            unacked = tables.unacked
            if unacked is None:
                continue
            if not any((table, p) in kept for table in TABLES):
                unacked.clear()  # rebuilt from the changelog: the replay redoes the work
                continue
            # Written to the tables again too: the crash may have come between a record's note
            # and its table writes.
            redo = [
                (table, key, value)
                for (table, key), value in sorted(unacked.rows().items())
                if (table, p) in kept
            ]
            outputs = unacked.outputs()
            self._write_all([(tables, redo, outputs)])
            resent["rows"] += len(redo)
            resent["outputs"] += len(outputs)
            self._count_resent_decisions(outputs)
        return resent

    def _count_resent_decisions(self, outputs: list[OutputRecord]) -> None:
        """Count the decisions among outputs sent again, as the processor counts its resends."""
        decisions = self.settings.topics.decisions
        for topic, _, value, _ in outputs:
            if topic == decisions:
                campaign = orjson.loads(value).get("campaign", "")
                self.metrics.decisions_resent.labels(campaign=str(campaign)).inc()

    def _close_tables(self, numbers: set[int], clean: bool) -> None:
        ends = self._changelog_ends(numbers) if clean else {}
        with self.tables_lock:
            for p in numbers:
                tables = self.tables.pop(p, None)
                if tables is None:
                    continue
                for store in tables.stores():
                    try:
                        store.close(ends.get((store.table, p)))
                    except Exception as exc:
                        # The next start checks or rebuilds a store that did not close cleanly;
                        # raising here skipped closing the consumer and flushing the producers.
                        log.error("table not closed: %s", exc, extra={"path": str(store.path)})
                if tables.unacked is not None:
                    tables.unacked.close()
        self.timers.clear()
        self._rebuild_timers()

    def _changelog_ends(self, numbers: set[int]) -> dict[tuple[str, int], int]:
        """The changelogs' end offsets (after a drain: everything this worker wrote is in).

        Within STOP_S in all, and none after the first that fails: with the broker gone each
        asked for 10 s, 80 s for 4 partitions, while a SIGTERM waited (found by a stop drill).
        A store without its end gets no checkpoint: the next owner checks or rebuilds it.
        """
        ends: dict[tuple[str, int], int] = {}
        if self.consumer is None:
            return ends
        deadline = time.monotonic() + STOP_S
        for table, topic in self._changelogs.items():
            for p in numbers:
                left = deadline - time.monotonic()
                if left <= 0:
                    return ends
                try:
                    _, high = self.consumer.get_watermark_offsets(
                        TopicPartition(topic, p), timeout=min(left, 10.0), cached=False
                    )
                except KafkaException as exc:
                    log.warning("no changelog end for a checkpoint: %s", exc.args[0].str())
                    return ends
                ends[(table, p)] = high
        return ends

    def _recover(self, opened: dict[int, PartitionTables]) -> tuple[int, set[tuple[str, int]]]:
        """Bring the opened stores up to their changelogs' ends.

        A store closed cleanly reads the records after its checkpoint (another worker's, if the
        partition moved meanwhile). A store left by a crash at least once is kept as it is if
        every changelog record since its owner marker was written by that crashed incarnation
        (the local rows are then as new as the changelog, or newer: their lost records are
        resent by _resend_unacked); otherwise, and in every other case, it is rebuilt from the
        changelog's start. Returns the records applied and the (table, partition) kept.
        """
        kept: set[tuple[str, int]] = set()
        if not opened:
            return 0, kept
        s = self.settings
        reader = Consumer(
            {
                **s.confluent_config(),
                "group.id": f"{s.app_id}-restore",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": 10,
            }
        )
        try:
            stores: dict[tuple[str, int], TableStore] = {}
            marks: dict[tuple[str, int], tuple[int, int]] = {}
            for p, tables in opened.items():
                for store in tables.stores():
                    where = (self._changelogs[store.table], p)
                    stores[where] = store
                    marks[where] = reader.get_watermark_offsets(
                        TopicPartition(*where), timeout=30.0, cached=False
                    )
            # Crashed stores: kept only if nobody else wrote their changelog since.
            suspects = {
                where: store.crashed_owner
                for where, store in stores.items()
                if store.crashed_owner is not None
            }
            foreign: set[tuple[str, int]] = set()

            def check(where: tuple[str, int], message: Message) -> None:
                owner = suspects[where]
                assert owner is not None
                headers = dict(message.headers() or ())
                if headers.get(WRITER_HEADER) != owner[0].encode():
                    foreign.add(where)

            scan = {}
            for where, owner in suspects.items():
                assert owner is not None
                low, high = marks[where]
                if not low <= owner[1] <= high:
                    foreign.add(where)
                else:
                    scan[where] = owner[1]
            self._read_changelogs(reader, scan, marks, check)
            starts: dict[tuple[str, int], int] = {}
            for where, store in stores.items():
                low, high = marks[where]
                if where in suspects and where not in foreign:
                    kept.add((store.table, where[1]))
                    continue
                if where in foreign or store.crashed_owner is not None:
                    store.discard()
                start = store.resume_from
                if start is not None and not low <= start <= high:
                    store.discard()  # compacted or truncated past the checkpoint
                    start = None
                starts[where] = low if start is None else start
            applied = 0
            batches: dict[tuple[str, int], rocksdict.WriteBatch] = {}

            def put(where: tuple[str, int], message: Message) -> None:
                nonlocal applied
                key = message.key()
                if key is None:
                    return
                writes = batches.get(where)
                if writes is None:
                    writes = batches[where] = rocksdict.WriteBatch(raw_mode=True)
                value = message.value()
                if value is None:
                    writes.delete(key)
                else:
                    writes.put(key, value)
                applied += 1

            def flush() -> None:
                for where, writes in batches.items():
                    stores[where].db.write(writes)
                batches.clear()

            self._read_changelogs(reader, starts, marks, put, after_batch=flush)
            for where, store in stores.items():
                store.mark_owner(self.writer, marks[where][1])
            return applied, kept
        finally:
            reader.close()

    @staticmethod
    def _read_changelogs(
        reader: Consumer,
        starts: dict[tuple[str, int], int],
        marks: dict[tuple[str, int], tuple[int, int]],
        on_record: Callable[[tuple[str, int], Message], None],
        after_batch: Callable[[], None] | None = None,
    ) -> None:
        """Read each changelog partition from its start to its end offset (`marks`)."""
        todo = {where: begin for where, begin in starts.items() if begin < marks[where][1]}
        if not todo:
            return
        reader.assign([TopicPartition(t, p, begin) for (t, p), begin in todo.items()])
        remaining = set(todo)
        while remaining:
            for message in reader.consume(1000, 1.0):
                error = message.error()
                where = (message.topic() or "", message.partition() or 0)
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        remaining.discard(where)
                        continue
                    raise KafkaException(error)
                if where in remaining and (message.offset() or 0) < marks[where][1]:
                    on_record(where, message)
            if after_batch is not None:
                after_batch()
        reader.unassign()

    def _rebuild_timers(self) -> None:
        """Re-read due times (timers and attribution deadlines) from the tables held now."""
        self.timers.clear()
        rows = 0
        for tables in self.tables.values():
            rows += index_timers(
                self.timers,
                tables.customers.db.items(),
                tables.pending.db.items(),
                self.metrics,
                self.settings.log_customer_ids,
            )
        self._row_count = rows
        self.metrics.table_rows.labels(table="customers").set(rows)

    # ---- snapshots, gauges, lookups -----------------------------------------------------------

    def publish_snapshots(self) -> int:
        """Send each campaign's models to the compacted models topic if they learned since."""
        if self.settings.learning != "local" or self.producer is None:
            return 0
        sent = 0
        for name, runtime in self.processor.runtimes.items():
            version = runtime.bandit.version
            if version <= self._published_versions.get(name, 0):
                continue
            data = runtime.bandit.snapshot(key=self._snapshot_key)

            def delivered(
                error: KafkaError | None, message: Message, name: str = name, version: int = version
            ) -> None:
                if error is None:
                    self._published_versions[name] = max(
                        version, self._published_versions.get(name, 0)
                    )
                    self.metrics.snapshots.labels(direction="published").inc()
                else:
                    log.error(
                        "model snapshot not published; the worker goes on and retries next interval",
                        extra={"campaign": name, "version": version, "error": error.str()},
                    )
                    self.metrics.snapshots.labels(direction="failed").inc()

            try:
                self._begin()
                self.producer.produce(
                    self.settings.topics.models, data, name.encode(), on_delivery=delivered
                )
                sent += 1
            except (BufferError, KafkaException) as exc:
                log.error("model snapshot not queued: %s", exc, extra={"campaign": name})
                self.metrics.snapshots.labels(direction="failed").inc()
        return sent

    def _report_gauges(self) -> None:
        self.metrics.pending_timers.set(self.timers.customers)
        self.metrics.table_rows.labels(table="customers").set(self._row_count)
        if self.consumer is None:
            return
        names = self.settings.topics
        for p in list(self.tables):
            for topic in (names.events, names.outcomes):
                try:
                    _, high = self.consumer.get_watermark_offsets(
                        TopicPartition(topic, p), cached=True
                    )
                except KafkaException:
                    continue
                if high < 0:
                    continue
                done = self._next_offsets.get((topic, p))
                if done is None:
                    continue
                self.metrics.consumer_lag.labels(topic=topic, partition=str(p)).set(
                    max(0, high - done)
                )

    def customer_rows(self, customer_id: str) -> tuple[bytes | None, bytes | None] | None:
        """A customer's two rows, read from another thread (the web server); None if not held here."""
        key = customer_id.encode()
        with self.tables_lock:
            tables = self.tables.get(partition_of(key, self.settings.partitions))
            if tables is None:
                return None
            state = tables.customers.db.get(key)
            pending = tables.pending.db.get(key)
        return (
            state if isinstance(state, bytes) else None,
            pending if isinstance(pending, bytes) else None,
        )

    # ---- stop ---------------------------------------------------------------------------------

    def _shutdown(self, clean: bool) -> None:
        """Commit what is done, checkpoint the stores if everything was delivered, close clients."""
        self.metrics.set_state("stopping")
        if clean:
            log.info("stopping: sending what is left and committing", extra={"within_s": STOP_S})
            try:
                self._drain()
            except (WorkerFailedError, KafkaException) as exc:
                # Nothing is lost: the unacknowledged records are in the redo log (at least once)
                # or in an aborted transaction (exactly once), and the next start takes it up.
                log.error(
                    "final commit failed (%s): the next start checks the tables against the "
                    "changelog and sends again what was not acknowledged",
                    exc,
                )
                clean = False
        elif self.exactly_once and self._in_transaction and self.producer is not None:
            with contextlib.suppress(KafkaException):
                self.producer.abort_transaction(10.0)
        self._close_tables(set(self.tables), clean)
        if self.consumer is not None:
            self.consumer.close()
        for producer in (self.producer, self.urgent):
            if producer is not None:
                producer.flush(5.0 if clean else 0.0)  # unclean: the redo log has them
        log.info("worker stopped", extra={"clean": clean})


def _partitions(offsets: dict[tuple[str, int], int]) -> list[TopicPartition]:
    return [
        TopicPartition(topic, partition, offset) for (topic, partition), offset in offsets.items()
    ]


def _text(key: object) -> str:
    """A raw RocksDB key as the customer id it encodes."""
    return key.decode() if isinstance(key, bytes) else str(key)

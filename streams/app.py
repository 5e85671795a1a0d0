"""The Faust app of a Kairos worker: topics, RocksDB tables, the processing agent and timers.

One agent consumes the events, outcomes and timer-tick topics, all keyed by customer id with the
same partition count, so a customer's state, pending decisions and outcomes meet in one place and
every table write happens inside the stream (Faust needs the source partition for the changelog).
Timers are due times kept in the tables; an in-memory index (rebuilt from the tables after every
rebalance) turns each due time into a tick record that the agent handles like any other record.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, cast

import faust
from faust.types import EventT

from engine.campaign import Campaign
from engine.clock import Clock, SystemClock
from streams.client_stats import stats_config
from streams.dashboard import register_dashboard
from streams.gc_pauses import freeze_startup_heap
from streams.metrics import WorkerMetrics
from streams.partitioning import partition_of
from streams.processor import (
    Processor,
    Result,
    carry_headers,
    customer_view,
    index_timers,
)
from streams.rdkafka_producer import RdkafkaProducer
from streams.settings import Settings
from streams.timer_index import TimerIndex
from streams.topics import MAX_RECORD_BYTES, TABLES, producer_config

log = logging.getLogger("kairos.app")


class _FaustApp(faust.App):
    """A Faust app whose consumer fetches with a short wait (see streams/transport.py)."""

    def _new_transport(self) -> Any:
        # Faust builds app.producer from this transport, not from the producer transport.
        from streams.rdkafka_producer import RdkafkaTransport

        return RdkafkaTransport(self.conf.broker_consumer, self)

    def _new_producer_transport(self) -> Any:
        from streams.rdkafka_producer import RdkafkaTransport

        return RdkafkaTransport(self.conf.broker_producer, self)


def faust_options(s: Settings) -> dict[str, Any]:
    """Faust settings of a worker, chosen for start-up time and latency (see the comments)."""
    return dict(
        broker=s.broker_url,
        store="rocksdb://",
        datadir=str(s.data_dir),
        topic_partitions=s.partitions,
        topic_replication_factor=s.replication_factor,
        # Start-up: a worker that died leaves its member in the group until the session
        # times out; 10 s (not Faust's 60 s) bounds that wait, heartbeats at 1 s keep it alive.
        broker_session_timeout=s.session_timeout_s,
        broker_heartbeat_interval=s.heartbeat_interval_s,
        broker_rebalance_timeout=s.rebalance_timeout_s,
        broker_commit_interval=s.commit_interval_s,
        consumer_auto_offset_reset="earliest",
        consumer_group_instance_id=s.group_instance_id,
        # Latency: a short linger (see Settings.linger_ms).
        producer_linger=s.linger_ms / 1000.0,
        producer_acks=s.producer_acks,
        # Model snapshots can exceed aiokafka's 1 MB default (streams.topics.MAX_RECORD_BYTES).
        producer_max_request_size=MAX_RECORD_BYTES,
        processing_guarantee=s.processing_guarantee,
        # No leader election topic: Kairos has no leader-only work.
        topic_disable_leader=True,
        table_cleanup_interval=3600.0,
        web_enabled=True,
        web_host=s.web_host,
        web_port=s.web_port,
        web_bind=s.web_host,
        web_in_thread=False,
    )


def rocksdb_options(s: Settings) -> dict[str, int]:
    """Bounded RocksDB memory per table partition (Faust's store reads these table options)."""
    mib = 1024 * 1024
    return {
        "block_cache_size": s.rocksdb_block_cache_mib * mib,
        "write_buffer_size": s.rocksdb_write_buffer_mib * mib,
        "max_write_buffer_number": s.rocksdb_max_write_buffers,
    }


class KairosApp:
    """A configured worker: the Faust app plus the processor and the timer index it drives."""

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
        #: Set by the worker process (not by tests that build apps in-process): see gc_pauses.
        self.freeze_heap_when_ready = False
        self.metrics.set_state("starting")
        self.processor = Processor(settings, campaigns, self.clock, self.metrics)
        self.timers = TimerIndex()
        self.ready = False
        self.started_at = time.monotonic()
        self._published_versions: dict[str, int] = {}
        self._positions: dict[tuple[str, int], int] = {}
        self._rows = 0
        self._snapshot_key = settings.snapshot_key.encode() if settings.snapshot_key else None
        self._rebuild_timers = True
        self.app = self._build_faust_app()

    def _build_faust_app(self) -> faust.App:
        s = self.settings
        # Faust makes its data directory without parents and fails on a nested new path (a
        # fresh KAIROS_DATA_DIR); the rdkafka runtime makes its own with parents: so here too.
        s.data_dir.mkdir(parents=True, exist_ok=True)
        app = _FaustApp(s.app_id, broker_credentials=_credentials(s), **faust_options(s))
        # Non-transactional sends through librdkafka (streams/rdkafka_producer.py), or aiokafka.
        use_rdkafka = s.producer_client == "librdkafka" and s.processing_guarantee != "exactly_once"
        app.kairos_producer_config = (  # type: ignore[attr-defined]
            producer_config(
                s,
                **{"acks": s.producer_acks, "enable.idempotence": s.producer_acks == -1},
                **stats_config(self.metrics, "producer"),
            )
            if use_rdkafka
            else None
        )
        # The action topic is sent without linger, by a client of its own (rdkafka_producer).
        app.kairos_urgent_topics = frozenset({s.topics.decisions})  # type: ignore[attr-defined]
        app.kairos_urgent_overrides = stats_config(self.metrics, "decisions")  # type: ignore[attr-defined]
        raw: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
        names = s.topics
        self.events_topic = app.topic(names.events, partitions=s.partitions, **raw)
        self.outcomes_topic = app.topic(names.outcomes, partitions=s.partitions, **raw)
        self.ticks_topic = app.topic(names.ticks, partitions=s.partitions, **raw)
        self.out_topics = {
            name: app.topic(name, **raw)
            for name in (names.decisions, names.rewards, names.dlq, names.models)
        }
        # Re-routed records (wrong key or partition) go back to where they came from.
        self.out_topics[names.events] = self.events_topic
        self.out_topics[names.outcomes] = self.outcomes_topic
        customers_table, pending_table = TABLES
        self.states = app.Table(
            customers_table,
            partitions=s.partitions,
            key_type=bytes,
            value_type=bytes,
            options=rocksdb_options(s),
        )
        self.pending = app.Table(
            pending_table,
            partitions=s.partitions,
            key_type=bytes,
            value_type=bytes,
            options=rocksdb_options(s),
        )
        source = app.topic(
            names.events, names.outcomes, names.ticks, partitions=s.partitions, **raw
        )
        rows = _TableRows(self)

        @app.agent(source, name="kairos.process")
        async def process(stream: faust.StreamT[bytes]) -> None:
            exactly_once = app.in_transaction
            # Acked by hand, once handled: Faust acks an event as its loop moves on, even when
            # the body raised, and its supervisor restarts the agent after it. A failed table
            # write would then commit past an event whose effects were never written (seen: a
            # disk error on one trigger lost its decision for good, the worker going on).
            manual = cast("faust.Stream[bytes]", stream).noack()  # StreamT does not declare it
            async for event in manual.events():
                try:
                    if exactly_once:  # commits wait until the event is done (and then acked)
                        async with app.consumer.commit_gate:  # type: ignore[attr-defined]
                            await self._handle(event, rows)
                            await manual.ack(event)
                    else:
                        await self._handle(event, rows)
                        await manual.ack(event)
                except Exception as exc:
                    await self._fail(exc)
                    return

        @app.task  # type: ignore[untyped-decorator]
        async def fire_timers() -> None:
            await self.fire_timers_when_due(s.timer_tick_s)

        @app.timer(interval=s.timer_tick_s, name="kairos.lag")  # type: ignore[untyped-decorator]
        async def report_lag() -> None:
            if self.ready and not app.rebalancing:
                self._report_lag()
            producer = app.producer
            if isinstance(producer, RdkafkaProducer):  # its statistics: the broker gauges
                producer.serve_callbacks()

        @app.task  # type: ignore[untyped-decorator]
        async def watch_loop_lag() -> None:
            await self.watch_loop_lag()

        @app.timer(interval=s.state_sweep_interval_s, name="kairos.retention")  # type: ignore[untyped-decorator]
        async def sweep_idle() -> None:
            await self.sweep_idle_customers(s.state_sweep_chunk)

        @app.timer(interval=s.snapshot_interval_s, name="kairos.snapshots")  # type: ignore[untyped-decorator]
        async def publish_snapshots() -> None:
            await self.publish_snapshots()

        @app.on_rebalance_complete.connect  # type: ignore[arg-type]
        async def on_rebalance_complete(sender: Any, **kwargs: Any) -> None:
            self._rebuild_timers = True
            if not self.ready:
                log.info(
                    "worker ready",
                    extra={"ready_after_s": round(time.monotonic() - self.started_at, 3)},
                )
                if self.freeze_heap_when_ready:
                    freeze_startup_heap()
            self.ready = True
            self.metrics.set_state("running")

        @app.on_partitions_revoked.connect  # type: ignore[arg-type]
        async def on_revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
            self.metrics.set_state("recovering")

        @app.page("/healthz")
        async def healthz(web: Any, request: Any) -> Any:
            return web.json({"status": "ok"})

        @app.page("/readyz")
        async def readyz(web: Any, request: Any) -> Any:
            ready = self.ready and not app.rebalancing
            return web.json({"ready": ready}, status=200 if ready else 503)

        @app.page("/metrics")
        async def metrics(web: Any, request: Any) -> Any:
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            body = generate_latest(self.metrics.registry)
            return web.bytes(body, content_type=CONTENT_TYPE_LATEST.split(";")[0])

        @app.page("/customers/{customer_id}")
        async def customer(web: Any, request: Any, customer_id: str) -> Any:
            key = customer_id.encode()
            view = customer_view(self.states.get(key), self.pending.get(key))
            if view is None:
                return web.json({"error": "unknown customer"}, status=404)
            return web.json(view, status=500 if "error" in view else 200)

        register_dashboard(app, self.metrics)
        return app

    def discard_local_tables(self) -> int:
        """Delete this worker's RocksDB table files, so that Faust rebuilds them from the changelog.

        Exactly-once needs it at every start. RocksDB is written as records are processed, not
        at the transaction's commit, so after a crash the local tables hold the effects of events
        whose transaction was aborted (their decisions and rewards never became visible). The
        replayed events then find their effect already in the row and are skipped as
        redeliveries: their decisions were lost (seen: 134 of 2,951 triggers in one SIGKILL test
        run). Rebuilt from the committed changelog, the tables hold only committed effects and the
        replay decides again, in a transaction that commits. A clean stop's last transaction is
        not known to have committed either, so the tables are rebuilt after every start; the cost
        is reading the compacted changelogs (BENCHMARKS.md, Start-up). Returns the paths removed.
        """
        tabledir = Path(self.app.conf.tabledir)
        removed = 0
        for table in TABLES:
            for path in [*tabledir.glob(f"{table}-*.db"), tabledir / f"{table}-backups"]:
                if path.is_dir():
                    shutil.rmtree(path)
                    removed += 1
        return removed

    async def _handle(self, event: EventT[Any], rows: _TableRows) -> None:
        message = event.message
        topic = message.topic
        source = (topic, message.partition, message.offset)
        self._positions[(topic, message.partition)] = message.offset
        value: bytes = event.value if isinstance(event.value, bytes) else b""
        key = event.key if isinstance(event.key, bytes) else None
        names = self.settings.topics
        partitions = self.settings.partitions
        try:
            if topic != names.ticks and key is not None and self._misplaced(key, message):
                result = self.processor.reroute(value, source, key)
            elif topic == names.events:
                result = self.processor.on_event(value, rows, source, key, partitions)
            elif topic == names.outcomes:
                result = self.processor.on_outcome(value, rows, source, key, partitions)
            elif key is not None:
                result = self.processor.on_tick(key.decode(errors="replace"), rows)
            else:
                return
        except Exception as exc:  # a bug must not stop the stream: dead-letter and go on
            result = self.processor.processing_error(value, source, exc)
        if result.rerouted:
            carry_headers(result, message.headers)
        await self._apply(result)

    async def _fail(self, exc: BaseException) -> None:
        """Stop the worker as crashed: the event that failed stays unacked, so the restart
        replays it (as after a SIGKILL: the processor recognises what was already written)."""
        log.error("worker stopped: %r", exc, exc_info=exc)
        self.metrics.set_state("stopping")
        await self.app.crash(exc)

    def _misplaced(self, key: bytes, message: Any) -> bool:
        """True if a keyed record is not on the partition murmur2 gives its key (wrong partitioner)."""
        return bool(partition_of(key, self.settings.partitions) != message.partition)

    async def _apply(self, result: Result) -> None:
        if result.customer_id is not None and result.expired:
            key = result.customer_id.encode()
            if key in self.states:
                del self.states[key]  # a tombstone in the changelog: compaction drops the row
                self._rows = max(0, self._rows - 1)
                self.metrics.table_rows.labels(table="customers").set(self._rows)
            if key in self.pending:
                del self.pending[key]
            self.timers.cancel(result.customer_id)
        elif result.customer_id is not None:
            key = result.customer_id.encode()
            # Two tables, two RocksDB writes: a crash between them must not lose a decision.
            # With new decisions the pending row goes first: a replay then finds the state
            # without the event, decides again, finds the decision already open and resends it
            # (Processor._decide_all). Otherwise the state row goes first, so a replayed outcome
            # whose pending write was lost is joined (and its reward sent) again.
            decided_first = bool(result.decisions) and result.pending is not None
            if decided_first:
                self.pending[key] = result.pending
            if result.state is not None:
                self.states[key] = result.state
                if result.new_customer:
                    self._rows += 1
                    self.metrics.table_rows.labels(table="customers").set(self._rows)
            if result.pending is not None and not decided_first:
                self.pending[key] = result.pending
            self.timers.schedule(result.customer_id, result.next_due, result.next_deadline)
        for out in result.outputs:
            await self.out_topics[out.topic].send(key=out.key, value=out.value)

    async def publish_snapshots(self) -> int:
        """Send each campaign's models to the compacted models topic if they learned since."""
        sent = 0
        if self.settings.learning != "local":
            return sent  # the learner publishes; a deciding-only worker must not overwrite it
        for name, runtime in self.processor.runtimes.items():
            version = runtime.bandit.version
            if version <= self._published_versions.get(name, 0):
                continue
            data = runtime.bandit.snapshot(key=self._snapshot_key)
            try:  # refused (too large, topic gone, broker down): log, count, retry next interval
                delivery = await self.out_topics[self.settings.topics.models].send(
                    key=name.encode(), value=data
                )
                await delivery
            except Exception as exc:
                log.error(
                    "model snapshot not published; the worker goes on and retries next interval",
                    extra={
                        "campaign": name,
                        "version": version,
                        "bytes": len(data),
                        "error": repr(exc),
                    },
                )
                self.metrics.snapshots.labels(direction="failed").inc()
                continue
            self._published_versions[name] = version
            self.metrics.snapshots.labels(direction="published").inc()
            sent += 1
        return sent

    async def fire_timers_when_due(self, tick_s: float) -> None:
        """For ever: send a tick for each customer due, then sleep until the next due time.

        A fixed tick of `tick_s` made a derived trigger wait half a tick on average (measured:
        due -> decided p50 44 ms with 50 ms ticks); the sleep now ends at the soonest due time,
        and lasts a tick at most, so that timers added meanwhile (and a rebuild) are seen.
        """
        while True:
            await self._fire_due()
            await asyncio.sleep(self.timer_wait(tick_s))

    def timer_wait(self, tick_s: float) -> float:
        """Seconds until the soonest due time, at most `tick_s`.

        A full tick while nothing fires: not ready yet, or rebalancing (due times already past
        would otherwise wake the task at once, again and again).
        """
        soonest = self.timers.soonest()
        if soonest is None or not self.ready or self.app.rebalancing:
            return tick_s
        return min(tick_s, max(0.0, soonest - self.clock.now().timestamp()))

    async def _fire_due(self) -> None:
        if not self.ready or self.app.rebalancing:
            return
        if self._rebuild_timers:
            self._rebuild_timers = False
            self._rebuild_index()
        for customer_id in self.timers.pop_due(self.clock.now().timestamp()):
            await self.ticks_topic.send(key=customer_id.encode(), value=b"")
        self.metrics.pending_timers.set(self.timers.customers)

    async def watch_loop_lag(self, interval_s: float = 0.01) -> None:
        """Measure event-loop stalls for ever: how much later than asked a short sleep returns."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(interval_s)
            self.metrics.loop_lag.observe(max(0.0, loop.time() - started - interval_s))

    async def sweep_idle_customers(self, chunk: int = 256) -> int:
        """Send a tick for each customer idle past the state TTL; the agent then removes the rows.

        Table writes must happen in the agent (Faust's rule), so the sweep only finds candidates;
        the tick re-checks under the customer's partition order. The scan yields to the event
        loop every `chunk` rows so that decisions keep flowing while a large table is read.
        """
        if not self.ready or self.app.rebalancing:
            return 0
        now = self.clock.now()
        found: list[bytes] = []
        expires = self.processor.expires
        for n, (key, data) in enumerate(self.states.items(), start=1):
            if isinstance(data, bytes) and expires(key, data, partial(self.pending.get, key), now):
                found.append(key)
            if n % chunk == 0:
                await asyncio.sleep(0)
                if self.app.rebalancing:
                    return 0  # the partitions may have moved: the next sweep starts over
        for key in found:
            await self.ticks_topic.send(key=key, value=b"")
        if found:
            log.info("retention sweep: %d idle customers to expire", len(found))
        return len(found)

    def _report_lag(self) -> None:
        """Consumer lag per source partition: the broker's end offset minus the next to process."""
        names = self.settings.topics
        for tp in self.app.consumer.assignment():
            if tp.topic not in (names.events, names.outcomes):
                continue
            end = self.app.consumer.highwater(tp)
            if end is None:
                continue
            last = self._positions.get((tp.topic, tp.partition))
            behind = end - (last + 1 if last is not None else 0)
            self.metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(
                max(0, behind)
            )

    def _rebuild_index(self) -> None:
        """Re-read due times from the tables of the partitions this worker now holds."""
        started = time.perf_counter()
        self.timers.clear()
        self._rows = index_timers(
            self.timers,
            self.states.items(),
            self.pending.items(),
            self.metrics,
            self.settings.log_customer_ids,
        )
        self.metrics.table_rows.labels(table="customers").set(self._rows)
        log.info(
            "timer index rebuilt: %d customers in %.3f s",
            self.timers.customers,
            time.perf_counter() - started,
        )


class _TableRows:
    """The processor's view of the Faust tables, read from their RocksDB stores directly.

    A Faust table's `get` reads RocksDB twice for a present key: mode's dict checks `key in
    data` (a lookup) before `data[key]` (another), because the table defines `__missing__`.
    The store's own `get` is one lookup (in the event's partition), the same row.
    """

    def __init__(self, owner: KairosApp) -> None:
        self._owner = owner

    def state(self, customer_id: str) -> bytes | None:
        value = self._owner.states.data.get(customer_id.encode())
        return value if isinstance(value, bytes) else None

    def pending(self, customer_id: str) -> bytes | None:
        value = self._owner.pending.data.get(customer_id.encode())
        return value if isinstance(value, bytes) else None


def _credentials(settings: Settings) -> Any:
    """Faust credentials for SASL/SSL, or None for plaintext."""
    sec = settings.security
    if sec.protocol == "PLAINTEXT":
        return None
    ssl_context = None
    if sec.protocol in ("SSL", "SASL_SSL"):
        import ssl

        ssl_context = ssl.create_default_context(
            cafile=str(sec.ssl_cafile) if sec.ssl_cafile else None
        )
        if sec.ssl_certfile:
            ssl_context.load_cert_chain(
                str(sec.ssl_certfile), str(sec.ssl_keyfile) if sec.ssl_keyfile else None
            )
    if sec.protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=sec.sasl_username,
            password=sec.sasl_password,
            mechanism=sec.sasl_mechanism or "PLAIN",
            ssl_context=ssl_context,
        )
    return faust.SSLCredentials(ssl_context)

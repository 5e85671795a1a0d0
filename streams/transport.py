"""Faust's aiokafka transport with a short fetch wait and a producer flush that really drains.

Fetch wait:
Faust builds its worker consumer with ``fetch_max_wait_ms=1500``. When the consumer still holds
records of one partition, aiokafka fetches only the others; if they are idle (a changelog, the
timer-tick topic), the broker holds that fetch for the full wait, and new records of the busy
partition wait behind it. Measured: trigger-to-decision p50 of 1.2-1.4 s at 1,000 triggers/s in
that state. A short wait bounds the stall; an idle worker pays a few more empty fetches a second.

Flush: before committing offsets Faust flushes its producer buffer (table changelog records), but
the buffer's flush returns as soon as one message takes more than 0.1 s to go out, with records
still queued. Offsets could then be committed ahead of changelog records, and a SIGKILL in that
window lost a customer's state update (seen in tests/integration/test_reliability.py). The
flush here waits until every record buffered before it has reached the Kafka client, including
the one the buffer's sender task has taken off its queue but not yet handed over (the queue is
empty then, yet the record is in neither place that a flush waits for).
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar, cast

import aiokafka
from faust.streams import current_event
from faust.transport.consumer import TransactionManager
from faust.transport.drivers import aiokafka as faust_aiokafka

#: Upper bound on how long the broker may hold a fetch that finds no new records.
FETCH_MAX_WAIT_MS = 10
#: How many records before a changelog's end the search for its last committed record reads first.
PROBE_FIRST_RECORDS = 64
#: How long that search may take per partition before recovery falls back to Faust's own wait.
PROBE_TIMEOUT_S = 10.0

log = logging.getLogger("kairos.transport")


class LowLatencyConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """The worker consumer thread, with its consumer's fetch wait shortened."""

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # Read by AIOKafkaConsumer.start() when it builds its Fetcher (not yet started here).
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer

    async def _highwaters(self, partitions: list[Any]) -> Mapping[Any, int]:
        """Where Faust's recovery stops reading each changelog partition: asked of the broker, and
        under exactly-once the offset after the last committed record.

        Faust reads a changelog until it has applied the record just before this offset. Under
        exactly-once it took the consumer's cached last stable offset, which is only known after
        a fetch of that partition has returned: None at a start (read as "empty") or an older
        value. A restart then rebuilt its tables from nothing, or from part of the changelog,
        and decided on a customer state missing committed events (the exactly-once crash test
        failed 2 of 13 runs: a worker ready in 2 s with no customers after its predecessor had
        committed 944 changelog records). A ListOffsets request at the read_committed isolation
        level returns the last stable offset as the broker knows it now; recovery runs after the
        transactional producers have started, which fences the dead worker's open transactions,
        so that offset no longer waits on them.

        The record just before the last stable offset is a transaction marker, which no
        consumer receives, so Faust waited for it until two 5 s time-outs had passed (every
        exactly-once restart ready after 12 s instead of 2). So the end given here is the offset
        after the last record a read_committed consumer receives (see _after_last_record).
        """
        consumer = self._ensure_consumer()
        ends = dict(await consumer.end_offsets(partitions))
        if not self.consumer.in_transaction:
            return ends
        starts = await consumer.beginning_offsets(partitions)
        to_probe = [tp for tp, end in ends.items() if end is not None and end > starts[tp]]
        if not to_probe:
            return ends  # every changelog empty (a first start): no probe consumer to connect
        probe = self._new_probe_consumer()
        await probe.start()
        # One turn of the loop, so that the task its no-group coordinator starts gets to run:
        # stop() cancels and awaits it, and a task cancelled before its first step re-raises the
        # cancellation there, leaving the client open (seen when the reads below did not yield).
        await asyncio.sleep(0)
        try:
            for tp in to_probe:
                ends[tp] = await _after_last_record(probe, tp, starts[tp], ends[tp])
        finally:
            await probe.stop()
        return ends

    def _new_probe_consumer(self) -> aiokafka.AIOKafkaConsumer:
        """A consumer of no group that reads what is committed, to find a changelog's last record."""
        conf = self.app.conf
        transport = cast(faust_aiokafka.Transport, self.transport)
        return aiokafka.AIOKafkaConsumer(
            bootstrap_servers=faust_aiokafka.server_list(transport.url, transport.default_port),
            client_id=f"{conf.broker_client_id}-recovery-end",
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            request_timeout_ms=int(conf.broker_request_timeout * 1000.0),
            **faust_aiokafka.credentials_to_aiokafka_auth(
                conf.broker_credentials, conf.ssl_context
            ),
        )


async def _after_last_record(
    probe: aiokafka.AIOKafkaConsumer, tp: Any, start: int, end: int
) -> int:
    """The offset after the last record below `end` that a read_committed consumer receives.

    Reads back from `end` (the last stable offset) in widening steps until a step holds a
    committed record; `start` if none is left (everything was aborted or compacted away). If the
    read does not reach `end` in time, `end` itself: Faust then waits as it always did.
    """
    probe.assign([tp])
    span = PROBE_FIRST_RECORDS
    deadline = asyncio.get_running_loop().time() + PROBE_TIMEOUT_S
    while True:
        first = max(start, end - span)
        probe.seek(tp, first)
        last: int | None = None
        while await probe.position(tp) < end:
            if asyncio.get_running_loop().time() > deadline:
                log.warning(
                    "changelog end not found in time; recovery waits for its marker",
                    extra={"tp": f"{tp.topic}[{tp.partition}]", "end": end},
                )
                return end
            batch = await probe.getmany(tp, timeout_ms=100)
            for record in batch.get(tp, ()):
                if record.offset < end:
                    last = record.offset if last is None else max(last, record.offset)
        if last is not None:
            return last + 1
        if first == start:
            return start
        span *= 8


class LowLatencyConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer with a short fetch wait, and a start after each rebalance that
    neither skips nor falsely acks source records.

    Three defects of the stock consumer, all seen in tests/integration/test_reliability.py by
    instrumenting SIGKILL restarts:

    1. Faust's recovery resumes the source partitions and only then seeks them to their committed
       offsets (an OffsetFetch round trip later). Records delivered in between are processed;
       the seek then moves the read position back while the rest of the fetched batch is still
       being delivered, and Faust takes the jump for a gap in the log (as if it were transaction
       markers): it marks those offsets done, and its commits then advance one offset per commit
       interval (seen: events.v1[0] 731 read, then 740; gap 732..740; commits 733, 734, 735...).
       Here source partitions are paused from the assignment until the seek is done.
    2. A source partition without a committed offset is not sought at all, so records fetched
       and dropped while the flow was stopped (a batch cut short by a rebalance) are never read
       again (seen: a partition's first 4,957 records skipped by two workers in a row). Here such
       a partition goes back to its beginning, which is what `auto_offset_reset=earliest` means.

    3. Faust drops the rest of a fetched batch for a partition that is not in its live set of
       active partitions while the batch is delivered, and the client's position has already
       moved past it (seen right after "worker ready" on restarts: events.v1[1] batch 1565..4957
       fetched from the committed offset, none delivered, no seek after). The next fetch starts
       after the batch, Faust marks the jump as a gap (done), and at-least-once skips whatever
       of the batch the killed worker had not processed: the crash test's rare loss (about one
       run in seven, "a fetch jumping one batch ahead"). Here such records are fetched again
       (see getmany).

    These apply under exactly-once too. They were first kept to at-least-once (with the stock
    consumer the exactly-once crash test then lost 1 event a run, with them up to 9), but once
    decisions joined their event's transaction and commits waited for the event in hand, the
    stock consumer's defects were what remained: on 2026-12-01 the exactly-once crash test lost
    a run of never-committed records of the first worker (events.v1[1] offsets 7-11 and [0]
    68-72, never processed by any worker, no dead letter) in 2 of 3 runs without these changes,
    and passed 10 of 10 runs with them.
    """

    _seek_pending: bool = False
    _held: frozenset[Any] = frozenset()
    _commit_gate: asyncio.Lock | None = None

    @property
    def commit_gate(self) -> asyncio.Lock:
        """Held while an event is processed under exactly-once; a transaction commits only between.

        A transaction holds the records sent so far and the offsets acked so far. A commit in the
        middle of an event (its processing awaits sends) would commit its decision without its
        offset, and a crash before the next commit would decide it again after the restart.
        """
        if self._commit_gate is None:
            self._commit_gate = asyncio.Lock()
        return self._commit_gate

    _batch: Any = None
    _batch_seeks: int = 0
    _seeks: int = 0

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return LowLatencyConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _source_tps(self, tps: Any) -> set[Any]:
        return {tp for tp in tps if not self._is_changelog_tp(tp)}

    async def on_partitions_assigned(self, assigned: Any, generation_id: int = 0) -> None:
        """A new assignment: source partitions stay paused until the seek to committed offsets."""
        self._seek_pending = True
        self._held = frozenset()
        self._paused_partitions.update(self._source_tps(assigned))
        await super().on_partitions_assigned(assigned, generation_id)

    def resume_partitions(self, tps: Any) -> None:
        """Resume changelog partitions at once; source partitions only after the seek."""
        tps = set(tps)
        if self._seek_pending:
            held = self._source_tps(tps)
            self._held = self._held | held
            tps -= held
        super().resume_partitions(tps)

    async def _wait_next_records(self, timeout: float) -> Any:
        """Faust's fetch, remembering the batch so that getmany can tell what it did not deliver."""
        records, active = await super()._wait_next_records(timeout)
        self._batch = records
        self._batch_seeks = self._seeks
        return records, active

    async def seek(self, partition: Any, offset: int) -> None:
        """Faust's seek, counted (a seek after a fetch makes that batch's positions stale)."""
        self._seeks += 1
        await super().seek(partition, offset)

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[Any, Any]]:
        """Faust's getmany; then fetched source records it did not deliver are fetched again.

        Faust drops the rest of a fetched batch for a partition that left its (live) set of
        active partitions during the batch, e.g. paused by recovery, while the client's read
        position has already moved past the batch. Nothing seeks it back, so those records
        would never be read, and the next record's offset would look like a log gap that
        Faust marks as done (at-least-once would silently skip events). Here the partition is
        sought back to its first undelivered record. Drops during a rebalance (flow stopped,
        generation changed) are left to the seek to committed offsets that follows it.
        """
        generation = self.app.consumer_generation_id
        delivered: dict[Any, int] = {}
        self._batch = None
        async for tp, message in super().getmany(timeout):
            delivered[tp] = message.offset
            yield tp, message
        batch, self._batch = self._batch, None
        if not batch or self._seeks != self._batch_seeks:
            return  # a seek since the fetch (e.g. to committed offsets) already set positions
        rebalancing = not self.flow_active or self.app.consumer_generation_id != generation
        assignment: Any = None
        for tp, records in batch.items():
            done = delivered.get(tp)
            if not records or (done is not None and done >= records[-1].offset):
                continue  # all of it was delivered: the usual case, checked in O(1)
            if rebalancing or self._is_changelog_tp(tp):
                continue  # a rebalance seeks every partition to its committed offset
            if assignment is None:
                assignment = self.assignment()
            if tp not in assignment:
                continue
            undelivered = [r.offset for r in records if done is None or r.offset > done]
            log.warning(
                "fetched records not delivered by Faust; reading them again",
                extra={
                    "tp": f"{tp.topic}[{tp.partition}]",
                    "first": undelivered[0],
                    "count": len(undelivered),
                },
            )
            await self.seek(tp, undelivered[0])

    async def _commit_tps(self, tps: Any, start_new_transaction: bool) -> bool:
        """Under exactly-once, commit only between events, with their changelog records flushed.

        The gate (see ``commit_gate``) is taken before Faust reads the acked offsets, so a
        transaction never holds an event's decision without that event's offset. Faust flushes
        its producer buffer before a plain offset commit but not before committing a transaction:
        table changelog records still buffered then went out in the next transaction, and a crash
        that aborted it lost them while the events' offsets were committed (the exactly-once
        crash test lost one customer update per run). So the buffer is flushed here first.
        """
        if not self.in_transaction:
            return bool(await super()._commit_tps(tps, start_new_transaction))
        async with self.commit_gate:
            await self.app.producer.buffer.flush()
            return bool(await super()._commit_tps(tps, start_new_transaction))

    async def perform_seek(self) -> None:
        """Seek to committed offsets (never-committed ones to the start), then release the held."""
        self._seeks += 1
        try:
            await super().perform_seek()
            assignment = self.assignment()
            never_committed = [
                tp for tp in self._source_tps(assignment) if self._committed_offset.get(tp) is None
            ]
            if never_committed:
                await self._thread.seek_to_beginning(
                    *(faust_aiokafka.ensure_aiokafka_TP(tp) for tp in never_committed)
                )
                for tp in never_committed:
                    self._read_offset[tp] = None
        finally:
            self._seek_pending = False
            held, self._held = self._held, frozenset()
            if held:
                super().resume_partitions(held)


async def _drain(buffer: Any) -> None:
    """Wait until every message buffered before this call has been handed to the client.

    A barrier, not "until empty": under steady load the buffer is rarely empty, and waiting for
    that could hold an offset commit back indefinitely. Records put after the call belong to
    events that are not acked yet, so the commit does not cover them.
    """
    target = buffer.kairos_put
    while buffer.kairos_handed < target:
        if buffer.state != "running" and (buffer.state != "stopping" or buffer.size):
            # Stopping with only a record in hand: the sender task finishes that one. With
            # records still queued it sends no more (Faust's own flush raises here too).
            raise RuntimeError(f"cannot flush: producer buffer is {buffer.state}")
        buffer.message_sent.clear()
        try:
            await asyncio.wait_for(buffer.message_sent.wait(), timeout=1.0)
        except TimeoutError:
            continue  # still sending: keep waiting, never commit ahead of the changelog


def _count_messages(buffer: Any) -> None:
    """Number the buffer's messages as they are put and as the client takes them (FIFO order).

    Counting at the client, not at the queue, matters: the buffer's sender task takes a message
    off the queue before handing it to the client, so an empty queue does not mean sent.
    """
    buffer.kairos_put = 0
    buffer.kairos_handed = 0
    put = buffer.put
    send = buffer._send_pending

    def counted_put(fut: Any) -> None:
        put(fut)
        buffer.kairos_put += 1

    async def counted_send(fut: Any) -> None:
        try:
            await send(fut)
        finally:
            buffer.kairos_handed += 1

    buffer.put = counted_put
    # The sender task looks `_send_pending` up when it starts, after this instance attribute.
    buffer._send_pending = counted_send


class DrainingProducer(faust_aiokafka.Producer):
    """Faust's aiokafka producer whose buffer flush waits for everything buffered before it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        buffer: Any = self.buffer
        _count_messages(buffer)
        buffer.flush = types.MethodType(_drain, buffer)


class SourceTransactionManager(TransactionManager):
    """Exactly-once: a record goes into the transaction of the source partition it was made for.

    Faust picks a record's transaction from its destination: the transactional producer of the
    destination partition's co-partitioned group. That works for table changelogs (same group
    and partition as the source), but for a topic the worker does not consume (the action topic,
    rewards, dead letters) the consumer knows no partitions, and Faust then sends the record
    outside any transaction (faust-streaming issues #177, #517). A decision was then visible to
    read_committed readers even when its event's transaction was aborted by a crash, and the
    event's reprocessing decided again: a duplicate decision in each crash test run. Here such a
    record joins the transaction of the event being processed, which commits with that event's
    offset, as in Kafka Streams where a task's outputs share the task's transaction.
    """

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
        *,
        transactional_id: str | None = None,
    ) -> Any:
        """Send in the destination's transaction if Faust knows one, else in the event's."""
        if self.consumer.key_partition(topic, key, partition) is None:
            event = current_event()
            if event is not None:
                source = event.message.tp
                group = self.app.assignor.group_for_topic(source.topic)
                return await self.producer.send(
                    topic,
                    key,
                    value,
                    partition,
                    timestamp,
                    headers,
                    transactional_id=f"{self.app.conf.id}-{group}-{source.partition}",
                )
        return await super().send(topic, key, value, partition, timestamp, headers)


class LowLatencyTransport(faust_aiokafka.Transport):
    """The aiokafka transport (``kafka://``) with the low-latency consumer and draining producer."""

    Consumer: ClassVar[type[Any]] = LowLatencyConsumer
    Producer: ClassVar[type[Any]] = DrainingProducer
    TransactionManager: ClassVar[type[Any]] = SourceTransactionManager

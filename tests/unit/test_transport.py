"""The draining producer buffer: a flush before an offset commit waits for every changelog record."""

from __future__ import annotations

import asyncio
import types
from typing import Any

from faust.transport.producer import ProducerBuffer

from streams.transport import _count_messages, _drain


class _Conf:
    producer_threaded = False


class _App:
    conf = _Conf()


async def _buffer_with_a_slow_client() -> tuple[Any, asyncio.Event, list[str]]:
    """Faust's real producer buffer, its sender task running, whose client send blocks on a gate."""
    buffer: Any = ProducerBuffer()
    buffer.app = _App()
    gate = asyncio.Event()
    handed: list[str] = []

    async def slow_client_send(fut: str) -> None:
        await gate.wait()
        handed.append(fut)

    buffer._send_pending = slow_client_send
    _count_messages(buffer)
    buffer.flush = types.MethodType(_drain, buffer)
    await buffer.start()
    return buffer, gate, handed


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_a_flush_waits_for_the_record_taken_off_the_queue_but_not_yet_with_the_client() -> None:
    async def scenario() -> None:
        buffer, gate, handed = await _buffer_with_a_slow_client()
        buffer.put("changelog-record")
        await _settle()
        # The sender task has taken the record: the queue is empty, the client has nothing yet.
        assert buffer.size == 0 and handed == []
        # Faust's own flush sees an empty queue and returns at once; a commit would then run
        # ahead of this record (the window in which a SIGKILL lost a state update).
        assert await ProducerBuffer.flush_atmost(buffer, None) == 0
        flush = asyncio.ensure_future(buffer.flush())
        await _settle()
        assert not flush.done()
        gate.set()
        await asyncio.wait_for(flush, 5)
        assert handed == ["changelog-record"]
        await buffer.stop()

    asyncio.run(scenario())


def test_a_flush_is_a_barrier_it_does_not_wait_for_records_put_after_it() -> None:
    async def scenario() -> None:
        buffer: Any = ProducerBuffer()
        buffer.app = _App()
        release_before = asyncio.Event()
        release_later = asyncio.Event()
        handed: list[str] = []

        async def client_send(fut: str) -> None:
            # The client is slow with the records from before the flush, and stuck on later ones.
            await (release_later if fut.startswith("after") else release_before).wait()
            handed.append(fut)

        buffer._send_pending = client_send
        _count_messages(buffer)
        buffer.flush = types.MethodType(_drain, buffer)
        await buffer.start()
        buffer.put("before-1")
        buffer.put("before-2")
        flush = asyncio.ensure_future(buffer.flush())
        await asyncio.sleep(0)  # the flush starts (as Faust's commit awaits it) before more come
        assert not flush.done()
        buffer.put("after-1")
        buffer.put("after-2")
        release_before.set()
        # Under steady load the buffer is never empty; the commit still goes through once the
        # records from before it are out.
        await asyncio.wait_for(flush, 5)
        assert handed == ["before-1", "before-2"]
        assert buffer.size > 0
        release_later.set()
        await asyncio.wait_for(buffer.flush(), 5)
        assert handed == ["before-1", "before-2", "after-1", "after-2"]
        await buffer.stop()

    asyncio.run(scenario())

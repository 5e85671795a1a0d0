"""The rdkafka worker's redo log (streams/redo_log.py): notes, forgetting, torn tails, carry-over."""

from __future__ import annotations

import struct
from pathlib import Path

import msgspec
import rocksdict

from streams.redo_log import UnackedWrites


def _options() -> rocksdict.Options:
    options = rocksdict.Options(raw_mode=True)
    options.create_if_missing(True)
    return options


def _output(n: int) -> tuple[str, bytes, bytes, list[tuple[str, bytes]]]:
    return ("kairos.decisions.v1", b"c%d" % n, b'{"n":%d}' % n, [("h", b"v")])


def test_notes_survive_a_reopen_in_order_and_the_newest_row_wins(tmp_path: Path) -> None:
    log = UnackedWrites(tmp_path, 0, _options())
    log.note(10, [("customers", b"a", b"1"), ("pending", b"a", b"p1")], [_output(1)])
    log.note(10, [("customers", b"a", b"2")], [_output(2)])
    log.note(11, [("pending", b"a", None), ("customers", b"b", b"3")], [_output(3)])
    log.close()  # as a crash leaves it: nothing forgotten

    again = UnackedWrites(tmp_path, 0, _options())
    assert again.rows() == {
        ("customers", b"a"): b"2",
        ("pending", b"a"): None,
        ("customers", b"b"): b"3",
    }
    assert again.outputs() == [_output(1), _output(2), _output(3)]
    assert UnackedWrites(tmp_path, 1, _options()).outputs() == []  # partitions are apart


def test_forgetting_an_epoch_drops_it_and_every_earlier_one(tmp_path: Path) -> None:
    log = UnackedWrites(tmp_path, 0, _options())
    for epoch in (5, 6, 7):
        log.note(epoch, [("customers", b"k%d" % epoch, b"v")], [_output(epoch)])
    log.forget_through(6)
    assert log.outputs() == [_output(7)]
    log.note(7, [], [_output(8)])  # the open segment is still written after a forget
    log.forget_through(7)
    assert log.rows() == {} and log.outputs() == []
    log.note(8, [], [_output(9)])
    log.clear()
    assert log.outputs() == [] and not list(log.path.iterdir())


def test_a_torn_last_write_ends_the_reading_without_losing_what_came_before(
    tmp_path: Path,
) -> None:
    log = UnackedWrites(tmp_path, 0, _options())
    log.note(3, [("customers", b"a", b"1")], [_output(1)])
    log.note(3, [("customers", b"a", b"2")], [_output(2)])
    log.close()
    (segment,) = log.path.iterdir()
    data = segment.read_bytes()
    segment.write_bytes(data[:-3])  # the second frame cut short
    assert UnackedWrites(tmp_path, 0, _options()).outputs() == [_output(1)]
    corrupt = bytearray(data)
    corrupt[-1] ^= 0xFF  # a flipped byte fails the second frame's CRC
    segment.write_bytes(bytes(corrupt))
    assert UnackedWrites(tmp_path, 0, _options()).rows() == {("customers", b"a"): b"1"}


def test_notes_an_earlier_version_left_in_rocksdb_are_carried_over(tmp_path: Path) -> None:
    """Keys: epoch, tag (c, p: rows; o: outputs), customer key or sequence number."""
    epoch = struct.Struct(">Q")
    old = rocksdict.Rdict(str(tmp_path / "unacked-2.db"), _options())
    old[epoch.pack(40) + b"c" + b"a"] = b"\x01" + b"state-a"
    old[epoch.pack(40) + b"p" + b"a"] = b"\x00"
    old[epoch.pack(40) + b"o" + epoch.pack(1)] = msgspec.msgpack.encode(_output(1))
    old[epoch.pack(41) + b"c" + b"a"] = b"\x01" + b"state-a2"
    old[epoch.pack(41) + b"o" + epoch.pack(2)] = msgspec.msgpack.encode(_output(2))
    old.close()

    log = UnackedWrites(tmp_path, 2, _options())
    assert log.rows() == {("customers", b"a"): b"state-a2", ("pending", b"a"): None}
    assert log.outputs() == [_output(1), _output(2)]
    assert not (tmp_path / "unacked-2.db").exists()
    log.forget_through(40)
    assert log.outputs() == [_output(2)]

"""The rdkafka worker's redo log: what it wrote whose Kafka records may not be acknowledged yet.

A crash can lose records still in the producer while the RocksDB writes that go with them
survive: a changelog record (the replayed source record then finds its effect in the row and is
skipped, so the changelog would miss that row version for good), or an output record (a
decision, or a reward: the replayed outcome is then a duplicate, and the reward would never be
sent). And a crash can fall between the writes of one turn's rows. So everything a turn changes
in a partition (its row values and its output records) is noted here first, in one append,
under its commit epoch, before the tables are written; an epoch is forgotten once all its
records are acknowledged. After a crash whose tables are kept, the rows still noted are written
to the tables again and sent to the changelog again, and the output records are sent again,
byte-identical (downstream drops repeats by id).

Why a log file and not RocksDB: the notes are written once, read only after a crash and
deleted about a second later. In RocksDB each note cost a write batch, a memtable insert and,
later, a flush and compaction of data already deleted: ~15% of a trigger's CPU in the worker
(py-spy, in process). Here a note is one ``write()`` of a framed msgpack record to the epoch's
segment file, and forgetting an epoch deletes its segment. Durability is the same as RocksDB's
default WAL: the bytes are in the OS page cache when ``note`` returns (they survive the worker
process being killed; an fsync per turn would cost a disk flush per decision).

Frame: 4-byte big-endian payload length, 4-byte CRC-32 of the payload, payload. A torn or
corrupt frame ends its segment's reading (a crash can cut the last write short).
"""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from pathlib import Path

import msgspec
import rocksdict

#: A row write: table, customer key, value (None: a delete).
RowWrite = tuple[str, bytes, bytes | None]
#: An output record: topic, key, value, headers.
OutputRecord = tuple[str, bytes, bytes, list[tuple[str, bytes]]]
#: What one note holds: the rows and the output records of one turn in one partition.
Note = tuple[list[RowWrite], list[OutputRecord]]

_FRAME = struct.Struct(">II")
_SEGMENT_SUFFIX = ".log"
_note_encoder = msgspec.msgpack.Encoder()
_note_decoder = msgspec.msgpack.Decoder(Note)


class UnackedWrites:
    """One partition's redo log: notes grouped in one segment file per commit epoch."""

    def __init__(self, root: Path, partition: int, options: rocksdict.Options) -> None:
        """Open (or create) the partition's log; notes left in the RocksDB form are carried over."""
        self.path = root / f"unacked-{partition}"
        self.path.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = None
        self._fd_epoch: int | None = None
        _carry_over_rocksdb_notes(root / f"unacked-{partition}.db", self, options)

    def _segment(self, epoch: int) -> Path:
        return self.path / f"{epoch:020d}{_SEGMENT_SUFFIX}"

    def _segments(self) -> list[tuple[int, Path]]:
        found = []
        for path in self.path.iterdir():
            if path.suffix == _SEGMENT_SUFFIX and path.stem.isdigit():
                found.append((int(path.stem), path))
        return sorted(found)

    def note(self, epoch: int, rows: list[RowWrite], outputs: list[OutputRecord]) -> None:
        """Everything one turn changes in `epoch`: rows (value None: a delete) and outputs."""
        if self._fd_epoch != epoch:
            self._close_segment()
            self._fd = os.open(
                self._segment(epoch), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644
            )
            self._fd_epoch = epoch
        assert self._fd is not None
        payload = _note_encoder.encode((rows, outputs))
        data = memoryview(_FRAME.pack(len(payload), zlib.crc32(payload)) + payload)
        while data:
            data = data[os.write(self._fd, data) :]

    def forget_through(self, epoch: int) -> None:
        """Every record of epochs up to `epoch` is acknowledged: their segments go."""
        if self._fd_epoch is not None and self._fd_epoch <= epoch:
            self._close_segment()
        for number, path in self._segments():
            if number > epoch:
                break
            path.unlink(missing_ok=True)

    def notes(self) -> list[Note]:
        """Every note still kept, in the order written (epoch, then append order)."""
        found: list[Note] = []
        for _, path in self._segments():
            data = path.read_bytes()
            at = 0
            while at + _FRAME.size <= len(data):
                size, crc = _FRAME.unpack_from(data, at)
                payload = data[at + _FRAME.size : at + _FRAME.size + size]
                if len(payload) != size or zlib.crc32(payload) != crc:
                    break  # a torn last write: nothing after it was acknowledged either
                found.append(_note_decoder.decode(payload))
                at += _FRAME.size + size
        return found

    def rows(self) -> dict[tuple[str, bytes], bytes | None]:
        """The newest noted value of every row still noted (None: deleted), by (table, key)."""
        rows: dict[tuple[str, bytes], bytes | None] = {}
        for noted_rows, _ in self.notes():
            for table, key, value in noted_rows:
                rows[(table, key)] = value
        return rows

    def outputs(self) -> list[OutputRecord]:
        """Every output record still noted, in the order produced."""
        return [output for _, outputs in self.notes() for output in outputs]

    def clear(self) -> None:
        """Forget everything (the tables were rebuilt from the changelog)."""
        self._close_segment()
        for _, path in self._segments():
            path.unlink(missing_ok=True)

    def _close_segment(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None
        self._fd_epoch = None

    def close(self) -> None:
        """Close the open segment (its bytes are already in the OS's hands)."""
        self._close_segment()


# ---- the RocksDB form of earlier versions ------------------------------------------------------

_EPOCH = struct.Struct(">Q")
_TAG_TABLES = {b"c": "customers", b"p": "pending"}
_OUTPUT_TAG = b"o"
_DELETED = b"\x00"
_old_output_decoder = msgspec.msgpack.Decoder(OutputRecord)


def _carry_over_rocksdb_notes(path: Path, log: UnackedWrites, options: rocksdict.Options) -> None:
    """Move the notes a worker of an earlier version left in RocksDB into the log, then drop it.

    Keys there were epoch (8 bytes), a tag (c/p: a row of customers/pending, o: an output) and
    the customer key or a sequence number; row values a marker byte then the row, or 0 alone for
    a delete. Each epoch becomes one note under its own epoch, so the key order is kept.
    """
    if not path.exists():
        return
    db = rocksdict.Rdict(str(path), options)
    try:
        by_epoch: dict[int, Note] = {}
        for raw, value in db.items():  # key order: epoch order
            if not isinstance(raw, bytes) or not isinstance(value, bytes):
                continue
            epoch = _EPOCH.unpack_from(raw)[0]
            rows, outputs = by_epoch.setdefault(epoch, ([], []))
            tag = raw[_EPOCH.size : _EPOCH.size + 1]
            if tag in _TAG_TABLES:
                rows.append(
                    (
                        _TAG_TABLES[tag],
                        raw[_EPOCH.size + 1 :],
                        None if value == _DELETED else value[1:],
                    )
                )
            elif tag == _OUTPUT_TAG:
                outputs.append(_old_output_decoder.decode(value))
        for epoch, (rows, outputs) in sorted(by_epoch.items()):
            log.note(epoch, rows, outputs)
        log.close()
    finally:
        db.close()
    shutil.rmtree(path, ignore_errors=True)

"""The snapshot envelope: magic, version, checksum, HMAC, and the pickle gate."""

from __future__ import annotations

import struct

import pytest

from engine.snapshot import FORMAT_VERSION, MAGIC, SnapshotError, pack, unpack

BODY = b"\x81\xa1a\x01"


def test_round_trip_unsigned_and_signed() -> None:
    """A body comes back unchanged; a signed one verifies with its key."""
    assert unpack(pack(BODY)) == (BODY, False)
    assert unpack(pack(BODY, key=b"k"), key=b"k") == (BODY, False)
    assert unpack(pack(BODY, key=b"k", contains_pickle=True), key=b"k") == (BODY, True)


def test_signed_without_key_reads_but_never_allows_pickle() -> None:
    """A signed safe body can be read without the key; a pickle body cannot."""
    assert unpack(pack(BODY, key=b"k")) == (BODY, False)
    with pytest.raises(SnapshotError, match="pickled"):
        unpack(pack(BODY, key=b"k", contains_pickle=True))


def test_pickle_needs_a_key_to_pack() -> None:
    """An unsigned pickle snapshot is never produced."""
    with pytest.raises(SnapshotError, match="signed"):
        pack(BODY, contains_pickle=True)


def test_forged_pickle_flag_without_signature_is_refused() -> None:
    """Setting the pickle flag on an unsigned envelope does not get pickle loaded."""
    data = bytearray(pack(BODY))
    data[10] |= 2
    with pytest.raises(SnapshotError, match="pickled"):
        unpack(bytes(data))
    with pytest.raises(SnapshotError, match="not signed"):
        unpack(bytes(data), key=b"k")


def test_wrong_key_and_tampering() -> None:
    """A wrong key, a changed body or a changed MAC all fail with a clear message."""
    data = pack(BODY, key=b"right")
    with pytest.raises(SnapshotError, match="bad signature"):
        unpack(data, key=b"wrong")
    with pytest.raises(SnapshotError, match="checksum"):
        unpack(data[:-1] + b"\x00")
    mac_at = struct.calcsize("<8sHBB32s")
    tampered = data[:mac_at] + bytes(32) + data[mac_at + 32 :]
    with pytest.raises(SnapshotError, match="bad signature"):
        unpack(tampered, key=b"right")


def test_key_requires_a_signed_snapshot() -> None:
    """With a key configured, an unsigned snapshot is refused."""
    with pytest.raises(SnapshotError, match="not signed"):
        unpack(pack(BODY), key=b"k")


def test_bad_magic_version_and_length() -> None:
    """Foreign bytes, a future format version and truncation are rejected."""
    with pytest.raises(SnapshotError, match="too short"):
        unpack(b"abc")
    with pytest.raises(SnapshotError, match="magic"):
        unpack(b"X" * 8 + pack(BODY)[8:])
    future = MAGIC + struct.pack("<H", FORMAT_VERSION + 1) + pack(BODY)[10:]
    with pytest.raises(SnapshotError, match="format version"):
        unpack(future)
    with pytest.raises(SnapshotError, match="checksum"):
        unpack(pack(BODY)[:-2])
    with pytest.raises(SnapshotError, match="flags"):
        data = bytearray(pack(BODY))
        data[10] = 0x80
        unpack(bytes(data))

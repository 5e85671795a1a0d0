"""The model snapshot envelope: magic, format version, flags, body checksum, optional HMAC.

Layout (little-endian): `MAGIC` (8 bytes) | format version (u16) | flags (u8) | reserved (u8) |
sha256 of the body (32 bytes) | HMAC-SHA256 of everything before it plus the body (32 bytes,
only when the SIGNED flag is set) | body. The body is msgpack (msgspec, typed decoding, no code
execution). A body that embeds pickle (River models) is flagged PICKLE and is only accepted when
its HMAC verifies with the reader's key: pickle from an unauthenticated source is never loaded.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

__all__ = [
    "FLAG_PICKLE",
    "FLAG_SIGNED",
    "FORMAT_VERSION",
    "MAGIC",
    "SnapshotError",
    "pack",
    "unpack",
]

MAGIC = b"KAIROSB\x00"
FORMAT_VERSION = 1
FLAG_SIGNED = 1
FLAG_PICKLE = 2
_HEADER = struct.Struct("<8sHBB32s")
_MAC_LEN = 32


class SnapshotError(Exception):
    """A snapshot that cannot be trusted or read: bad magic, version, checksum or signature."""


def pack(body: bytes, key: bytes | None = None, contains_pickle: bool = False) -> bytes:
    """Wrap a body in the envelope, signing it with HMAC-SHA256 when a key is given."""
    if contains_pickle and not key:
        raise SnapshotError(
            "a snapshot of pickled (River) models must be signed: configure a snapshot key"
        )
    flags = (FLAG_SIGNED if key else 0) | (FLAG_PICKLE if contains_pickle else 0)
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, flags, 0, hashlib.sha256(body).digest())
    if not key:
        return header + body
    mac = hmac.new(key, header + body, hashlib.sha256).digest()
    return header + mac + body


def unpack(data: bytes, key: bytes | None = None) -> tuple[bytes, bool]:
    """Check the envelope and return (body, whether the body may contain pickle).

    With a key, the snapshot must be signed with that key. A PICKLE body is refused unless its
    signature was verified.
    """
    if len(data) < _HEADER.size:
        raise SnapshotError(f"snapshot too short ({len(data)} bytes): not a Kairos snapshot")
    magic, version, flags, _reserved, digest = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise SnapshotError("bad magic: not a Kairos model snapshot")
    if version != FORMAT_VERSION:
        raise SnapshotError(
            f"unsupported snapshot format version {version} (this build reads {FORMAT_VERSION})"
        )
    if flags & ~(FLAG_SIGNED | FLAG_PICKLE):
        raise SnapshotError(f"unknown snapshot flags {flags:#x}")
    signed = bool(flags & FLAG_SIGNED)
    start = _HEADER.size + (_MAC_LEN if signed else 0)
    if len(data) < start:
        raise SnapshotError("snapshot truncated inside its header")
    body = data[start:]
    if not hmac.compare_digest(hashlib.sha256(body).digest(), digest):
        raise SnapshotError("checksum mismatch: the snapshot body is corrupt or truncated")
    verified = False
    if key:
        if not signed:
            raise SnapshotError("snapshot is not signed but a snapshot key is configured")
        mac = data[_HEADER.size : start]
        expected = hmac.new(key, data[: _HEADER.size] + body, hashlib.sha256).digest()
        if not hmac.compare_digest(mac, expected):
            raise SnapshotError("bad signature: the snapshot was not signed with this key")
        verified = True
    if flags & FLAG_PICKLE and not verified:
        raise SnapshotError(
            "refusing an unsigned or unverified snapshot with pickled models: "
            "pass the snapshot key to restore it"
        )
    return body, verified and bool(flags & FLAG_PICKLE)

"""Dead-letter records: the original bytes, where they came from, and why they were refused."""

from __future__ import annotations

import base64
from datetime import datetime

import orjson

from schemas.codec import RecordError


def dead_letter_record(
    raw: bytes, topic: str, partition: int, offset: int, error: RecordError, now: datetime
) -> bytes:
    """Encode a dead letter as JSON; the original bytes travel base64-encoded, unchanged."""
    return orjson.dumps(
        {
            "reason": error.reason,
            "detail": error.detail,
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "original": base64.b64encode(raw).decode("ascii"),
            "dead_lettered_at": now.isoformat(),
        }
    )


def original_bytes(dead_letter: bytes) -> bytes:
    """The refused record's original bytes, for replay after a fix."""
    return base64.b64decode(orjson.loads(dead_letter)["original"])

"""Dead-letter records: the original bytes, where they came from, and why they were refused."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Final

import orjson

from schemas.codec import RecordError

#: Most bytes of a refused record a dead letter carries: base64 makes them 4/3 as many, within
#: the dead-letter topic's record limit (streams.topics.MAX_RECORD_BYTES, 16 MiB). A record larger
#: still (from a topic whose limit was raised past it) is cut, and the letter says so and where to
#: find the whole record.
ORIGINAL_LIMIT_BYTES: Final[int] = 8 * 1024 * 1024


def dead_letter_record(
    raw: bytes,
    topic: str,
    partition: int,
    offset: int,
    error: RecordError,
    now: datetime,
    key: bytes | None = None,
) -> bytes:
    """Encode a dead letter as JSON; the original bytes and key travel base64-encoded, unchanged
    (the key may be the only clue to whose a record without a customer id was).

    Above ORIGINAL_LIMIT_BYTES only the first that many travel (`original_truncated`, with
    `original_size`): a letter the broker refuses would stop the worker at every start.
    """
    letter: dict[str, object] = {
        "reason": error.reason,
        "detail": error.detail,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "original": base64.b64encode(raw[:ORIGINAL_LIMIT_BYTES]).decode("ascii"),
        "key": None if key is None else base64.b64encode(key).decode("ascii"),
        "dead_lettered_at": now.astimezone(UTC).isoformat().replace("+00:00", "Z"),  # as records
    }
    if len(raw) > ORIGINAL_LIMIT_BYTES:
        letter["original_truncated"] = True
        letter["original_size"] = len(raw)
    return orjson.dumps(letter)


def original_bytes(dead_letter: bytes) -> bytes:
    """The refused record's original bytes, for replay after a fix."""
    return base64.b64decode(orjson.loads(dead_letter)["original"])

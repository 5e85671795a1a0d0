"""Structured JSON logs, one object per line, for log shippers; never raw payloads at info level."""

from __future__ import annotations

import hashlib
import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}


class JsonFormatter(logging.Formatter):
    """Format a record as a JSON object with time, level, logger, message and any extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one log line."""
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(payload, default=str).decode()


def configure_logging(level: str = "info") -> None:
    """Send every logger's records to stderr as JSON lines at the given level."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(level, logging.INFO))
    # Faust and aiokafka are chatty at info; their warnings still pass.
    for noisy in ("faust", "mode", "aiokafka", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(root.level, logging.WARNING))


def customer_ref(customer_id: str, mode: str) -> str | None:
    """How a customer id appears in logs: as is, as a short keyed-free hash, or not at all.

    The hash (blake2b, 8 bytes) lets an operator follow one customer through the logs and match
    an id they already know, without the logs holding the ids themselves.
    """
    if mode == "plain":
        return customer_id
    if mode == "hashed":
        return hashlib.blake2b(customer_id.encode(), digest_size=8).hexdigest()
    return None

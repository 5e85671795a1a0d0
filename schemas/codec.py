"""JSON codecs for wire records: fast strict decode, one error type with a reason for the DLQ."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar

import msgspec

from schemas.records import (
    EVENT_TYPES,
    OUTCOME_TYPES,
    SCHEMA_VERSION,
    Decision,
    Event,
    Outcome,
    RewardRecord,
    Trigger,
)

#: Largest accepted record, checked before parsing so a huge payload costs nothing.
MAX_RECORD_BYTES: Final[int] = 64 * 1024

#: The reasons a record can be rejected with (the DLQ groups by these).
REASONS: Final[frozenset[str]] = frozenset(
    {
        "malformed_json",
        "invalid_record",
        "unknown_type",
        "unsupported_schema_version",
        "missing_customer_id",
        "oversized",
        "timestamp_out_of_range",
    }
)

Buffer = bytes | bytearray | memoryview | str
Record = Event | Outcome | Trigger | Decision | RewardRecord
_S = TypeVar("_S", Event, Outcome, Decision, RewardRecord)


class RecordError(ValueError):
    """A record that cannot be accepted; `reason` is one of REASONS, `detail` names the field."""

    def __init__(self, reason: str, detail: str) -> None:
        """Keep reason and detail as attributes (and as args, so the error pickles)."""
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        """Render as ``reason: detail`` for logs and DLQ headers."""
        return f"{self.reason}: {self.detail}"


_ENCODER: Final = msgspec.json.Encoder()
_EVENT_DECODER: Final = msgspec.json.Decoder(Event)
_OUTCOME_DECODER: Final = msgspec.json.Decoder(Outcome)
_DECISION_DECODER: Final = msgspec.json.Decoder(Decision)
_REWARD_DECODER: Final = msgspec.json.Decoder(RewardRecord)
_UNTYPED_DECODER: Final = msgspec.json.Decoder()


def encode(record: Record) -> bytes:
    """Encode a wire record as compact JSON (msgspec: faster than orjson for Structs)."""
    return _ENCODER.encode(record)


def encode_action(decision: Decision, *, features: bool = False) -> bytes:
    """Encode a decision for the action topic: without its features unless `features` is set.

    Senders need the action, its ids and times, not the model's inputs: leaving them out halves
    the record (and keeps derived customer data off a topic many consumers read). Learning and
    evaluation read the features from rewards.v1. A lean record decodes with ``features == {}``.
    """
    if features:
        return _ENCODER.encode(decision)
    fields = msgspec.structs.asdict(decision)
    del fields["features"]
    return _ENCODER.encode(fields)


def _check_size(data: Buffer) -> None:
    """Reject payloads above MAX_RECORD_BYTES before spending any time parsing them."""
    n = len(data)
    if isinstance(data, str) and n * 4 > MAX_RECORD_BYTES:
        n = len(data.encode("utf-8", "surrogatepass"))
    elif isinstance(data, memoryview):
        n = data.nbytes
    if n > MAX_RECORD_BYTES:
        raise RecordError("oversized", f"{n} bytes > {MAX_RECORD_BYTES}")


def _blank(value: object) -> bool:
    """True when a customer id is absent, null, empty or only whitespace."""
    return value is None or (isinstance(value, str) and not value.strip())


def _classify(
    data: Buffer, exc: msgspec.ValidationError, types: frozenset[str] | None, nested: str | None
) -> RecordError:
    """Turn a validation failure into the most specific reason (slow path, errors only)."""
    # Re-parse untyped with the same parser (orjson differs on edge cases such as 1e400), so a
    # syntax error after the first type error is still reported as malformed_json.
    try:
        obj: Any = _UNTYPED_DECODER.decode(data)
    except msgspec.ValidationError:
        return RecordError("invalid_record", str(exc))
    except msgspec.DecodeError as err:
        return RecordError("malformed_json", str(err))
    if isinstance(obj, dict):
        version = obj.get("schema_version", SCHEMA_VERSION)
        if type(version) is int and version != SCHEMA_VERSION:
            return RecordError("unsupported_schema_version", f"schema_version {version}")
        holder = obj.get(nested) if nested else obj
        if isinstance(holder, dict) and _blank(holder.get("customer_id")):
            return RecordError("missing_customer_id", "customer_id is missing or blank")
        kind = obj.get("type")
        if types is not None and isinstance(kind, str) and kind not in types:
            return RecordError("unknown_type", f"type {kind!r} - at `$.type`")
    return RecordError("invalid_record", str(exc))


def _decode(
    decoder: msgspec.json.Decoder[_S],
    data: Buffer,
    types: frozenset[str] | None = None,
    nested: str | None = None,
) -> _S:
    """Size check, then one strict msgspec pass; classify only when it fails."""
    _check_size(data)
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise _classify(data, exc, types, nested) from None
    except msgspec.DecodeError as exc:
        if not len(data):  # not memoryview-safe to compare with b""
            raise RecordError("malformed_json", "empty record (a tombstone, or no value)") from None
        raise RecordError("malformed_json", str(exc)) from None


def _utc(ts: datetime) -> datetime:
    """An aware datetime in UTC (the same object when it already is); timestamp_out_of_range if
    UTC cannot hold it (year 1 at +14:00 was a processing_error with an OverflowError traceback)."""
    if ts.tzinfo is UTC:
        return ts
    try:
        return ts.astimezone(UTC)
    except OverflowError:
        raise RecordError(
            "timestamp_out_of_range", f"ts {ts.isoformat()} is outside the dates UTC can hold"
        ) from None


def _check_common(version: int, customer_id: str) -> None:
    """Checks every record shares: schema version, then a non-blank customer id."""
    if version != SCHEMA_VERSION:
        raise RecordError("unsupported_schema_version", f"schema_version {version}")
    if customer_id.isspace():
        raise RecordError("missing_customer_id", "customer_id is blank - at `$.customer_id`")


def decode_event(data: Buffer) -> Event:
    """Decode and validate an event from JSON; timestamps come back in UTC."""
    event = _decode(_EVENT_DECODER, data, EVENT_TYPES)
    _check_common(event.schema_version, event.customer_id)
    if event.type not in EVENT_TYPES:
        raise RecordError("unknown_type", f"type {event.type!r} - at `$.type`")
    ts = event.ts
    if ts.tzinfo is not UTC:
        event = msgspec.structs.replace(event, ts=_utc(ts))
    return event


def decode_outcome(data: Buffer) -> Outcome:
    """Decode and validate an outcome from JSON; timestamps come back in UTC."""
    outcome = _decode(_OUTCOME_DECODER, data, OUTCOME_TYPES)
    _check_common(outcome.schema_version, outcome.customer_id)
    if outcome.type not in OUTCOME_TYPES:
        raise RecordError("unknown_type", f"type {outcome.type!r} - at `$.type`")
    ts = outcome.ts
    if ts.tzinfo is not UTC:
        outcome = msgspec.structs.replace(outcome, ts=_utc(ts))
    return outcome


def _normalize_decision(decision: Decision) -> Decision:
    """Bring a decision's timestamps to UTC."""
    send_at = decision.send_at
    if (
        decision.trigger_ts.tzinfo is UTC
        and decision.decided_ts.tzinfo is UTC
        and decision.attribution_deadline.tzinfo is UTC
        and (send_at is None or send_at.tzinfo is UTC)
    ):
        return decision
    return msgspec.structs.replace(
        decision,
        trigger_ts=_utc(decision.trigger_ts),
        decided_ts=_utc(decision.decided_ts),
        attribution_deadline=_utc(decision.attribution_deadline),
        send_at=None if send_at is None else _utc(send_at),
    )


def decode_decision(data: Buffer) -> Decision:
    """Decode and validate a decision from JSON; timestamps come back in UTC."""
    decision = _decode(_DECISION_DECODER, data)
    _check_common(decision.schema_version, decision.customer_id)
    return _normalize_decision(decision)


def decode_reward(data: Buffer) -> RewardRecord:
    """Decode and validate a reward record (with its nested decision) from JSON."""
    record = _decode(_REWARD_DECODER, data, nested="decision")
    _check_common(record.schema_version, record.decision.customer_id)
    _check_common(record.decision.schema_version, record.decision.customer_id)
    decision = _normalize_decision(record.decision)
    if decision is not record.decision or record.joined_ts.tzinfo is not UTC:
        record = msgspec.structs.replace(
            record, decision=decision, joined_ts=_utc(record.joined_ts)
        )
    return record


def _seconds(limit: timedelta | float) -> float:
    """Accept a window as a timedelta or as float seconds."""
    return limit.total_seconds() if isinstance(limit, timedelta) else float(limit)


def check_time(
    ts: datetime, now: datetime, max_past: timedelta | float, max_future: timedelta | float
) -> None:
    """Raise timestamp_out_of_range when ts is before now-max_past or after now+max_future."""
    if ts.tzinfo is None or now.tzinfo is None:
        raise RecordError("invalid_record", "naive datetime: timestamps must be timezone-aware")
    delta = (ts - now).total_seconds()
    past, future = _seconds(max_past), _seconds(max_future)
    if delta < -past:
        raise RecordError(
            "timestamp_out_of_range",
            f"ts {ts.isoformat()} is {-delta:.0f}s in the past (max {past:.0f}s)",
        )
    if delta > future:
        raise RecordError(
            "timestamp_out_of_range",
            f"ts {ts.isoformat()} is {delta:.0f}s in the future (max {future:.0f}s)",
        )

"""Kairos wire contracts: records, JSON codecs with DLQ reasons, JSON Schema files."""

from schemas.codec import (
    MAX_RECORD_BYTES,
    REASONS,
    RecordError,
    check_time,
    decode_decision,
    decode_event,
    decode_outcome,
    decode_reward,
    encode,
    encode_action,
)
from schemas.records import (
    CHANNELS,
    EVENT_TYPES,
    OUTCOME_TYPES,
    SCHEMA_VERSION,
    Decision,
    Event,
    Outcome,
    RewardRecord,
    Trigger,
)

__all__ = [
    "CHANNELS",
    "EVENT_TYPES",
    "MAX_RECORD_BYTES",
    "OUTCOME_TYPES",
    "REASONS",
    "SCHEMA_VERSION",
    "Decision",
    "Event",
    "Outcome",
    "RecordError",
    "RewardRecord",
    "Trigger",
    "check_time",
    "decode_decision",
    "decode_event",
    "decode_outcome",
    "decode_reward",
    "encode",
    "encode_action",
]

"""JSON codec: strict decoding with precise DLQ reasons, UTC normalisation, round trips."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

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
from schemas.records import EVENT_TYPES, OUTCOME_TYPES, Decision, Event, Outcome, RewardRecord

TS = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
BASE = {"event_id": "e1", "customer_id": "c1", "type": "cart_add", "ts": "2025-03-01T12:00:00Z"}


def raw(**changes: object) -> bytes:
    """A JSON event with some fields changed (None removes the field)."""
    obj = {**BASE, **changes}
    return orjson.dumps({k: v for k, v in obj.items() if v is not None})


def reason_of(data: bytes) -> RecordError:
    with pytest.raises(RecordError) as info:
        decode_event(data)
    assert info.value.reason in REASONS
    return info.value


def make_decision(**changes: object) -> Decision:
    fields: dict[str, object] = {
        "decision_id": "d1",
        "customer_id": "c1",
        "campaign": "cart_abandonment",
        "action_id": "email:discount_10:reminder:now",
        "action": {"channel": "email", "offer": "discount_10"},
        "propensity": 0.8,
        "probabilities": {"email:discount_10:reminder:now": 0.8, "no_action": 0.2},
        "scores": {"email:discount_10:reminder:now": 0.1, "no_action": 0.0},
        "features": {"bias": 1.0},
        "model_version": 3,
        "explore": False,
        "holdout": False,
        "reason": "policy",
        "cost": 0.002,
        "trigger_id": "t1",
        "trigger_type": "cart_abandoned",
        "trigger_event_id": "e1",
        "trigger_ts": TS,
        "decided_ts": TS + timedelta(seconds=1),
        "attribution_deadline": TS + timedelta(days=3),
    }
    fields.update(changes)
    return Decision(**fields)  # type: ignore[arg-type]


def test_decodes_a_full_event() -> None:
    data = raw(
        product_id="sku-1",
        category="shoes",
        price=59.9,
        quantity=2,
        channel="web",
        timezone="Europe/Paris",
        properties={"page": "/p/1", "n": 3, "x": 1.5, "ok": True},
    )
    event = decode_event(data)
    assert event.ts == TS and event.ts.tzinfo is UTC
    assert (event.product_id, event.price, event.quantity) == ("sku-1", 59.9, 2)
    assert event.properties == {"page": "/p/1", "n": 3, "x": 1.5, "ok": True}


def test_offset_timestamps_are_converted_to_utc() -> None:
    event = decode_event(raw(ts="2025-03-01T14:00:00+02:00"))
    assert event.ts == TS
    assert event.ts.tzinfo is UTC


def test_naive_timestamp_is_invalid() -> None:
    error = reason_of(raw(ts="2025-03-01T12:00:00"))
    assert error.reason == "invalid_record"
    assert "$.ts" in error.detail


def test_wrong_type_names_the_field() -> None:
    error = reason_of(raw(customer_id=12))
    assert error.reason == "invalid_record"
    assert error.detail == "Expected `str`, got `int` - at `$.customer_id`"
    assert "$.price" in reason_of(raw(price="cheap")).detail
    assert "$.properties" in reason_of(raw(properties={"nested": {"a": 1}})).detail


@pytest.mark.parametrize("value", [None, "", "   ", "\t\n"])
def test_missing_or_blank_customer_id(value: str | None) -> None:
    data = raw(customer_id=value) if value is not None else raw(customer_id=None)
    assert reason_of(data).reason == "missing_customer_id"


def test_missing_other_field_is_invalid_record() -> None:
    error = reason_of(raw(event_id=None))
    assert error.reason == "invalid_record"
    assert "event_id" in error.detail


def test_unknown_types() -> None:
    assert reason_of(raw(type="teleport")).reason == "unknown_type"
    # Unknown type wins over another problem in the same record (slow path).
    assert reason_of(raw(type="teleport", price="x")).reason == "unknown_type"
    with pytest.raises(RecordError) as info:
        decode_outcome(
            orjson.dumps(
                {
                    "outcome_id": "o",
                    "customer_id": "c",
                    "type": "liked",
                    "ts": "2025-03-01T12:00:00Z",
                }
            )
        )
    assert info.value.reason == "unknown_type"


def test_schema_version() -> None:
    assert reason_of(raw(schema_version=2)).reason == "unsupported_schema_version"
    # A future version with a different shape is still reported as a version problem.
    assert reason_of(orjson.dumps({"schema_version": 3, "id": 1})).reason == (
        "unsupported_schema_version"
    )


@pytest.mark.parametrize("data", [b"", b"{", b"not json", b'{"a":1,}', b"\xff\xfe", b"[1,2"])
def test_malformed_json(data: bytes) -> None:
    assert reason_of(data).reason == "malformed_json"


def test_an_empty_record_and_a_date_utc_cannot_hold_have_reasons_that_say_so() -> None:
    """A tombstone read as "Input data was truncated"; year 1 at +14:00 raised an OverflowError
    in processing (a processing_error with a traceback in the log)."""
    assert "empty record" in reason_of(b"").detail
    for ts in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"):
        error = reason_of(raw(ts=ts))
        assert error.reason == "timestamp_out_of_range" and "outside the dates" in error.detail
        with pytest.raises(RecordError, match="outside the dates"):
            decode_outcome(
                orjson.dumps({"outcome_id": "o", "customer_id": "c", "type": "opened", "ts": ts})
            )


def test_non_object_is_invalid() -> None:
    assert reason_of(b"[1]").reason == "invalid_record"
    assert reason_of(b"null").reason == "invalid_record"


def test_oversized_is_rejected_before_parsing() -> None:
    big = b"{" + b" " * MAX_RECORD_BYTES + b"}"
    assert reason_of(big).reason == "oversized"
    padded = raw(properties={"pad": "x" * (MAX_RECORD_BYTES - 200)})
    assert len(padded) <= MAX_RECORD_BYTES
    assert decode_event(padded).customer_id == "c1"
    assert reason_of(memoryview(big).tobytes()).reason == "oversized"


def test_out_of_range_numbers() -> None:
    assert reason_of(raw(price=-1.0)).reason == "invalid_record"
    assert reason_of(raw(quantity=0)).reason == "invalid_record"
    huge = raw(price=1.0).replace(b'"price":1.0', b'"price":1e400')
    assert reason_of(huge).reason == "invalid_record"


def test_record_error_is_picklable_and_readable() -> None:
    error = RecordError("invalid_record", "Expected `str` - at `$.x`")
    again = pickle.loads(pickle.dumps(error))
    assert (again.reason, again.detail) == (error.reason, error.detail)
    assert str(error) == "invalid_record: Expected `str` - at `$.x`"


def test_check_time() -> None:
    now = TS
    check_time(now - timedelta(days=6), now, timedelta(days=7), timedelta(minutes=5))
    check_time(now + timedelta(minutes=4), now, 7 * 86400.0, 300.0)
    for ts in (now - timedelta(days=8), now + timedelta(minutes=6)):
        with pytest.raises(RecordError) as info:
            check_time(ts, now, timedelta(days=7), timedelta(minutes=5))
        assert info.value.reason == "timestamp_out_of_range"
    with pytest.raises(RecordError) as info:
        check_time(datetime(2025, 3, 1), now, 1.0, 1.0)
    assert info.value.reason == "invalid_record"


def test_outcome_decision_and_reward_round_trip() -> None:
    outcome = Outcome(outcome_id="o1", customer_id="c1", type="clicked", ts=TS, decision_id="d1")
    assert decode_outcome(encode(outcome)) == outcome
    decision = make_decision()
    assert decode_decision(encode(decision)) == decision
    record = RewardRecord(
        decision=decision,
        reward=1.0,
        outcome_ids=["o1"],
        outcome_types=["clicked"],
        expired=False,
        joined_ts=TS + timedelta(hours=1),
    )
    assert decode_reward(encode(record)) == record


def test_an_action_record_leaves_out_only_the_features_unless_asked() -> None:
    decision = make_decision()
    assert decision.features  # the fixture has some, or this test proves nothing
    lean = orjson.loads(encode_action(decision))
    assert set(lean) == set(orjson.loads(encode(decision))) - {"features"}
    assert decode_decision(encode_action(decision)).features == {}
    assert encode_action(decision, features=True) == encode(decision)


def test_decision_timestamps_normalised_and_blank_customer_rejected() -> None:
    paris = timezone(timedelta(hours=1))
    decision = make_decision(decided_ts=datetime(2025, 3, 1, 13, 0, 1, tzinfo=paris))
    back = decode_decision(encode(decision))
    assert back.decided_ts.tzinfo is UTC and back.decided_ts == decision.decided_ts
    evening = datetime(2025, 3, 1, 19, 0, tzinfo=paris)
    back = decode_decision(encode(make_decision(send_at=evening)))
    assert back.send_at is not None and back.send_at.tzinfo is UTC and back.send_at == evening
    with pytest.raises(RecordError) as info:
        decode_decision(encode(make_decision(customer_id=" ")))
    assert info.value.reason == "missing_customer_id"
    blank = orjson.loads(encode(make_decision()))
    blank["customer_id"] = ""
    record = {
        "decision": blank,
        "reward": 0.0,
        "outcome_ids": [],
        "outcome_types": [],
        "expired": True,
        "joined_ts": "2025-03-01T12:00:00Z",
    }
    with pytest.raises(RecordError) as info:
        decode_reward(orjson.dumps(record))
    assert info.value.reason == "missing_customer_id"


def test_encode_writes_utc_with_z() -> None:
    event = Event(event_id="e1", customer_id="c1", type="purchase", ts=TS, order_value=10.0)
    assert b'"ts":"2025-03-01T12:00:00Z"' in encode(event)


ids = st.text(min_size=1, max_size=40).filter(lambda s: s.strip() != "")
utc_times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
money = st.floats(min_value=0.0, max_value=1e9, allow_nan=False)
prop_values = st.one_of(
    st.text(max_size=10),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)
events = st.builds(
    Event,
    event_id=ids,
    customer_id=ids,
    type=st.sampled_from(sorted(EVENT_TYPES)),
    ts=utc_times,
    product_id=st.none() | ids,
    category=st.none() | st.text(min_size=1, max_size=20),
    price=st.none() | money,
    quantity=st.integers(min_value=1, max_value=1000),
    order_value=st.none() | money,
    channel=st.none() | st.sampled_from(["web", "app", "email", "sms", "push"]),
    timezone=st.none() | st.sampled_from(["Europe/Paris", "America/New_York", "UTC"]),
    loyalty_tier=st.none() | st.sampled_from(["bronze", "gold"]),
    properties=st.dictionaries(st.text(max_size=8), prop_values, max_size=4),
)
outcomes = st.builds(
    Outcome,
    outcome_id=ids,
    customer_id=ids,
    type=st.sampled_from(sorted(OUTCOME_TYPES)),
    ts=utc_times,
    decision_id=st.none() | ids,
    campaign=st.none() | st.text(min_size=1, max_size=20),
    value=st.floats(min_value=-1e9, max_value=1e9, allow_nan=False),
)


@given(events)
def test_event_round_trip(event: Event) -> None:
    assert decode_event(encode(event)) == event


@given(outcomes)
def test_outcome_round_trip(outcome: Outcome) -> None:
    assert decode_outcome(encode(outcome)) == outcome


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_escape_as_other_errors(data: bytes) -> None:
    try:
        decode_event(data)
    except RecordError as error:
        assert error.reason in REASONS

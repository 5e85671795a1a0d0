"""Wire records: shapes, defaults, immutability, and that the JSON Schema files are current."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from schemas import jsonschema
from schemas.records import (
    EVENT_TYPES,
    OUTCOME_TYPES,
    RECORD_TYPES,
    Decision,
    Event,
    Outcome,
    RewardRecord,
    Trigger,
)

TS = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def test_event_defaults_and_frozen() -> None:
    event = Event(event_id="e1", customer_id="c1", type="page_view", ts=TS)
    assert event.schema_version == 1
    assert event.quantity == 1
    assert event.properties == {}
    assert event.product_id is None and event.timezone is None
    with pytest.raises(AttributeError):
        event.customer_id = "other"  # type: ignore[misc]


def test_keyword_only() -> None:
    with pytest.raises(TypeError):
        Outcome("o1", "c1", "opened", TS)  # type: ignore[misc]


def test_type_sets_match_the_contract() -> None:
    assert {
        "page_view",
        "product_view",
        "cart_add",
        "cart_remove",
        "checkout_started",
        "purchase",
        "cart_abandoned",
        "session_start",
        "profile_update",
        "erasure_requested",
    } == EVENT_TYPES
    assert {"delivered", "opened", "clicked", "converted", "unsubscribed", "bounced"} == (
        OUTCOME_TYPES
    )


def test_record_fields_match_the_contract() -> None:
    names = {name: set(struct.__struct_fields__) for name, struct in RECORD_TYPES.items()}
    assert names["trigger"] == {
        "trigger_id",
        "customer_id",
        "type",
        "ts",
        "source_event_id",
        "explicit",
    }
    assert {"propensity", "probabilities", "attribution_deadline", "trigger_event_id"} <= set(
        Decision.__struct_fields__
    )
    assert set(RewardRecord.__struct_fields__) == {
        "schema_version",
        "decision",
        "reward",
        "outcome_ids",
        "outcome_types",
        "expired",
        "joined_ts",
        "learned_version",
    }
    assert {"send_at"} <= set(Decision.__struct_fields__)
    assert RECORD_TYPES["trigger"] is Trigger


def test_committed_json_schemas_are_up_to_date() -> None:
    assert jsonschema.stale() == [], "run: python -m schemas.jsonschema"


def test_json_schema_documents_constraints() -> None:
    schema = msgspec.json.decode(
        (jsonschema.SCHEMA_DIR / "event.json").read_bytes(), type=dict[str, object]
    )
    event = schema["$defs"]["Event"]  # type: ignore[index]
    assert sorted(EVENT_TYPES) == event["properties"]["type"]["enum"]
    assert event["properties"]["customer_id"]["minLength"] == 1
    assert "customer_id" in event["required"]


def test_stale_detects_a_changed_file(tmp_path: Path) -> None:
    jsonschema.write(tmp_path)
    assert jsonschema.stale(tmp_path) == []
    (tmp_path / "event.json").write_text("{}")
    assert jsonschema.stale(tmp_path) == ["event.json"]
    (tmp_path / "trigger.json").unlink()
    assert jsonschema.stale(tmp_path) == ["event.json", "trigger.json"]
    assert jsonschema.main(["--check"]) == 0

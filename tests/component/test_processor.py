"""The worker's record processing without a broker: tables as dicts, a manual clock."""

from __future__ import annotations

import base64
import itertools
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import orjson
import pytest

from engine.campaign import builtin_campaign
from engine.clock import ManualClock
from engine.guardrails import GUARDRAIL_ORDER
from engine.state import ALL_CHANNELS, CONVERTED
from schemas.codec import decode_decision, decode_reward, encode
from streams.dead_letters import ORIGINAL_LIMIT_BYTES, original_bytes
from streams.processor import (
    MemoryRows,
    Processor,
    Result,
    carry_headers,
    customer_view,
    decode_pending,
    decode_state_row,
    index_timers,
)
from streams.settings import Settings
from streams.timer_index import KEEP, TimerIndex
from streams.topics import MAX_RECORD_BYTES

START = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


class Rows(MemoryRows):
    """Tables as dictionaries, updated from each Result the way the workers do."""


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def processor(clock: ManualClock) -> Processor:
    settings = Settings(cart_abandon_after_s=1800.0)
    campaigns = [builtin_campaign("cart_abandonment"), builtin_campaign("cross_sell")]
    return Processor(settings, campaigns, clock)


def raw_event(clock: ManualClock, cid: str, kind: str, **fields: Any) -> bytes:
    return orjson.dumps(
        {
            "event_id": fields.pop("event_id", uuid.uuid4().hex),
            "customer_id": cid,
            "type": kind,
            "ts": clock.now().isoformat(),
            **fields,
        }
    )


def raw_outcome(
    clock: ManualClock, outcome_id: str, cid: str, decision_id: str | None, kind: str, **fields: Any
) -> bytes:
    """An outcome record as a sender would publish it, timed now unless `ts` is given."""
    return orjson.dumps(
        {
            "outcome_id": outcome_id,
            "customer_id": cid,
            "decision_id": decision_id,
            "type": kind,
            "ts": fields.pop("ts", clock.now().isoformat()),
            **fields,
        }
    )


_offsets = itertools.count()


def src() -> tuple[str, int, int]:
    """The next position on the events topic, as the agent would pass it."""
    return ("kairos.events.v1", 0, next(_offsets))


SOURCE = ("kairos.events.v1", 0, 0)  # for records whose position does not matter


def decisions_of(result: Result, settings: Settings) -> list[Any]:
    return [
        decode_decision(o.value) for o in result.outputs if o.topic == settings.topics.decisions
    ]


def test_an_explicit_abandonment_yields_one_decision_and_a_replay_only_the_same_bytes(
    processor: Processor, clock: ManualClock
) -> None:
    rows = Rows()
    rows.save(processor.on_event(raw_event(clock, "c1", "cart_add", price=80.0), rows, src()))
    trigger = raw_event(clock, "c1", "cart_abandoned", event_id="abandon-1")
    position = src()
    first = rows.save(processor.on_event(trigger, rows, position))
    decisions = decisions_of(first, processor.settings)
    assert len(decisions) == 1
    assert decisions[0].campaign == "cart_abandonment"
    assert decisions[0].trigger_event_id == "abandon-1"
    # The same record again (an at-least-once redelivery) decides nothing new, but sends the
    # decision again byte for byte: it may have died in the producer's queue with the worker.
    again = rows.save(processor.on_event(trigger, rows, position))
    assert [o.value for o in again.outputs] == [
        o.value for o in first.outputs if o.topic == processor.settings.topics.decisions
    ]
    assert again.state is None and again.pending is None
    # The same event re-sent by its producer (a new offset) is caught by its event id.
    resent = rows.save(processor.on_event(trigger, rows, src()))
    assert decisions_of(resent, processor.settings) == []


def test_a_replay_after_losing_the_state_write_resends_the_decision_and_decides_nothing_new(
    processor: Processor, clock: ManualClock
) -> None:
    rows = Rows()
    trigger = raw_event(clock, "c2", "cart_abandoned", event_id="abandon-2")
    position = src()
    first = processor.on_event(trigger, rows, position)
    # Crash: only the pending-decisions row reached the changelog, not the state row.
    assert first.pending is not None
    rows.pendings["c2"] = first.pending
    replay = processor.on_event(trigger, rows, position)
    assert len(decisions_of(first, processor.settings)) == 1
    sent = [o.value for o in first.outputs if o.topic == processor.settings.topics.decisions]
    assert [o.value for o in replay.outputs if o.topic == processor.settings.topics.decisions] == (
        sent
    )
    assert replay.decisions == []  # nothing newly decided (no second propensity, no new log)


def test_a_message_resent_after_losing_the_state_write_still_counts_for_caps(
    processor: Processor, clock: ManualClock
) -> None:
    # The first of a few customers whose abandonment gets a message (not no-action).
    for n in range(100):
        rows = Rows()
        cid = f"caps-{n}"
        rows.save(processor.on_event(raw_event(clock, cid, "cart_add", price=80.0), rows, src()))
        trigger = raw_event(clock, cid, "cart_abandoned", event_id=f"caps-abandon-{n}")
        position = src()
        before = rows.states[cid]
        first = processor.on_event(trigger, rows, position)
        if decisions_of(first, processor.settings)[0].action_id != "no_action":
            break
    else:
        pytest.fail("no abandonment got a message")
    # Crash between the two writes: the pending row (written first) holds the decision, the
    # state row is still the one before the trigger.
    assert first.pending is not None and rows.states[cid] == before
    rows.pendings[cid] = first.pending
    replay = processor.on_event(trigger, rows, position)
    assert replay.decisions == []
    # The resent message counts for caps and cooldowns: the state written is the lost one.
    assert replay.state == first.state


def test_a_conversion_with_the_decision_id_is_rewarded_once_and_the_model_learns(
    processor: Processor, clock: ManualClock
) -> None:
    rows = Rows()
    result = rows.save(processor.on_event(raw_event(clock, "c3", "cart_abandoned"), rows, src()))
    decision = decisions_of(result, processor.settings)[0]
    version_before = processor.runtimes["cart_abandonment"].bandit.version
    outcome = raw_outcome(
        clock,
        "o-1",
        "c3",
        decision.decision_id,
        "converted",
        ts=(clock.now() + timedelta(minutes=5)).isoformat(),
        value=1.0,
    )
    clock.advance(300)
    joined = rows.save(processor.on_outcome(outcome, rows, ("kairos.outcomes.v1", 0, 0)))
    rewards = [decode_reward(o.value) for o in joined.outputs]
    assert len(rewards) == 1
    assert rewards[0].decision.decision_id == decision.decision_id
    assert rewards[0].reward == pytest.approx(1.0)
    assert not rewards[0].expired
    # Learned either way: a holdout's reward teaches this uplift campaign's no-action baseline.
    assert processor.runtimes["cart_abandonment"].bandit.version == version_before + 1
    assert rewards[0].learned_version == version_before + 1  # a learner taking over skips it
    # The same outcome again is a duplicate; a later one for the closed decision is late.
    assert rows.save(processor.on_outcome(outcome, rows, ("o", 0, 1))).outputs == []
    late = raw_outcome(clock, "o-2", "c3", decision.decision_id, "clicked")
    assert rows.save(processor.on_outcome(late, rows, ("o", 0, 2))).outputs == []


def test_an_outcome_replayed_after_losing_only_the_pending_write_is_counted_once(
    processor: Processor, clock: ManualClock
) -> None:
    # The Faust runtime writes an outcome's state row, then its pending row; a crash between
    # the two leaves the outcome counted in the state and absent from the pending row, and the
    # outcome is replayed. It must join its decision then, and not be counted twice.
    rows = Rows()
    result = rows.save(processor.on_event(raw_event(clock, "c5", "cart_abandoned"), rows, src()))
    decision = decisions_of(result, processor.settings)[0]
    outcome = raw_outcome(clock, "o-9", "c5", decision.decision_id, "converted", value=1.0)
    pending_before = rows.pendings["c5"]
    first = processor.on_outcome(outcome, rows, ("kairos.outcomes.v1", 0, 0))
    assert first.state is not None and first.pending is not None
    rows.states["c5"] = first.state  # the state write reached the table; the pending one did not
    assert rows.pendings["c5"] == pending_before
    replayed = rows.save(processor.on_outcome(outcome, rows, ("kairos.outcomes.v1", 0, 0)))
    rewards = [decode_reward(o.value) for o in replayed.outputs]
    assert [r.decision.decision_id for r in rewards] == [decision.decision_id]
    state, _ = decode_state_row(rows.states["c5"])
    assert state is not None
    assert state.engagement[ALL_CHANNELS][CONVERTED] == 1


def test_the_action_topic_gets_a_lean_decision_and_the_reward_carries_the_features(
    clock: ManualClock,
) -> None:
    campaigns = [builtin_campaign("cart_abandonment")]
    lean = Processor(Settings(), campaigns, clock)
    rows = Rows()
    result = rows.save(lean.on_event(raw_event(clock, "c9", "cart_abandoned"), rows, src()))
    (made,) = result.decisions
    assert len(made.features) > 10
    (sent,) = [o.value for o in result.outputs if o.topic == lean.settings.topics.decisions]
    assert b'"features"' not in sent
    assert len(sent) < len(encode(made)) * 0.6
    # Everything but the features arrives, and the pending row keeps them for the reward.
    assert decode_decision(sent) == msgspec.structs.replace(made, features={})
    assert b"features" in rows.pendings["c9"]
    clock.advance((made.attribution_deadline - made.decided_ts).total_seconds() + 1)
    (reward,) = [decode_reward(o.value) for o in rows.save(lean.on_tick("c9", rows)).outputs]
    assert reward.decision == made
    # Asked for, the action topic gets the whole decision, the same bytes the reward nests.
    full = Processor(Settings(action_features=True), campaigns, clock)
    again = full.on_event(raw_event(clock, "c9", "cart_abandoned"), Rows(), src())
    (sent_full,) = [o.value for o in again.outputs if o.topic == full.settings.topics.decisions]
    assert sent_full == encode(again.decisions[0])


def test_cart_silence_becomes_an_abandonment_after_the_timeout(
    processor: Processor, clock: ManualClock
) -> None:
    rows = Rows()
    added = rows.save(
        processor.on_event(raw_event(clock, "c4", "cart_add", price=60.0), rows, src())
    )
    assert decisions_of(added, processor.settings) == []
    assert added.next_due == pytest.approx(START.timestamp() + 1800.0)
    clock.advance(1799)
    assert decisions_of(rows.save(processor.on_tick("c4", rows)), processor.settings) == []
    clock.advance(2)
    fired = rows.save(processor.on_tick("c4", rows))
    decisions = decisions_of(fired, processor.settings)
    assert [d.trigger_type for d in decisions] == ["cart_abandoned"]
    # The timer fired once: a later tick decides nothing more.
    clock.advance(60)
    assert decisions_of(rows.save(processor.on_tick("c4", rows)), processor.settings) == []


def test_an_unanswered_decision_gets_the_default_reward_when_its_window_closes(
    processor: Processor, clock: ManualClock
) -> None:
    rows = Rows()
    result = rows.save(processor.on_event(raw_event(clock, "c5", "cart_abandoned"), rows, src()))
    decision = decisions_of(result, processor.settings)[0]
    window = (decision.attribution_deadline - decision.decided_ts).total_seconds()
    clock.advance(window + 1)
    closed = rows.save(processor.on_tick("c5", rows))
    rewards = [decode_reward(o.value) for o in closed.outputs]
    assert len(rewards) == 1
    assert rewards[0].expired
    assert rewards[0].reward == builtin_campaign("cart_abandonment").reward.default


def test_bad_records_are_dead_lettered_with_reason_and_original_bytes(
    processor: Processor,
) -> None:
    rows = Rows()
    bad = b'{"type": "purchase", "customer_id": 5'
    result = processor.on_event(bad, rows, ("kairos.events.v1", 1, 42), key=b"cust-\xff")
    assert [o.topic for o in result.outputs] == [processor.settings.topics.dlq]
    letter = orjson.loads(result.outputs[0].value)
    assert letter["reason"] == "malformed_json"
    assert base64.b64decode(letter["key"]) == b"cust-\xff"  # whose it was, when the id is not
    assert letter["dead_lettered_at"].endswith("Z")
    assert (letter["topic"], letter["partition"], letter["offset"]) == ("kairos.events.v1", 1, 42)
    assert original_bytes(result.outputs[0].value) == bad


def test_an_outcome_for_an_unknown_decision_is_dead_lettered(
    processor: Processor, clock: ManualClock
) -> None:
    rows = Rows()
    outcome = raw_outcome(clock, "o-9", "c9", "no-such-decision", "clicked")
    result = processor.on_outcome(outcome, rows, ("kairos.outcomes.v1", 0, 7))
    assert orjson.loads(result.outputs[0].value)["reason"] == "unknown_decision"


def test_an_event_keyed_by_another_id_is_sent_back_under_its_customer_id(
    processor: Processor, clock: ManualClock
) -> None:
    rows = Rows()
    raw = raw_event(clock, "c7", "cart_abandoned")
    result = processor.on_event(raw, rows, src(), key=b"session-42")
    assert result.customer_id is None and rows.states == {}
    assert [(o.topic, o.key, o.value) for o in result.outputs] == [(SOURCE[0], b"c7", raw)]
    # Under the right key it is processed.
    assert decisions_of(processor.on_event(raw, rows, src(), key=b"c7"), processor.settings)


def test_a_failure_inside_processing_is_dead_lettered_with_its_cause(
    processor: Processor,
) -> None:
    result = processor.processing_error(b"{}", ("t", 0, 5), RuntimeError("boom"))
    letter = orjson.loads(result.outputs[0].value)
    assert letter["reason"] == "processing_error"
    assert "boom" in letter["detail"]


def test_every_event_redelivered_after_a_crash_is_recognised_not_only_the_last_few(
    processor: Processor, clock: ManualClock
) -> None:
    rows = Rows()
    positions = [src() for _ in range(40)]
    events = [
        raw_event(clock, "c8", "purchase", order_value=10.0, product_id=f"p{i}") for i in range(40)
    ]
    for raw, position in zip(events, positions, strict=True):
        rows.save(processor.on_event(raw, rows, position))
    before = rows.states["c8"]
    # The offsets were never committed: all 40 come again, far more than the id ring holds.
    for raw, position in zip(events, positions, strict=True):
        assert rows.save(processor.on_event(raw, rows, position)).state is None
    assert rows.states["c8"] == before


@pytest.mark.parametrize("mode", ["plain", "hashed", "omitted"])
def test_decision_logs_show_customer_ids_only_as_the_setting_allows(
    clock: ManualClock, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    settings = Settings(log_customer_ids=mode)  # type: ignore[arg-type]
    processor = Processor(settings, [builtin_campaign("cart_abandonment")], clock)
    rows = Rows()
    with caplog.at_level(logging.DEBUG, logger="kairos.processor"):
        processor.on_event(raw_event(clock, "secret-customer-42", "cart_abandoned"), rows, src())
    records = [r for r in caplog.records if r.getMessage() == "decided"]
    assert len(records) == 1
    logged = records[0].__dict__["customer"]
    text = " ".join(str(v) for v in records[0].__dict__.values())
    if mode == "plain":
        assert logged == "secret-customer-42"
    else:
        assert "secret-customer-42" not in text
        assert (logged is None) == (mode == "omitted")


def test_an_idle_customer_is_removed_after_the_ttl_but_not_while_a_decision_is_open(
    clock: ManualClock,
) -> None:
    ttl_s = 3600.0  # shorter than the cart campaign's 2 h window, to have a window outlive it
    settings = Settings(state_ttl_days=ttl_s / 86_400, lapse_after_days=0.01)
    processor = Processor(settings, [builtin_campaign("cart_abandonment")], clock)
    rows = Rows()
    rows.save(processor.on_event(raw_event(clock, "idle", "page_view"), rows, src()))
    busy = rows.save(processor.on_event(raw_event(clock, "busy", "cart_abandoned"), rows, src()))
    (decision,) = decisions_of(busy, settings)
    assert set(rows.states) == {"idle", "busy"}
    clock.advance(ttl_s - 1)
    assert not rows.save(processor.on_tick("idle", rows)).expired
    assert "idle" in rows.states
    clock.advance(1)
    gone = rows.save(processor.on_tick("idle", rows))
    assert gone.expired and "idle" not in rows.states and "idle" not in rows.pendings
    assert processor.metrics.expired_customers._value.get() == 1
    # A tick for a customer with no rows writes nothing and counts nothing.
    ghost = rows.save(processor.on_tick("idle", rows))
    assert not ghost.expired and ghost.state is None and ghost.pending is None
    assert "idle" not in rows.pendings
    # Past the TTL, but the decision's window is open: the customer is kept.
    kept = rows.save(processor.on_tick("busy", rows))
    assert not kept.expired and "busy" in rows.states
    # When the window closes, its default reward goes out and the same tick removes the rows.
    clock.set(decision.attribution_deadline + timedelta(seconds=1))
    last = rows.save(processor.on_tick("busy", rows))
    assert last.expired and "busy" not in rows.states and "busy" not in rows.pendings
    assert [decode_reward(o.value).decision.decision_id for o in last.outputs] == [
        decision.decision_id
    ]
    assert processor.metrics.expired_customers._value.get() == 2


def test_rows_that_did_not_change_are_not_written_again(
    processor: Processor, clock: ManualClock
) -> None:
    rows = Rows()
    viewed = rows.save(processor.on_event(raw_event(clock, "quiet", "page_view"), rows, src()))
    # Every table write is a changelog record: no decision, so no pending row at all.
    assert viewed.state is not None and viewed.pending is None
    assert "quiet" not in rows.pendings
    # A tick with nothing due changes neither row.
    idle_tick = rows.save(processor.on_tick("quiet", rows))
    assert idle_tick.state is None and idle_tick.pending is None
    # A decision does write the pending row, and the next plain event leaves it as it is.
    decided = rows.save(
        processor.on_event(raw_event(clock, "quiet", "cart_abandoned"), rows, src())
    )
    assert decided.pending is not None
    after = rows.save(processor.on_event(raw_event(clock, "quiet", "page_view"), rows, src()))
    assert after.state is not None and after.pending is None


def test_no_log_line_at_info_or_above_carries_a_records_payload(
    processor: Processor, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Payloads hold personal data; bad ones are logged by position and reason only."""
    marker = "jane.doe@example.com"
    rows = Rows()
    bad_events = [
        b'{"type": "purchase", "customer_id": "' + marker.encode() + b'"',  # malformed JSON
        orjson.dumps({"event_id": 1, "customer_id": marker, "type": "purchase", "ts": 7}),
        orjson.dumps({"event_id": "e", "customer_id": "c", "type": marker, "ts": "x"}),
        raw_event(clock, "c-ok", "purchase", email=marker * 40_000),  # oversized
        raw_event(clock, "c-key", "cart_add", email=marker),  # keyed wrongly: re-routed
    ]
    bad_outcome = orjson.dumps(
        {"outcome_id": marker, "customer_id": "c", "decision_id": marker, "type": "clicked"}
    )
    with caplog.at_level(logging.INFO):
        for raw in bad_events:
            processor.on_event(raw, rows, src(), key=b"someone-else")
        processor.on_outcome(bad_outcome, rows, ("kairos.outcomes.v1", 0, 1))
        processor.processing_error(marker.encode(), ("t", 0, 5), RuntimeError("boom"))
    logged = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert len(logged) >= len(bad_events) + 1  # each bad record was logged ...
    for record in logged:  # ... without its payload, in the message or any extra field
        text = record.getMessage() + " ".join(str(v) for v in record.__dict__.values())
        assert marker not in text, record.getMessage()


def test_a_holdout_reward_teaches_an_uplift_baseline_and_nothing_to_a_reward_campaign(
    processor: Processor, clock: ManualClock
) -> None:
    """The worker learns what the engine (and so the simulator) learns from holdout records."""
    from engine.guardrails import in_holdout

    for campaign, trigger_kind, learns in (
        ("cart_abandonment", "cart_abandoned", True),  # objective uplift
        ("cross_sell", "purchase", False),  # objective reward
    ):
        runtime = processor.runtimes[campaign]
        cid = next(
            f"h-{campaign}-{i}"
            for i in range(10_000)
            if in_holdout(f"h-{campaign}-{i}", runtime.campaign)
        )
        rows = Rows()
        fields = {"order_value": 20.0} if trigger_kind == "purchase" else {}
        result = rows.save(
            processor.on_event(raw_event(clock, cid, trigger_kind, **fields), rows, src())
        )
        decision = next(
            d for d in decisions_of(result, processor.settings) if d.campaign == campaign
        )
        assert decision.holdout
        before = runtime.bandit.version
        outcome = raw_outcome(clock, f"o-{cid}", cid, decision.decision_id, "converted", value=1.0)
        rows.save(processor.on_outcome(outcome, rows, ("kairos.outcomes.v1", 0, 0)))
        assert runtime.bandit.version == before + (1 if learns else 0), campaign


class CountingRows(Rows):
    """Rows that count how often the pending row is read."""

    def __init__(self) -> None:
        super().__init__()
        self.pending_reads = 0

    def pending(self, customer_id: str) -> bytes | None:
        self.pending_reads += 1
        return super().pending(customer_id)


def test_due_times_survive_records_that_change_nothing_and_events_without_a_trigger(
    processor: Processor, clock: ManualClock
) -> None:
    rows = CountingRows()
    index = TimerIndex()

    def run(result: Result) -> Result:
        """Apply a result the way both runtimes do: rows, then the customer's due times."""
        rows.save(result)
        assert result.customer_id is not None
        index.schedule(result.customer_id, result.next_due, result.next_deadline)
        return result

    run(processor.on_event(raw_event(clock, "c9", "cart_add", price=60.0), rows, src()))
    cart_timer = START.timestamp() + 1800.0
    decided = run(
        processor.on_event(raw_event(clock, "c9", "cart_abandoned", event_id="e-9"), rows, src())
    )
    (decision,) = decisions_of(decided, processor.settings)
    deadline = decision.attribution_deadline.timestamp()
    assert index.timer_at.get("c9") is None  # the explicit abandonment cleared the cart timer
    assert index.deadline_at["c9"] == pytest.approx(deadline)
    # An event without a trigger does not read the pending row, and keeps its deadline.
    reads = rows.pending_reads
    viewed = run(processor.on_event(raw_event(clock, "c9", "cart_add", price=10.0), rows, src()))
    assert rows.pending_reads == reads
    assert viewed.next_due == pytest.approx(cart_timer) and viewed.next_deadline is KEEP
    assert index.due("c9") == pytest.approx(min(cart_timer, deadline))
    before = (index.timer_at.get("c9"), index.deadline_at.get("c9"))
    # A producer's resend of an event (caught by its id) and an outcome nobody can attribute
    # change nothing: the customer's due times must stay, not be cancelled.
    run(processor.on_event(raw_event(clock, "c9", "cart_abandoned", event_id="e-9"), rows, src()))
    stray = raw_outcome(clock, "o-stray", "c9", None, "opened")
    run(processor.on_outcome(stray, CountingRows(), ("o", 0, 1)))
    assert (index.timer_at.get("c9"), index.deadline_at.get("c9")) == before


def test_a_record_without_a_key_on_another_partition_than_its_customers_is_resent_keyed(
    processor: Processor, clock: ManualClock
) -> None:
    """A keyless producer (round robin, sticky) can put a customer's record anywhere: applied
    there it would start a second state row that the customer's timers never reach."""
    from streams.partitioning import partition_of

    partitions = 4
    cid = "keyless-7"
    home = partition_of(cid.encode(), partitions)
    away = (home + 1) % partitions
    rows = Rows()
    for kind, raw in (
        ("events", raw_event(clock, cid, "cart_add")),
        ("outcomes", raw_outcome(clock, "o-1", cid, None, "opened")),
    ):
        handle = processor.on_event if kind == "events" else processor.on_outcome
        moved = handle(raw, rows, (f"kairos.{kind}.v1", away, 3), None, partitions)
        assert moved.state is None and moved.pending is None and moved.decisions == []
        assert [(o.topic, o.key, o.value) for o in moved.outputs] == [
            (f"kairos.{kind}.v1", cid.encode(), raw)
        ]
    # On its customer's partition, or with the partition count unknown, it is applied.
    for where, known in ((home, partitions), (away, None)):
        kept = processor.on_event(
            raw_event(clock, cid, "cart_add"), rows, ("kairos.events.v1", where, 4), None, known
        )
        assert kept.state is not None and kept.outputs == []


def _unsubscribed(rows: Rows, customer: str) -> list[str]:
    state, _ = decode_state_row(rows.states.get(customer))
    assert state is not None
    return state.unsubscribed


def test_an_unsubscribe_is_kept_though_no_open_decision_claims_it(
    processor: Processor, clock: ManualClock
) -> None:
    """Late, for an unknown decision, or from a customer never seen: the unsubscribe was dropped
    (or dead-lettered), and the customer could be messaged on the next trigger."""
    rows = Rows()
    result = rows.save(processor.on_event(raw_event(clock, "u1", "cart_abandoned"), rows, src()))
    decision = decisions_of(result, processor.settings)[0]
    clock.advance((decision.attribution_deadline - decision.decided_ts).total_seconds() + 1)
    rows.save(processor.on_tick("u1", rows))  # the window closes: the decision is rewarded
    late = raw_outcome(clock, "u-1", "u1", decision.decision_id, "unsubscribed")
    assert rows.save(processor.on_outcome(late, rows, ("o", 0, 1))).outputs == []
    assert _unsubscribed(rows, "u1") == ["all"]  # no channel known: every channel
    again = raw_event(clock, "u1", "cart_abandoned")
    after = decisions_of(rows.save(processor.on_event(again, rows, src())), processor.settings)
    assert [list(d.probabilities) for d in after] == [["no_action"]]  # every message removed

    unknown = raw_outcome(clock, "u-2", "u2", "no-such-decision", "unsubscribed", channel="sms")
    kept = rows.save(processor.on_outcome(unknown, rows, ("o", 0, 2)))
    assert kept.outputs == []  # not dead-lettered: nothing is wrong with a customer's wish
    assert _unsubscribed(rows, "u2") == ["sms"]  # a state row for a customer never seen

    clicked = raw_outcome(clock, "u-3", "u3", "no-such-decision", "clicked")
    refused = processor.on_outcome(clicked, rows, ("o", 0, 3))
    letter = orjson.loads(refused.outputs[0].value)
    assert letter["reason"] == "unknown_decision" and "'u3'" in letter["detail"]


def test_a_dead_letter_fits_the_dead_letter_topic_whatever_the_refused_record_size(
    processor: Processor,
) -> None:
    """A refused record travels whole up to ORIGINAL_LIMIT_BYTES, and is cut beyond: a letter the
    broker refuses stopped the worker at every start (it loses nothing silently)."""
    near_broker_limit = b"x" * 1_000_000
    letter = processor.on_event(near_broker_limit, Rows(), SOURCE).outputs[0].value
    assert original_bytes(letter) == near_broker_limit
    assert "original_truncated" not in orjson.loads(letter)
    huge = b"y" * (ORIGINAL_LIMIT_BYTES + 10)
    letter = processor.on_event(huge, Rows(), SOURCE).outputs[0].value
    fields = orjson.loads(letter)
    assert fields["reason"] == "oversized"
    assert fields["original_truncated"] is True and fields["original_size"] == len(huge)
    assert original_bytes(letter) == huge[:ORIGINAL_LIMIT_BYTES]
    assert len(letter) < MAX_RECORD_BYTES


def test_history_replayed_from_weeks_ago_updates_state_but_messages_no_one(
    processor: Processor, clock: ManualClock
) -> None:
    """Events of 20 days ago (inside the 30-day event age) made decisions now: a cart left weeks
    ago got a reminder, a first purchase of last month a cross-sell (QA, backfilling history)."""
    rows = Rows()
    then = (clock.now() - timedelta(days=20)).isoformat()
    for kind, fields in (
        ("cart_add", {"price": 40.0, "product_id": "p1"}),
        ("cart_abandoned", {}),
        ("purchase", {"order_value": 40.0}),
        ("cart_add", {"price": 40.0, "product_id": "p2"}),  # arms a timer due 20 days ago
    ):
        result = rows.save(
            processor.on_event(raw_event(clock, "h1", kind, ts=then, **fields), rows, src())
        )
        assert decisions_of(result, processor.settings) == []
    assert decisions_of(rows.save(processor.on_tick("h1", rows)), processor.settings) == []
    state, _ = decode_state_row(rows.states["h1"])
    assert state is not None and state.purchase_count == 1 and "p2" in state.cart
    stale = processor.metrics.stale_triggers
    assert stale.labels(type="cart_abandoned")._value.get() == 2  # the explicit one and the timer
    assert stale.labels(type="first_purchase")._value.get() == 1
    # Within the limit (KAIROS_MAX_TRIGGER_AGE_S, a day by default) a trigger is decided on.
    recent = (clock.now() - timedelta(hours=23)).isoformat()
    late = processor.on_event(raw_event(clock, "h2", "cart_abandoned", ts=recent), rows, src())
    assert len(decisions_of(late, processor.settings)) == 1


def test_an_outcome_from_a_clock_far_off_is_dead_lettered_like_an_event(
    processor: Processor, clock: ManualClock
) -> None:
    """Outcome times were never checked: one stamped 10 days ahead joined its decision (QA)."""
    rows = Rows()
    result = rows.save(processor.on_event(raw_event(clock, "f1", "cart_abandoned"), rows, src()))
    decision = decisions_of(result, processor.settings)[0]
    ahead = (clock.now() + timedelta(days=10)).isoformat()
    skewed = raw_outcome(clock, "f-1", "f1", decision.decision_id, "clicked", ts=ahead)
    letter = orjson.loads(processor.on_outcome(skewed, rows, ("o", 0, 1)).outputs[0].value)
    assert letter["reason"] == "timestamp_out_of_range"
    assert letter["dead_lettered_at"].endswith("Z")
    on_time = raw_outcome(clock, "f-2", "f1", decision.decision_id, "clicked")
    assert rows.save(processor.on_outcome(on_time, rows, ("o", 0, 2))).outputs == []
    assert decode_pending(rows.pendings["f1"]).open[0].outcome_ids == ["f-2"]


def test_a_worker_that_leaves_learning_to_a_learner_marks_no_reward_as_learned(
    clock: ManualClock,
) -> None:
    remote = Processor(Settings(learning="remote"), [builtin_campaign("cart_abandonment")], clock)
    rows = Rows()
    result = rows.save(remote.on_event(raw_event(clock, "r1", "cart_abandoned"), rows, src()))
    decision = decisions_of(result, remote.settings)[0]
    converted = raw_outcome(clock, "r-1", "r1", decision.decision_id, "converted", value=1.0)
    joined = rows.save(remote.on_outcome(converted, rows, ("o", 0, 1)))
    (reward,) = [decode_reward(o.value) for o in joined.outputs]
    assert (
        reward.learned_version is None and remote.runtimes["cart_abandonment"].bandit.version == 0
    )


def test_a_rerouted_record_keeps_its_headers_and_says_where_it_was(processor: Processor) -> None:
    result = processor.reroute(b"{}", ("kairos.events.v1", 2, 41), b"c1")
    assert result.rerouted and result.customer_id is None
    # confluent-kafka hands headers over as a list (values bytes, str or None); Faust as a
    # mapping: either way they come first, in order, a missing value kept empty.
    carry_headers(result, [("traceparent", b"00-ab"), ("tenant", "eu"), ("flag", None)])
    assert result.outputs[0].headers == [
        ("traceparent", b"00-ab"),
        ("tenant", b"eu"),
        ("flag", b""),
        ("kairos-rerouted-from", b"kairos.events.v1:2:41"),
    ]
    again = processor.reroute(b"{}", ("kairos.outcomes.v1", 0, 7), b"c1")
    carry_headers(again, {"traceparent": b"00-cd"})
    assert again.outputs[0].headers[0] == ("traceparent", b"00-cd")
    # Records that are not rerouted are left alone.
    other = Result("c1")
    carry_headers(other, [("traceparent", b"00-ef")])
    assert other.outputs == []


def test_decision_reasons_and_guardrail_hits_are_counted_per_campaign(
    processor: Processor, clock: ManualClock
) -> None:
    rows = Rows()
    metrics = processor.metrics
    registry = metrics.registry

    def hits(guardrail: str) -> float:
        labels = {"campaign": "cart_abandonment", "guardrail": guardrail}
        return registry.get_sample_value("kairos_guardrail_hits_total", labels) or 0.0

    # Noon: no guardrail applies to a first message.
    # Fixed event ids: the policy's draw follows from the trigger id (random ids made the test
    # depend on which action the first draw took).
    first_event = raw_event(clock, "g1", "cart_abandoned", event_id="g1-first")
    decided = rows.save(processor.on_event(first_event, rows, src()))
    (first,) = decided.decisions
    assert all(hits(name) == 0 for name in GUARDRAIL_ORDER)
    # 23:00 UTC (the campaign's quiet hours are 21-8 in the customer's zone, UTC by default):
    # every "now" action is off the table, and the message of noon caps its channel.
    clock.advance(11 * 3600)
    second_event = raw_event(clock, "g1", "cart_abandoned", event_id="g1-second")
    later = rows.save(processor.on_event(second_event, rows, src()))
    (second,) = later.decisions
    assert hits("quiet_hours") == 1
    if first.action.get("channel") != "none":
        assert hits("channel_cap") == 1
    reasons = {
        reason: registry.get_sample_value(
            "kairos_decision_reasons_total", {"campaign": "cart_abandonment", "reason": reason}
        )
        for reason in {first.reason, second.reason}
    }
    assert sum(v or 0 for v in reasons.values()) == 2


UNREADABLE = b"\x01garbage, not a row"


def _unreadable_rows(processor: Processor, clock: ManualClock) -> Rows:
    """c-state has an unreadable customers row, c-pending an unreadable pending row, c-ok both
    readable with a cart-abandonment timer armed."""
    rows = Rows()
    rows.states["c-state"] = UNREADABLE
    rows.pendings["c-pending"] = UNREADABLE
    rows.save(processor.on_event(raw_event(clock, "c-ok", "cart_add", price=20.0), rows, src()))
    return rows


@pytest.mark.parametrize("customer", ["c-state", "c-pending"])
def test_a_record_for_an_unreadable_row_is_dead_lettered_and_the_row_kept(
    processor: Processor, clock: ManualClock, customer: str
) -> None:
    rows = _unreadable_rows(processor, clock)
    raw = raw_event(clock, customer, "cart_abandoned")
    try:
        result = processor.on_event(raw, rows, src())
    except Exception as exc:  # as both workers do with what processing raises
        result = processor.processing_error(raw, SOURCE, exc)
    assert result.state is None and result.pending is None  # the rows stay as they are
    [letter] = [orjson.loads(o.value) for o in result.outputs]
    assert letter["reason"] == "unreadable_row"
    assert "unreadable" in letter["detail"]
    assert original_bytes(orjson.dumps(letter)) == raw


def test_the_timer_index_skips_unreadable_rows_and_counts_them(
    processor: Processor, clock: ManualClock
) -> None:
    rows = _unreadable_rows(processor, clock)
    timers = TimerIndex()
    counted = processor.metrics.unreadable_rows
    customers = index_timers(
        timers,
        [(k.encode(), v) for k, v in rows.states.items()],
        [(k.encode(), v) for k, v in rows.pendings.items()],
        processor.metrics,
        "plain",
    )
    assert customers == 2
    assert timers.customers == 1  # c-ok's abandonment timer
    assert timers.pop_due((clock.now() + timedelta(hours=1)).timestamp()) == ["c-ok"]
    assert counted.labels(table="customers")._value.get() == 1
    assert counted.labels(table="pending")._value.get() == 1


def test_the_retention_sweep_passes_over_an_unreadable_row(
    processor: Processor, clock: ManualClock
) -> None:
    rows = _unreadable_rows(processor, clock)
    later = clock.now() + timedelta(days=processor.settings.state_ttl_days + 1)
    found = [
        cid
        for cid, row in rows.states.items()
        if processor.expires(cid.encode(), row, lambda c=cid: rows.pending(c), later)
    ]
    assert found == ["c-ok"]
    assert processor.metrics.unreadable_rows.labels(table="customers")._value.get() == 1


def test_the_customer_lookup_names_an_unreadable_row() -> None:
    view = customer_view(UNREADABLE, None)
    assert view is not None and set(view) == {"error"}
    assert str(view["error"]).startswith("unreadable customers row: cannot decode")
    view = customer_view(None, UNREADABLE)
    assert view is None  # no customers row: unknown, whatever the pending table holds


def _erasure(clock: ManualClock, cid: str, ts: datetime | None = None) -> bytes:
    return raw_event(clock, cid, "erasure_requested", ts=(ts or clock.now()).isoformat())


def test_an_erasure_request_removes_the_customers_rows_and_open_decisions(
    processor: Processor, clock: ManualClock
) -> None:
    rows = Rows()
    rows.save(processor.on_event(raw_event(clock, "c-gone", "cart_add", price=20.0), rows, src()))
    decided = rows.save(
        processor.on_event(raw_event(clock, "c-gone", "cart_abandoned"), rows, src())
    )
    [decision] = decisions_of(decided, processor.settings)
    assert rows.pendings["c-gone"]
    rows.save(processor.on_event(raw_event(clock, "c-kept", "cart_add", price=5.0), rows, src()))
    # Sent long after the event-age window (30 days): an erasure is honoured however late.
    late = clock.now() - timedelta(days=90)
    erased = rows.save(processor.on_event(_erasure(clock, "c-gone", late), rows, src()))
    assert erased.expired and erased.outputs == []
    assert "c-gone" not in rows.states and "c-gone" not in rows.pendings
    assert "c-kept" in rows.states
    assert processor.metrics.erased_customers._value.get() == 1
    # The dropped decision's outcome finds nothing to join: no reward keeps the features.
    clock.advance(60)
    outcome = raw_outcome(clock, "o-1", "c-gone", decision.decision_id, "converted")
    joined = rows.save(processor.on_outcome(outcome, rows, src()))
    assert not [o for o in joined.outputs if o.topic == processor.settings.topics.rewards]


def test_an_erasure_request_removes_an_unreadable_row_and_one_for_nobody_changes_nothing(
    processor: Processor, clock: ManualClock
) -> None:
    rows = _unreadable_rows(processor, clock)
    for customer in ("c-state", "c-pending"):
        assert rows.save(processor.on_event(_erasure(clock, customer), rows, src())).expired
    assert set(rows.states) == {"c-ok"} and set(rows.pendings) <= {"c-ok"}
    nobody = processor.on_event(_erasure(clock, "c-never-seen"), rows, src())
    assert not nobody.expired and nobody.state is None and nobody.outputs == []
    # The customer's next event starts afresh.
    again = rows.save(
        processor.on_event(raw_event(clock, "c-state", "cart_abandoned"), rows, src())
    )
    assert decisions_of(again, processor.settings)

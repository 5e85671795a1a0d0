"""Reliability on the real broker: bad input is dead-lettered while good input flows, crashes lose
nothing, and exactly-once processing emits each decision once."""

from __future__ import annotations

import contextlib
import random
import threading
import time
import urllib.error
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from engine.state import CONVERTED, apply
from engine.triggers import TriggerConfig, detect
from schemas.codec import decode_event
from schemas.records import Event, Trigger
from streams.campaign_files import resolve_campaigns
from streams.dead_letters import original_bytes
from streams.partitioning import partition_of
from streams.processor import state_view
from streams.settings import Settings
from streams.topics import changelog_topic, producer_config
from streams.worker_process import WorkerProcess
from tests.integration.kafka_io import TopicReader, event, produce
from tests.integration.metrics_scrape import scrape, total
from tests.integration.test_topology import customer_view

FAILING_DISK_WORKER = "tests.integration.failing_disk_worker"

# --------------------------------------------------------------------------- bad input, fuzzed

NOW = datetime.now(UTC)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False),
    st.text(max_size=8),
)


# Values each field must refuse (JSON types it does not take, or out of its range).
INT64 = st.integers(-(2**63), 2**63 - 1)
INVALID_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "customer_id": st.one_of(INT64, st.booleans(), st.lists(INT64, max_size=2)),
    "event_id": st.one_of(INT64, st.booleans(), st.just("")),
    "ts": st.one_of(INT64, st.booleans(), st.text(max_size=6).map(lambda s: s + "T-not-a-time")),
    "price": st.one_of(
        st.text(min_size=1, max_size=5),
        st.booleans(),
        st.floats(max_value=-0.01, allow_nan=False, allow_infinity=False),
    ),
    "quantity": st.one_of(
        st.integers(-(2**63), 0), st.text(min_size=1, max_size=5), st.floats(0.1, 0.9)
    ),
}


def _good(customer: str) -> dict[str, Any]:
    return event(customer, "cart_abandoned")


@st.composite
def bad_record(draw: st.DrawFn, tag: str) -> bytes:
    """One record the worker must refuse; `tag` makes its bytes unique to this example."""
    marker = f"{tag}-{draw(st.integers(0, 10**9))}"
    base = event(f"fuzz-{marker}", "purchase", order_value=10.0)
    kind = draw(
        st.sampled_from(
            [
                "malformed",
                "wrong_type",
                "missing_customer",
                "empty_customer",
                "unknown_type",
                "schema_version",
                "oversized",
                "future",
                "past",
                "not_an_object",
            ]
        )
    )
    if kind == "malformed":
        junk = draw(st.binary(max_size=40))
        return b'{"event_id": "' + marker.encode() + b'", ' + junk.replace(b"}", b"")
    if kind == "wrong_type":
        field = draw(st.sampled_from(sorted(INVALID_VALUES)))
        base[field] = draw(INVALID_VALUES[field])
    elif kind == "missing_customer":
        del base["customer_id"]
    elif kind == "empty_customer":
        base["customer_id"] = draw(st.sampled_from(["", " ", "\t"]))
    elif kind == "unknown_type":
        base["type"] = "x_" + draw(st.text(alphabet="abcdefgh", min_size=1, max_size=8))
    elif kind == "schema_version":
        base["schema_version"] = draw(st.integers(2, 99))
    elif kind == "oversized":
        base["properties"] = {"blob": "x" * 70_000}
    elif kind == "future":
        base["ts"] = (NOW + timedelta(days=draw(st.integers(2, 3000)))).isoformat()
    elif kind == "past":
        base["ts"] = (NOW - timedelta(days=draw(st.integers(400, 9000)))).isoformat()
    elif kind == "not_an_object":
        return orjson.dumps([marker, draw(json_scalars)])
    base["properties"] = {**base.get("properties", {}), "marker": marker}
    return orjson.dumps(base)


@pytest.fixture(scope="module")
def fuzz_worker(
    bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, TopicReader, TopicReader]]:
    from tests.integration.conftest import isolated_settings

    run_dir = tmp_path_factory.mktemp("fuzz")
    settings = isolated_settings(bootstrap, run_dir)
    decisions = TopicReader(settings, settings.topics.decisions)
    letters = TopicReader(settings, settings.topics.dlq)
    with WorkerProcess(settings, run_dir / "worker.log") as worker:
        worker.wait_ready(60)
        yield settings, decisions, letters
    decisions.close()
    letters.close()


@hyp_settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    phases=(
        Phase.explicit,
        Phase.generate,
    ),  # each example is a batch through the broker: no shrinking
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_every_bad_record_is_dead_lettered_with_a_reason_and_every_good_one_processed(
    fuzz_worker: tuple[Settings, TopicReader, TopicReader], data: st.DataObject
) -> None:
    settings, decisions, letters = fuzz_worker
    tag = uuid.uuid4().hex[:8]
    bad = data.draw(st.lists(bad_record(tag), min_size=150, max_size=200, unique=True))
    good = [_good(f"good-{tag}-{i}") for i in range(data.draw(st.integers(60, 120)))]
    duplicates = data.draw(st.lists(st.sampled_from(good), max_size=30))
    unknown_outcomes = [
        {
            "outcome_id": f"o-{tag}-{i}",
            "customer_id": f"good-{tag}-{i}",
            "decision_id": f"nope-{tag}-{i}",
            "type": "clicked",
            "ts": NOW.isoformat(),
        }
        for i in range(5)
    ]
    mixed: list[dict[str, Any] | bytes] = [*good, *duplicates, *bad]
    random.Random(tag).shuffle(mixed)
    produce(settings, settings.topics.events, mixed)
    produce(settings, settings.topics.outcomes, unknown_outcomes)
    want_bad = set(bad) | {orjson.dumps(o) for o in unknown_outcomes}
    good_ids = {g["customer_id"] for g in good}

    def seen_bad() -> set[bytes]:
        return {original_bytes(orjson.dumps(r)) for r in letters.records} & want_bad

    letters.until(lambda _: seen_bad() == want_bad, timeout_s=60)
    decisions.until(lambda rs: good_ids <= {r["customer_id"] for r in rs}, timeout_s=90)
    decisions.poll(0.5)
    ours = [r for r in decisions.records if r["customer_id"] in good_ids]
    # Exactly one decision per good trigger: duplicates were ignored, not decided again.
    assert sorted(r["customer_id"] for r in ours) == sorted(good_ids)
    for letter in letters.records:
        if original_bytes(orjson.dumps(letter)) in want_bad:
            assert letter["reason"] and letter["detail"] is not None
            assert letter["topic"] in (settings.topics.events, settings.topics.outcomes)


def test_a_record_near_the_broker_limit_is_dead_lettered_and_the_worker_goes_on(
    fuzz_worker: tuple[Settings, TopicReader, TopicReader],
) -> None:
    """About 1 MB: the events topic takes it, base64 makes the letter 1.33 MB, which the
    dead-letter topic refused at the broker default; the worker stopped at every start."""
    settings, decisions, letters = fuzz_worker
    big = b'{"padding": "' + b"x" * 1_000_000 + b'"}'
    after = _good(f"after-big-{uuid.uuid4().hex[:8]}")
    produce(settings, settings.topics.events, [big, after])
    letters.until(lambda rs: any(original_bytes(orjson.dumps(r)) == big for r in rs), timeout_s=60)
    decisions.until(
        lambda rs: any(r["customer_id"] == after["customer_id"] for r in rs), timeout_s=60
    )


# --------------------------------------------------------------------------- crash safety


@pytest.mark.parametrize("runtime", ["rdkafka", "faust"])
def test_unreadable_table_rows_are_skipped_at_start_and_their_customers_records_dead_lettered(
    settings: Settings, tmp_path: Path, runtime: str
) -> None:
    """One row that does not decode in a changelog stopped both runtimes at every start (the
    timer index reads every row): now the worker starts, its other customers are decided, and
    the bad rows' customers' records go to the dead-letter topic, the rows kept as they are."""
    settings = settings.model_copy(update={"runtime": runtime})
    producer = Producer(producer_config(settings))
    bad = {"customers": "bad-state", "pending": "bad-pending"}
    for table, customer in bad.items():
        key = customer.encode()
        producer.produce(
            changelog_topic(settings, table),
            key=key,
            value=b"\x01garbage, not a row",
            partition=partition_of(key, settings.partitions),
        )
    assert producer.flush(30) == 0
    decisions = TopicReader(settings, settings.topics.decisions)
    letters = TopicReader(settings, settings.topics.dlq)
    good = ["good-1", "good-2"]
    with WorkerProcess(settings, tmp_path / "worker.log") as worker:
        worker.wait_ready(90)
        sent = [event(c, "cart_abandoned") for c in [*good, *bad.values()]]
        produce(settings, settings.topics.events, sent)
        decisions.until(lambda rs: {r["customer_id"] for r in rs} >= set(good))
        letters.until(lambda rs: len(rs) >= len(bad))
        scraped = scrape(worker.url)
        for customer in bad.values():
            with pytest.raises(urllib.error.HTTPError) as answer:
                customer_view(worker, customer)
            assert answer.value.code == (500 if customer == "bad-state" else 404)
    decisions.close()
    letters.close()
    assert sorted(r["customer_id"] for r in decisions.records) == good
    assert {r["reason"] for r in letters.records} == {"unreadable_row"}
    dead = sorted(
        orjson.loads(original_bytes(orjson.dumps(r)))["customer_id"] for r in letters.records
    )
    assert dead == sorted(bad.values())
    for table in bad:  # once per index rebuild: at least the one of the start
        assert total(scraped, "kairos_unreadable_rows_total", table=table) >= 1


@pytest.mark.parametrize("runtime", ["rdkafka", "faust"])
def test_a_failed_table_write_stops_the_worker_and_the_restart_decides_the_trigger(
    settings: Settings, tmp_path: Path, runtime: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk error on one customer's table write: the worker exits with an error instead of
    going on past the record (on Faust, the agent was restarted and the trigger's decision was
    lost for good), and the next worker decides that trigger, and every other, exactly once."""
    settings = settings.model_copy(update={"runtime": runtime})
    victim = f"disk-{uuid.uuid4().hex[:6]}"
    before = [f"before-{i}" for i in range(3)]
    after = [f"after-{i}" for i in range(3)]
    decisions = TopicReader(settings, settings.topics.decisions)
    failing = WorkerProcess(settings, tmp_path / "failing.log", module=FAILING_DISK_WORKER)
    monkeypatch.setenv("FAILING_DISK_CUSTOMER", victim)  # the child inherits the environment
    failing.start()
    try:
        failing.wait_ready(90)
        produce(settings, settings.topics.events, [event(c, "cart_abandoned") for c in before])
        decisions.until(lambda rs: {r["customer_id"] for r in rs} >= set(before))
        produce(
            settings,
            settings.topics.events,
            [event(c, "cart_abandoned") for c in [victim, *after]],
        )
        assert failing.process is not None
        code = failing.process.wait(60)
    finally:
        failing.stop()
    assert code != 0, failing.log_tail()
    assert "No space left on device" in failing.log_path.read_text(errors="replace")
    with WorkerProcess(settings, tmp_path / "restarted.log") as restarted:
        restarted.wait_ready(90)
        everyone = {victim, *before, *after}
        decisions.until(lambda rs: {r["customer_id"] for r in rs} >= everyone)
        decisions.poll(2.0)  # anything decided twice would arrive by now
    decisions.close()
    bodies: dict[str, set[bytes]] = {}
    for record in decisions.records:
        body = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
        bodies.setdefault(record["customer_id"], set()).add(body)
    assert set(bodies) == everyone
    # A repeat may be a resend of the same decision (at least once); never a second decision.
    assert all(len(b) == 1 for b in bodies.values()), {c: len(b) for c, b in bodies.items()}


def _purchase_stream(customers: int, per_customer: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    base = NOW - timedelta(minutes=30)
    records: list[dict[str, Any]] = []
    for step in range(per_customer):
        for c in range(customers):
            cid = f"soak-{c:04d}"
            kind = rng.choice(["product_view", "cart_add", "product_view", "purchase"])
            fields: dict[str, Any] = {
                "product_id": f"p{rng.randrange(50)}",
                "category": rng.choice("abcde"),
            }
            if kind in ("cart_add", "product_view"):
                fields["price"] = round(rng.uniform(5, 200), 2)
            if kind == "purchase":
                fields["order_value"] = round(rng.uniform(5, 200), 2)
            ts = base + timedelta(seconds=step * 3 + c * 0.001)
            records.append(event(cid, kind, ts=ts.isoformat(), **fields))
    return records


class _Responder(threading.Thread):
    """Answers each decision it reads with a conversion naming it, as a shop would, until stopped.

    The conversion closes the decision's window at once, so each answered decision must end as
    exactly one reward record, and as one conversion in the customer's engagement counts.
    """

    def __init__(self, settings: Settings, isolation: str) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.isolation = isolation
        self.answered: dict[str, str] = {}  # decision id -> customer id
        self.done = threading.Event()

    def run(self) -> None:
        from confluent_kafka import Producer

        from streams.topics import producer_config

        reader = TopicReader(
            self.settings, self.settings.topics.decisions, **{"isolation.level": self.isolation}
        )
        producer = Producer(producer_config(self.settings))
        seen = 0
        try:
            while not self.done.is_set():
                reader.poll(0.2)
                for decision in reader.records[seen:]:
                    did = decision["decision_id"]
                    if did in self.answered:
                        continue  # a redelivery: answered already
                    self.answered[did] = decision["customer_id"]
                    outcome = {
                        "outcome_id": f"conv-{did}",
                        "customer_id": decision["customer_id"],
                        "decision_id": did,
                        "type": "converted",
                        "ts": datetime.now(UTC).isoformat(),
                        "value": 1.0,
                    }
                    producer.produce(
                        self.settings.topics.outcomes,
                        key=decision["customer_id"].encode(),
                        value=orjson.dumps(outcome),
                    )
                seen = len(reader.records)
                producer.poll(0)
        finally:
            assert producer.flush(30) == 0
            reader.close()


def _reference(
    records: list[dict[str, Any]], config: TriggerConfig
) -> tuple[dict[str, Any], list[Trigger]]:
    """Each customer's state after the records, and every trigger they raise, in order."""
    states: dict[str, Any] = {}
    triggers: list[Trigger] = []
    for record in records:
        ev: Event = decode_event(orjson.dumps(record))
        prev = states.get(ev.customer_id)
        state = apply(prev, ev)
        raised, state = detect(prev, state, ev, config)
        triggers.extend(raised)
        states[ev.customer_id] = state
    return states, triggers


COMPARED = (
    "purchase_count",
    "purchase_value",
    "last_purchase",
    "cart",
    "categories",
    "first_seen",
    "last_seen",
    "timers",
)


def _differing_fields(bodies: list[bytes]) -> dict[str, list[object]]:
    """The fields in which a trigger's decisions differ, to tell a redecision from a redelivery."""
    parsed = [orjson.loads(b) for b in bodies]
    keys = sorted({k for p in parsed for k in p})
    return {
        k: [p.get(k) for p in parsed]
        for k in keys
        if len({orjson.dumps(p.get(k)) for p in parsed}) > 1
    }


@pytest.mark.parametrize(
    ("runtime", "guarantee"),
    [
        ("rdkafka", "at_least_once"),
        ("rdkafka", "exactly_once"),
        ("faust", "at_least_once"),
        ("faust", "exactly_once"),
    ],
)
def test_repeated_sigkills_lose_no_state_and_decide_each_trigger_once(
    settings: Settings, tmp_path: Path, runtime: str, guarantee: str
) -> None:
    # The Faust runtime at least once can lose a reward caught in its producer (README).
    lossless = runtime == "rdkafka" or guarantee == "exactly_once"
    settings = settings.model_copy(
        update={
            "runtime": runtime,
            "processing_guarantee": guarantee,
            "group_instance_id": "kairos-crash-0",
            "cart_abandon_after_s": 7200.0,
        }
    )
    # 25,000 events at least once; 12,000 under exactly-once (transactions make it slower).
    customers, per_customer = (500, 50) if guarantee == "at_least_once" else (400, 30)
    records = _purchase_stream(customers=customers, per_customer=per_customer, seed=3)
    reference, triggers = _reference(
        records,
        TriggerConfig(cart_abandon_after_s=7200.0, lapse_after_days=settings.lapse_after_days),
    )
    campaigns = resolve_campaigns(settings.campaigns)
    to_decide = {
        (c.name, t.trigger_id) for t in triggers for c in campaigns if c.responds_to(t.type)
    }
    isolation = "read_committed" if guarantee == "exactly_once" else "read_uncommitted"
    decisions = TopicReader(settings, settings.topics.decisions, **{"isolation.level": isolation})
    rewards = TopicReader(settings, settings.topics.rewards, **{"isolation.level": isolation})
    sender = threading.Thread(target=produce, args=(settings, settings.topics.events, records))
    responder = _Responder(settings, isolation)
    worker = WorkerProcess(settings, tmp_path / "worker-0.log").start()
    worker.wait_ready(60)
    sender.start()
    responder.start()
    for crash in range(3):
        time.sleep(1.5)
        worker.kill()
        worker = WorkerProcess(settings, tmp_path / f"worker-{crash + 1}.log").start()
        worker.wait_ready(90)
    sender.join()
    try:
        deadline = time.monotonic() + 120
        pending = set(reference)
        while pending and time.monotonic() < deadline:
            for cid in list(pending):
                try:
                    view = customer_view(worker, cid)
                except urllib.error.HTTPError as error:
                    if error.code != 404:
                        raise
                    continue  # not processed yet (exactly-once rebuilt its tables at start)
                state = view.get("state", {})
                if (
                    state.get("last_seen") == reference[cid].last_seen
                    and state.get("purchase_count") == reference[cid].purchase_count
                ):
                    pending.discard(cid)
            time.sleep(0.5)
        decisions.until(lambda rs: to_decide <= {(d["campaign"], d["trigger_id"]) for d in rs})
        responder.done.set()
        responder.join(60)
        answered = responder.answered

        def all_rewarded(records: list[dict[str, Any]]) -> bool:
            return set(answered) <= {r["decision"]["decision_id"] for r in records}

        if lossless:
            rewards.until(all_rewarded, 120)
        else:
            # The Faust runtime at least once: a reward record still lingering in the producer
            # when the worker is killed is lost (README, known gap: seen 2 of 6,163 in one CI
            # run of about 8).
            with contextlib.suppress(AssertionError):
                rewards.until(all_rewarded, 60)
        views = {cid: customer_view(worker, cid)["state"] for cid in reference}
        decisions.poll(3.0)
        rewards.poll(3.0)
    finally:
        responder.done.set()
        worker.stop()
        decisions.close()
        rewards.close()
    for cid, expected in reference.items():
        got = views[cid]
        shown = orjson.loads(orjson.dumps(state_view(expected)))  # as the worker shows its own
        for field in COMPARED:
            assert got[field] == shown[field], (cid, field, got[field], shown[field])
    per_trigger: dict[tuple[str, str], list[bytes]] = {}
    for d in decisions.records:
        per_trigger.setdefault((d["campaign"], d["trigger_id"]), []).append(
            orjson.dumps(d, option=orjson.OPT_SORT_KEYS)
        )
    assert per_trigger, "the purchases should have triggered cross-sell decisions"
    # Every trigger was decided and its decision is visible (to read_committed readers under
    # exactly-once): a crash must not lose a decision made in an aborted transaction or still
    # queued in the client, because the replayed event finds its effect in the local state.
    undecided = to_decide - set(per_trigger)
    assert not undecided, (len(undecided), len(to_decide), sorted(undecided)[:5])
    assert set(per_trigger) <= to_decide
    for key, bodies in per_trigger.items():
        # one decision per trigger; redeliveries identical
        assert len(set(bodies)) == 1, (key, _differing_fields(bodies))
        if guarantee == "exactly_once":
            assert len(bodies) == 1, key  # and under exactly-once, no redelivery at all
    # No decision was rewarded twice (exactly-once: each answered one exactly once), and each
    # conversion was counted once in the customer's engagement.
    per_decision: dict[str, list[bytes]] = {}
    for r in rewards.records:
        per_decision.setdefault(r["decision"]["decision_id"], []).append(
            orjson.dumps(r, option=orjson.OPT_SORT_KEYS)
        )
    assert set(per_decision) <= set(answered)
    # None lost: a reward caught in the producer by the crash is sent again (the rdkafka
    # runtime's index of unacknowledged writes), at least once as well as exactly once.
    lost = set(answered) - set(per_decision)
    if lossless:
        assert not lost, (len(lost), len(answered), sorted(lost)[:3])
    if guarantee == "exactly_once":
        twice = {did: len(bodies) for did, bodies in per_decision.items() if len(bodies) != 1}
    else:  # at least once a resend may repeat a reward, byte-identical (dropped by id downstream)
        twice = {did: len(set(b)) for did, b in per_decision.items() if len(set(b)) != 1}
    assert not twice, (len(twice), sorted(twice.items())[:3])
    conversions: dict[str, int] = {}
    for cid in answered.values():
        conversions[cid] = conversions.get(cid, 0) + 1
    for cid, count in conversions.items():
        assert views[cid]["engagement"]["all"][CONVERTED] == count, cid

"""`kairos tail`, `topics --list` and a worker's start-up errors on the real broker, as people use them."""

from __future__ import annotations

import io
import socket
import uuid

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from rich.console import Console
from typer.testing import CliRunner

from engine.snapshot import pack
from streams.cli import app
from streams.settings import Settings, settings_env
from streams.tail import TailError, tail_topic
from streams.topics import ensure_topics, existing_topics, producer_config
from tests.integration.kafka_io import produce

#: A decision whose values look like rich markup, long enough to wrap an 80-column terminal.
DECISION = {
    "customer_id": "c-[/cyan]-1",
    "campaign": "[bold]nudge",
    "action_id": "email:[red]x",
    "trigger_type": "cart_abandoned",
    "propensity": 0.25,
    "model_version": 3,
    "trigger_ts": "2026-03-02T12:00:00+00:00",
    "decided_ts": "2026-03-02T12:00:00.004+00:00",
    "probabilities": {f"action_{n}": 0.1 for n in range(12)},
}
DEAD_LETTER = {"reason": "schema", "topic": "t[/red]", "partition": 0, "offset": 7, "detail": "[x"}


def _console(width: int) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=width, emoji=False, highlight=False), out


def test_tail_prints_records_whose_values_look_like_markup(settings: Settings) -> None:
    produce(settings, settings.topics.decisions, [DECISION, b"not json ["])
    produce(settings, settings.topics.dlq, [{**DEAD_LETTER, "customer_id": "k"}])
    console, out = _console(200)
    shown = tail_topic(settings, "decisions", True, 2, 30.0, False, console)
    assert shown == 2
    decision, other = sorted(out.getvalue().splitlines(), key=lambda line: line == "not json [")
    assert decision.startswith("c-[/cyan]-1 cart_abandoned -> [bold]nudge: email:[red]x p=0.250")
    assert "4.0 ms" in decision
    assert other == "not json ["
    console, out = _console(200)
    assert tail_topic(settings, "dlq", True, 1, 30.0, False, console) == 1
    assert out.getvalue() == "schema t[/red][0]@7: [x\n"


def test_tail_json_writes_each_record_as_one_unwrapped_line(settings: Settings) -> None:
    produce(settings, settings.topics.decisions, [DECISION, {**DECISION, "customer_id": "c2"}])
    console, out = _console(40)  # narrower than the records: rich would wrap them
    assert tail_topic(settings, "decisions", True, 2, 30.0, True, console) == 2
    records = [orjson.loads(line) for line in out.getvalue().splitlines()]  # two partitions
    expected = [DECISION, {**DECISION, "customer_id": "c2"}]
    assert sorted(records, key=str) == sorted(expected, key=str)


def test_topics_list_reports_what_exists_and_creates_nothing(settings: Settings) -> None:
    assert existing_topics(settings) == ensure_topics(settings)  # made by the fixture
    prefix = f"kairos-test-absent-{uuid.uuid4().hex[:8]}"
    absent = settings.model_copy(
        update={
            "app_id": prefix,  # the table changelogs are named after it
            "topics": settings.topics.model_copy(
                update={name: f"{prefix}.{name}" for name in settings.topics.model_dump()}
            ),
        }
    )
    counts = existing_topics(absent)
    assert counts and set(counts.values()) == {None}
    listed = AdminClient(settings.confluent_config()).list_topics(timeout=30).topics
    assert not [name for name in listed if name.startswith(prefix)]


def test_tail_names_a_topic_that_does_not_exist_instead_of_waiting(settings: Settings) -> None:
    console, _ = _console(80)
    with pytest.raises(TailError, match=r"no topic 'decison'; short names: events, outcomes"):
        tail_topic(settings, "decison", True, 1, 5.0, False, console)


def test_tail_models_describes_each_snapshot_instead_of_printing_bytes(settings: Settings) -> None:
    producer = Producer(producer_config(settings))
    snapshot = pack(b"\x00\xffbody")
    producer.produce(settings.topics.models, snapshot, b"nudge")
    producer.produce(settings.topics.models, b"\x00\x01garbage", b"broken")
    assert producer.flush(30) == 0
    console, out = _console(200)
    assert tail_topic(settings, "models", True, 2, 30.0, False, console) == 2
    good, bad = out.getvalue().splitlines()
    assert good == f"nudge {len(snapshot)} bytes, checksum ok"
    assert bad.startswith("broken 9 bytes unreadable: snapshot too short")


def test_a_worker_whose_web_port_is_taken_says_so_in_one_line(settings: Settings) -> None:
    with socket.socket() as taken:
        taken.bind((settings.web_host, 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**settings_env(settings), "KAIROS_WEB_PORT": str(port), "COLUMNS": "300"}
        result = CliRunner().invoke(app, ["worker", "-c", "builtin:cart_abandonment"], env=env)
    assert result.exit_code == 2, result.output
    assert f"worker: cannot serve health, metrics and dashboard on {settings.web_host}:{port}" in (
        result.output
    )
    assert "Address already in use" in result.output

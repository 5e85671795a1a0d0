"""`kairos export`: write the rewards log (rewards topic, RewardRecord JSON) to JSON lines or Parquet.

The topic is read from its beginning up to the end offsets it had when the export started, so the
command terminates on a live topic. JSON lines keep each record exactly as it was on the wire;
Parquet (only if pyarrow is installed; it is not a Kairos dependency) flattens the main fields
for analytics and keeps the full record JSON in a `record` column for exact round trips.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, TopicPartition
from rich.console import Console

from schemas.codec import RecordError, decode_reward
from schemas.records import RewardRecord
from streams.settings import Settings
from streams.topics import consumer_config


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote and what it had to skip."""

    written: int
    skipped: int
    path: Path


def read_topic(settings: Settings, topic: str, timeout_s: float = 10.0) -> Iterator[bytes]:
    """Yield every record value of a topic, from the beginning to the end offsets at the start."""
    consumer = Consumer(consumer_config(settings, f"kairos-export-{uuid.uuid4().hex[:8]}"))
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s)
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            raise RuntimeError(f"topic {topic} not found")
        ends: dict[int, int] = {}
        assignment = []
        for partition in found.partitions:
            low, high = _watermarks(consumer, TopicPartition(topic, partition), timeout_s)
            if high > low:
                ends[partition] = high
                assignment.append(TopicPartition(topic, partition, low))
        if not assignment:
            return
        consumer.assign(assignment)
        deadline = time.monotonic() + timeout_s
        while ends:
            message = consumer.poll(0.5)
            if message is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{topic}: no record for {timeout_s} s before its end")
                continue
            deadline = time.monotonic() + timeout_s
            if message.error():
                continue
            partition, offset = message.partition(), message.offset()
            if partition is None or offset is None or partition not in ends:
                continue
            if offset + 1 >= ends[partition]:
                del ends[partition]
            if offset < (ends.get(partition, offset + 1)) and message.value() is not None:
                yield bytes(message.value() or b"")
    finally:
        consumer.close()


def _watermarks(consumer: Consumer, tp: TopicPartition, timeout_s: float) -> tuple[int, int]:
    """A partition's (low, high) offsets, retried while a new topic's leader is being elected."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=timeout_s)
            return int(low), int(high)
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def read_rewards(
    settings: Settings, campaign: str | None = None, timeout_s: float = 10.0
) -> tuple[list[tuple[RewardRecord, bytes]], int]:
    """Decode the rewards topic: (record, raw JSON) pairs of a campaign (or all), and bad ones."""
    out: list[tuple[RewardRecord, bytes]] = []
    skipped = 0
    for raw in read_topic(settings, settings.topics.rewards, timeout_s):
        try:
            record = decode_reward(raw)
        except RecordError:
            skipped += 1
            continue
        if campaign is None or record.decision.campaign == campaign:
            out.append((record, raw))
    return out, skipped


def read_rewards_file(path: Path) -> list[RewardRecord]:
    """Read a file written by `kairos export` (JSON lines, or Parquet with a `record` column)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq  # optional: only for Parquet files

        table = pq.read_table(path, columns=["record"])
        return [decode_reward(value) for value in table.column("record").to_pylist()]
    records = []
    with path.open("rb") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                records.append(decode_reward(line))
            except RecordError as exc:
                raise ValueError(f"{path}:{line_no}: {exc}") from exc
    return records


def _flat(record: RewardRecord, raw: bytes) -> dict[str, Any]:
    """One Parquet row: the fields analysts filter on, the maps, and the full record JSON."""
    d = record.decision
    return {
        "decision_id": d.decision_id,
        "customer_id": d.customer_id,
        "campaign": d.campaign,
        "action_id": d.action_id,
        "propensity": d.propensity,
        "reward": record.reward,
        "expired": record.expired,
        "holdout": d.holdout,
        "explore": d.explore,
        "reason": d.reason,
        "model_version": d.model_version,
        "cost": d.cost,
        "trigger_type": d.trigger_type,
        "decided_ts": d.decided_ts,
        "joined_ts": record.joined_ts,
        "outcome_types": list(record.outcome_types),
        "probabilities": list(d.probabilities.items()),
        "scores": list(d.scores.items()),
        "features": list(d.features.items()),
        "record": raw.decode(),
    }


def write_parquet(rows: list[tuple[RewardRecord, bytes]], path: Path) -> None:
    """Write rows as Parquet (needs pyarrow, which Kairos does not install)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise RuntimeError("Parquet needs pyarrow: pip install pyarrow, or write .jsonl") from exc
    as_map = pa.map_(pa.string(), pa.float64())
    schema = pa.schema(
        [
            ("decision_id", pa.string()),
            ("customer_id", pa.string()),
            ("campaign", pa.string()),
            ("action_id", pa.string()),
            ("propensity", pa.float64()),
            ("reward", pa.float64()),
            ("expired", pa.bool_()),
            ("holdout", pa.bool_()),
            ("explore", pa.bool_()),
            ("reason", pa.string()),
            ("model_version", pa.int64()),
            ("cost", pa.float64()),
            ("trigger_type", pa.string()),
            ("decided_ts", pa.timestamp("us", tz="UTC")),
            ("joined_ts", pa.timestamp("us", tz="UTC")),
            ("outcome_types", pa.list_(pa.string())),
            ("probabilities", as_map),
            ("scores", as_map),
            ("features", as_map),
            ("record", pa.string()),
        ]
    )
    table = pa.Table.from_pylist([_flat(r, raw) for r, raw in rows], schema=schema)
    pq.write_table(table, path)


#: Suffixes `kairos export` writes: Parquet, or JSON lines under their usual names (or none).
EXPORT_SUFFIXES = ("", ".parquet", ".jsonl", ".ndjson", ".json")


def export_rewards(
    settings: Settings, output: Path, campaign: str | None = None, timeout_s: float = 10.0
) -> ExportSummary:
    """Export the rewards topic to `output`: .parquet -> Parquet, .jsonl (or no suffix) -> JSON lines."""
    if output.suffix not in EXPORT_SUFFIXES:  # e.g. .csv: say so rather than write JSON lines
        raise ValueError(
            f"{output}: write .parquet or .jsonl ({', '.join(s for s in EXPORT_SUFFIXES if s)})"
        )
    rows, skipped = read_rewards(settings, campaign, timeout_s)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".parquet":
        write_parquet(rows, output)
    else:
        with output.open("wb") as handle:
            for _, raw in rows:
                handle.write(orjson.dumps(orjson.loads(raw)) + b"\n")  # one line per record
    return ExportSummary(len(rows), skipped, output)


def run_export(
    settings: Settings,
    output: Path,
    campaign: str | None,
    timeout_s: float,
    console: Console,
) -> int:
    """The command: export, print what was written, return the exit code."""
    try:
        summary = export_rewards(settings, output, campaign, timeout_s)
    except ValueError as exc:  # an output format it does not write
        console.print(f"[red]export:[/red] {exc}")
        return 2
    except (RuntimeError, TimeoutError, KafkaException) as exc:
        console.print(f"[red]export failed:[/red] {exc}")
        return 1
    note = f" ({summary.skipped} undecodable records skipped)" if summary.skipped else ""
    console.print(f"{summary.written} reward records -> {summary.path}{note}")
    return 0

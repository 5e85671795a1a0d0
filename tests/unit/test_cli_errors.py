"""Mistakes a user makes end a command with one line and exit code 2, not a traceback.

No broker is named or needed: each is caught before anything connects.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner, Result

from streams.cli import app

TYPO = """
name = "typo"
salt = "s"
triggers = ["cart_abandon"]
[actions.dimensions]
channel = ["email"]
"""


@pytest.mark.parametrize(
    ("command", "reference", "message"),
    [
        ("worker", "empty-dir", "no campaign files (*.toml) in this directory"),
        ("worker", "builtin:nope", "no built-in campaign 'nope'"),
        ("worker", "typo.toml", "'cart_abandon' is not a trigger"),
        ("worker", "missing.toml", "no such file or directory"),
        ("campaigns", "empty-dir", "no campaign files (*.toml) in this directory"),
        ("learner", "typo.toml", "'cart_abandon' is not a trigger"),
    ],
)
def test_a_bad_campaign_is_one_line_and_exit_code_2(
    tmp_path: Path, command: str, reference: str, message: str
) -> None:
    (tmp_path / "empty-dir").mkdir()
    (tmp_path / "typo.toml").write_text(TYPO)
    ref = reference if reference.startswith("builtin:") else str(tmp_path / reference)
    args = [command, ref] if command == "campaigns" else [command, "-c", ref]
    result = _run(args)
    assert "invalid campaign:" in result.output and message in result.output


def _run(args: list[str], **env: str) -> Result:
    result = CliRunner().invoke(
        app, args, env={"KAIROS_KAFKA_BOOTSTRAP": "127.0.0.1:1", "COLUMNS": "300", **env}
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return result


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (None, "invalid settings: KAIROS_CONFIG="),
        ("partitions = [", "invalid settings: KAIROS_CONFIG is not valid TOML"),
        ("state_ttl_days = 1", "invalid settings: Value error, state_ttl_days (1.0) must exceed"),
    ],
)
def test_a_bad_config_file_is_one_line(tmp_path: Path, config: str | None, message: str) -> None:
    path = tmp_path / "kairos.toml"
    if config is not None:
        path.write_text(config)
    assert message in _run(["campaigns"], KAIROS_CONFIG=str(path)).output


def test_evaluate_and_learn_name_a_rewards_log_they_cannot_read(tmp_path: Path) -> None:
    missing, garbage, empty = tmp_path / "missing.jsonl", tmp_path / "g.jsonl", tmp_path / "e.jsonl"
    garbage.write_text("not json\n")
    empty.write_text("")
    out = _run(["evaluate", "-i", str(missing)]).output
    assert "cannot read the rewards log:" in out and "missing.jsonl" in out
    out = _run(["learn", "-i", str(garbage), "-o", str(tmp_path)]).output
    assert "cannot read the rewards log:" in out and "g.jsonl:1: malformed_json" in out
    assert "the rewards log holds no reward records" in _run(["evaluate", "-i", str(empty)]).output


def test_export_refuses_a_format_it_does_not_write(tmp_path: Path) -> None:
    out = _run(["export", "-o", str(tmp_path / "rewards.csv")]).output
    assert "write .parquet or .jsonl" in out
    assert not (tmp_path / "rewards.csv").exists()


@pytest.mark.parametrize(
    ("args", "command"),
    [
        (["learner"], "learner"),
        (["tail"], "tail"),
        (["export", "-o", "rewards.jsonl"], "export"),
        (["topics", "--list"], "topics"),
    ],
)
def test_no_broker_is_one_line_after_the_wait(args: list[str], command: str) -> None:
    """The learner ended in a 47-line traceback; tail and export in a KafkaError repr after 10 s."""
    out = _run(args, KAIROS_BROKER_WAIT_S="1", COLUMNS="80").output
    (error,) = [line for line in out.splitlines() if line.startswith(f"{command}:")]
    assert "no answer from 127.0.0.1:1 within 1 s (is the broker running?)" in error
    assert error.endswith("Broker transport failure")  # not wrapped at 80 columns in a pipe
    # besides it, at most the reason logged once (librdkafka's line, through kairos.kafka)
    assert len(out.strip().splitlines()) <= 2, out


def test_a_table_directory_that_cannot_be_written_is_one_line_before_any_broker(
    tmp_path: Path,
) -> None:
    """A file in its place was a rebalance failure, after joining the group, naming no path."""
    blocker = tmp_path / "tables"
    blocker.write_text("not a directory")
    out = _run(["worker"], KAIROS_DATA_DIR=str(blocker / "inner")).output
    assert "worker: cannot write the table directory" in out and str(blocker) in out


def test_a_worker_failing_unexpectedly_logs_one_json_line_not_a_traceback_box(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A disk error inside the worker printed ~117 lines of a Rich traceback box on stderr,
    which log collectors split into as many records (QA, a file size limit)."""
    import streams.runner
    from streams.logs import configure_logging

    def failing(settings: object) -> None:
        configure_logging("info")
        raise OSError("IO error: While appending to file: pending-3.db/000004.log: File too large")

    monkeypatch.setattr(streams.runner, "run_worker", failing)
    result = CliRunner().invoke(app, ["worker"], env={"KAIROS_KAFKA_BOOTSTRAP": "127.0.0.1:1"})
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "╭" not in lines[0]
    record = orjson.loads(lines[0])
    assert record["msg"] == "worker failed" and "File too large" in record["exc"]


def test_campaign_errors_print_their_brackets_as_written(tmp_path: Path) -> None:
    """Rich read the error text as markup: `[a-z]` of a name pattern vanished, and a value holding
    `[/b]` crashed the command with a MarkupError traceback (QA, campaign author)."""
    upper = TYPO.replace('triggers = ["cart_abandon"]', 'triggers = ["cart_abandoned"]').replace(
        'channel = ["email"]', 'channel = ["Email"]'
    )
    (tmp_path / "upper.toml").write_text(upper)
    out = _run(["campaigns", str(tmp_path / "upper.toml")]).output
    assert "'Email' must match ^[a-z0-9][a-z0-9_-]{0,63}$" in out
    (tmp_path / "markup.toml").write_text(upper.replace('name = "typo"', 'name = "[/red]"'))
    out = _run(["campaigns", str(tmp_path / "markup.toml")]).output
    assert "invalid campaign:" in out and "'[/red]'" in out


def test_variants_of_one_campaign_can_be_checked_together(tmp_path: Path) -> None:
    """Two files of one campaign name were refused as 'names must be unique' (QA): a worker runs
    them together, checking candidates does not."""
    from streams.cli import app

    good = TYPO.replace('triggers = ["cart_abandon"]', 'triggers = ["cart_abandoned"]')
    good += "[reward.outcomes]\nconverted = 1.0\n"
    (tmp_path / "a.toml").write_text(good)
    (tmp_path / "b.toml").write_text(good.replace('channel = ["email"]', 'channel = ["sms"]'))
    result = CliRunner().invoke(
        app, ["campaigns", str(tmp_path / "a.toml"), str(tmp_path / "b.toml")]
    )
    assert result.exit_code == 0, result.output
    assert result.output.count("typo triggers=") == 2

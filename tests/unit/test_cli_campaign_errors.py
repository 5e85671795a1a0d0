"""A bad campaign reference ends `kairos worker` / `campaigns` with one line and exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

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
    # No broker is named or needed: the campaigns are checked before anything connects.
    result = CliRunner().invoke(
        app, args, env={"KAIROS_KAFKA_BOOTSTRAP": "127.0.0.1:1", "COLUMNS": "300"}
    )
    assert result.exit_code == 2, result.output
    assert "invalid campaign:" in result.output and message in result.output
    assert "Traceback" not in result.output

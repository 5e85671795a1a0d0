"""`kairos evaluate --obd DIR` on the real Open Bandit Dataset sample (first rows) and on bad input."""

from __future__ import annotations

import csv
import itertools
import math
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench import obd as bench_obd
from streams.cli import app

DATA = bench_obd.DEFAULT_DATA
ROWS = 2000
ENV = {"COLUMNS": "200"}
PCT = r"([0-9]+\.[0-9]+)%"
BTS_ROW = re.compile(
    rf"^│ (?P<name>IPS|SNIPS|DM|DR|BTS on-policy \(truth\))\s+│\s+{PCT}\s+│\s+\[{PCT}, {PCT}\]"
    rf"\s+│\s+(?:{PCT}|)\s+│",
    re.MULTILINE,
)

needs_sample = pytest.mark.skipif(
    not (DATA / "random" / "all" / "all.csv").exists(), reason=f"no OBD sample at {DATA}"
)


def _click_rate(path: Path, rows: int) -> float:
    """The mean click of a log's first rows, read straight from the CSV."""
    with path.open(newline="") as handle:
        clicks = [float(row["click"]) for row in itertools.islice(csv.DictReader(handle), rows)]
    return sum(clicks) / len(clicks)


@needs_sample
def test_evaluate_obd_prints_every_estimator_and_writes_html(tmp_path: Path) -> None:
    """Four estimators with intervals and finite relative errors vs BTS's own click rate; HTML."""
    page = tmp_path / "obd.html"
    args = ["evaluate", "--obd", str(DATA), "--limit", str(ROWS), "--n-sim", "5000"]
    result = CliRunner().invoke(app, [*args, "--bootstrap", "200", "--html", str(page)], env=ENV)
    assert result.exit_code == 0, result.output
    text = result.output
    assert f"{ROWS:,} uniform-random rounds" in text and f"{ROWS:,} Bernoulli Thompson" in text

    rows = {m["name"]: m for m in BTS_ROW.finditer(text)}
    assert set(rows) == {"IPS", "SNIPS", "DM", "DR", "BTS on-policy (truth)"}, text
    truth = _click_rate(DATA / "bts" / "all" / "all.csv", ROWS)
    assert float(rows["BTS on-policy (truth)"][2]) == pytest.approx(100 * truth, abs=5e-4)
    assert truth > 0.0
    for name in ("IPS", "SNIPS", "DM", "DR"):
        value, low, high, rel = (float(rows[name][k]) for k in (2, 3, 4, 5))
        assert 0.0 <= low <= value <= high < 5.0, (name, text)  # a click rate under 5%
        assert math.isfinite(rel), (name, text)
        assert rel == pytest.approx(100 * abs(value / 100 - truth) / truth, abs=0.2), (name, text)

    for learner in ("epsilon-greedy 0.1", "bootstrap Thompson (10 replicas)", "replay ("):
        assert learner in text, text
    assert "HTML report ->" in text
    body = page.read_text(encoding="utf-8")
    assert body.startswith("<!doctype html>") and body.count("<svg") == 3
    for name in ("IPS", "SNIPS", "DM", "DR", "BTS on-policy (truth)", "relative error", "Saito"):
        assert name in body, name


def test_evaluate_obd_names_the_missing_files(tmp_path: Path) -> None:
    """A directory without the sample's CSVs gets a message naming them and exit code 2."""
    (tmp_path / "random" / "all").mkdir(parents=True)
    (tmp_path / "random" / "all" / "all.csv").write_text("a,b\n1,2\n")
    result = CliRunner().invoke(app, ["evaluate", "--obd", str(tmp_path)], env=ENV)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "not an Open Bandit Dataset sample" in result.output
    assert "bts/all/all.csv" in result.output and "prior_bts.yaml" in result.output
    assert "Traceback" not in result.output

    (tmp_path / "bts" / "all").mkdir(parents=True)
    (tmp_path / "bts" / "all" / "all.csv").write_text("a,b\n1,2\n")
    (tmp_path / "prior_bts.yaml").write_text("all:\n  alpha:\n  - 1.0\n")
    result = CliRunner().invoke(app, ["evaluate", "--obd", str(tmp_path)], env=ENV)
    assert result.exit_code == 2, result.output
    assert "not an Open Bandit Dataset log" in result.output and "item_id" in result.output


def test_evaluate_obd_refuses_the_rewards_log_options(tmp_path: Path) -> None:
    """--obd evaluates the sample's own policies: a rewards-log option with it is an error."""
    args = ["evaluate", "--obd", str(tmp_path), "--input", str(tmp_path / "rewards.jsonl")]
    result = CliRunner().invoke(app, args, env=ENV)
    assert result.exit_code == 2
    assert "--input" in result.output

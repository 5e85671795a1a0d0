"""deploy/kafka/kafka.sh's broker configuration, checked without starting a broker (`config`)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "kafka.sh"


def _run_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`kafka.sh config` under `env`."""
    return subprocess.run(
        ["bash", str(SCRIPT), "config"], env=env, capture_output=True, text=True, check=False
    )


def _config(extra: str | None = None, cores: int | None = None, tmp: Path | None = None) -> str:
    """The server.properties `kafka.sh start` would write, optionally as if on `cores` CPUs."""
    env = {k: v for k, v in os.environ.items() if k != "KAIROS_KAFKA_PROPERTIES"}
    if extra is not None:
        env["KAIROS_KAFKA_PROPERTIES"] = extra
    if cores is not None:
        assert tmp is not None
        fake = tmp / "bin"
        fake.mkdir(exist_ok=True)
        (fake / "nproc").write_text(f"#!/bin/sh\necho {cores}\n")
        (fake / "nproc").chmod(0o755)
        env["PATH"] = f"{fake}:{env['PATH']}"
    done = _run_config(env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _last(config: str, key: str) -> str:
    """The value Java's Properties would load for `key`: its last line wins."""
    values = [line.split("=", 1)[1] for line in config.splitlines() if line.startswith(f"{key}=")]
    assert values, f"{key} not in the config"
    return values[-1]


@pytest.mark.parametrize(
    ("cores", "network", "io"),
    [(1, "1", "1"), (2, "1", "2"), (4, "2", "4"), (8, "3", "8"), (64, "3", "8")],
)
def test_request_threads_follow_the_cores_up_to_kafkas_defaults(
    tmp_path: Path, cores: int, network: str, io: str
) -> None:
    config = _config(cores=cores, tmp=tmp_path)
    assert _last(config, "num.network.threads") == network
    assert _last(config, "num.io.threads") == io


def test_extra_properties_come_last_so_they_win() -> None:
    config = _config("num.io.threads=5 log.retention.hours=1")
    assert _last(config, "num.io.threads") == "5"
    assert _last(config, "log.retention.hours") == "1"
    assert config.splitlines()[-2:] == ["num.io.threads=5", "log.retention.hours=1"]


def test_an_extra_property_without_a_value_is_refused() -> None:
    done = _run_config({**os.environ, "KAIROS_KAFKA_PROPERTIES": "num.io.threads"})
    assert done.returncode != 0
    assert "'num.io.threads' is not key=value" in done.stderr

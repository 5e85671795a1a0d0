"""Fixtures for tests against the real broker named by KAIROS_KAFKA_BOOTSTRAP (see `make test`).

With CI set, an unreachable broker fails these tests; it never skips them.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.demo import free_port
from streams.settings import Settings
from streams.topics import ensure_topics


def _reachable(bootstrap: str) -> bool:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def bootstrap() -> str:
    """The broker's bootstrap address; fail under CI, skip on a laptop, when there is none."""
    address = os.environ.get("KAIROS_KAFKA_BOOTSTRAP", "")
    if address and _reachable(address):
        return address
    message = (
        f"no Kafka broker reachable at KAIROS_KAFKA_BOOTSTRAP={address!r}; "
        "run the tests with `make test`, which starts one"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def isolated_settings(bootstrap: str, run_dir: Path) -> Settings:
    """Settings with their own topics, consumer group, tables and web port; topics created."""
    prefix = f"kairos-test-{uuid.uuid4().hex[:10]}"
    names = ("events", "outcomes", "decisions", "rewards", "models", "dlq", "ticks")
    value = Settings(
        kafka_bootstrap=bootstrap,
        app_id=prefix,
        topics={name: f"{prefix}.{name}.v1" for name in names},  # type: ignore[arg-type]
        data_dir=run_dir / "tables",
        web_port=free_port(),
        partitions=2,
        cart_abandon_after_s=2.0,
        snapshot_interval_s=1.0,
    )
    ensure_topics(value)
    return value


@pytest.fixture
def settings(bootstrap: str, tmp_path: Path) -> Iterator[Settings]:
    """Settings isolated to this test: its own topics, consumer group, tables and web port."""
    yield isolated_settings(bootstrap, tmp_path)

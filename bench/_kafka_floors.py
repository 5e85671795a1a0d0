"""The two floors Kairos is compared with, each run as a child process of bench/latency.py.

``confluent``: a bare confluent-kafka loop, consume from the input topic and produce each record to
the output topic, nothing else. ``faust``: a Faust agent (aiokafka transport, ``kafka://``) that
forwards each record, with the Faust settings of the Kairos worker (streams/app.py).

Run as ``python bench/_kafka_floors.py confluent|faust``; configured by the KAIROS_* environment
(streams.settings.Settings) plus FLOOR_IN, FLOOR_OUT and FLOOR_APP_ID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from streams.settings import Settings, settings_env

HERE = Path(__file__).resolve()


def run_confluent(settings: Settings, source: str, sink: str, group: str) -> None:
    """Consume-and-produce until SIGTERM: the floor of any Python worker on librdkafka."""
    from confluent_kafka import Consumer, Producer

    from streams.topics import consumer_config, producer_config

    consumer = Consumer(consumer_config(settings, group, **{"enable.auto.commit": True}))
    # linger 0: the floor is the lowest latency a bare loop gets, whatever the worker's linger.
    producer = Producer(producer_config(settings, **{"linger.ms": 0}))
    consumer.subscribe([source])
    running = True

    def stop(*_: Any) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    try:
        while running:
            message = consumer.poll(0.1)
            if message is not None and not message.error():
                producer.produce(sink, key=message.key(), value=message.value())
            producer.poll(0)
    finally:
        producer.flush(10)
        consumer.close()


def run_faust(settings: Settings, source: str, sink: str, app_id: str) -> None:
    """A Faust pass-through agent with the Kairos worker's Faust settings, until SIGTERM."""
    import faust
    from faust.worker import Worker

    from streams.app import faust_options

    s = settings
    # The Kairos worker's Faust settings (streams.app.faust_options) on a plain faust.App (stock
    # aiokafka transport and loop), with linger 0 as the lowest-latency floor.
    s.data_dir.mkdir(parents=True, exist_ok=True)  # as KairosApp does: Faust makes no parents
    app = faust.App(app_id, **{**faust_options(s), "producer_linger": 0.0})
    raw: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
    inbound = app.topic(source, partitions=s.partitions, **raw)
    outbound = app.topic(sink, **raw)

    @app.agent(inbound, name="bench.forward")
    async def forward(stream: Any) -> None:
        async for event in stream.events():
            await outbound.send(key=event.key, value=event.value)

    Worker(
        app, loglevel="warning", quiet=True, redirect_stdouts=False, override_logging=False
    ).execute_from_commandline()


def start_floor(
    kind: str, settings: Settings, source: str, sink: str, app_id: str, log_path: Path
) -> subprocess.Popen[bytes]:
    """Launch a floor ("confluent" or "faust") as a child process logging to log_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAIROS_")}
    env.update(settings_env(settings))
    env.update({"FLOOR_IN": source, "FLOOR_OUT": sink, "FLOOR_APP_ID": app_id})
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, str(HERE), kind],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def stop_floor(process: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    """SIGTERM, then SIGKILL if the floor does not exit in time."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def main() -> None:
    """Child-process entry point."""
    kind = sys.argv[1]
    settings = Settings()
    source, sink, app_id = (
        os.environ["FLOOR_IN"],
        os.environ["FLOOR_OUT"],
        os.environ["FLOOR_APP_ID"],
    )
    if kind == "confluent":
        run_confluent(settings, source, sink, app_id)
    elif kind == "faust":
        run_faust(settings, source, sink, app_id)
    else:
        raise SystemExit(f"unknown floor {kind!r}")


if __name__ == "__main__":
    main()

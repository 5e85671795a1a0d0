"""The one settings object of a Kairos worker: environment variables (prefix KAIROS_) and a TOML file."""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from streams.kafka_logs import kafka_logger

CONFIG_FILE_ENV = "KAIROS_CONFIG"
#: Producer linger by runtime when KAIROS_PRODUCER_LINGER_MS is unset (Settings.linger_ms).
#: 50 ms against 5 on the rdkafka runtime, alternating: broker CPU 55-59% against 63% and the
#: worker's 53-56% against 58% at 1,000 triggers/s (changelog batches of ~12 records instead of 1-2).
RDKAFKA_LINGER_MS = 50
FAUST_LINGER_MS = 5


class TopicNames(BaseSettings):
    """Versioned topic names; change the suffix to run a new contract beside the old one."""

    model_config = SettingsConfigDict(extra="forbid")

    events: str = "kairos.events.v1"
    outcomes: str = "kairos.outcomes.v1"
    decisions: str = "kairos.decisions.v1"
    rewards: str = "kairos.rewards.v1"
    models: str = "kairos.models.v1"
    dlq: str = "kairos.dlq.v1"
    ticks: str = "kairos.timer-ticks.v1"


class KafkaSecurity(BaseSettings):
    """Kafka SASL/SSL settings passed through to every client the worker creates."""

    model_config = SettingsConfigDict(extra="forbid")

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: str | None = Field(default=None, repr=False)
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None


class Settings(BaseSettings):
    """Everything a worker needs: broker, topics, store, campaigns, latency knobs, web and metrics.

    Nested fields use a double underscore in the environment: ``KAIROS_TOPICS__EVENTS=...``.
    A TOML file named by ``KAIROS_CONFIG`` supplies defaults that the environment overrides.
    """

    model_config = SettingsConfigDict(
        env_prefix="KAIROS_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    app_id: str = "kairos"
    kafka_bootstrap: str = "127.0.0.1:9092"
    security: KafkaSecurity = Field(default_factory=KafkaSecurity)
    topics: TopicNames = Field(default_factory=TopicNames)
    partitions: int = Field(default=4, ge=1, le=1024)
    replication_factor: int = Field(default=1, ge=1)
    data_dir: Path = Path(".run/worker")
    campaigns: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [
            "builtin:cart_abandonment",
            "builtin:cross_sell",
            "builtin:win_back",
        ],
        description="Campaign files, directories of them, or builtin:<name> for a shipped example.",
    )
    seed: int = 0
    # Triggers derived from time.
    cart_abandon_after_s: float = Field(default=1800.0, gt=0)
    lapse_after_days: float = Field(default=60.0, gt=0)
    timer_tick_s: float = Field(
        default=0.05,
        gt=0,
        description="Faust runtime: the longest sleep of the timer task between due times (it wakes at the soonest due time), and how often consumer lag is reported.",
    )
    # RocksDB memory, per table partition this worker holds (Faust's defaults are a 2 GiB block
    # cache and 3 x 64 MiB write buffers per partition: unbounded in practice). The worst case is
    # partitions held x 2 tables x (cache + buffers x buffer size): 24 x 32 MiB for 12 partitions.
    rocksdb_block_cache_mib: int = Field(default=16, ge=1)
    rocksdb_write_buffer_mib: int = Field(default=8, ge=1)
    rocksdb_max_write_buffers: int = Field(default=2, ge=2)
    # Retention: a customer idle this long, with no open decision, is removed from both tables
    # (a tombstone in the changelog), so the tables hold the active customers, not everyone ever.
    state_ttl_days: float = Field(default=400.0, gt=0)
    state_sweep_interval_s: float = Field(
        default=3600.0, gt=0, description="How often the tables are scanned for idle customers."
    )
    state_sweep_chunk: int = Field(
        default=256,
        gt=0,
        description="Rows the retention scan reads between yields to the event loop: decisions "
        "wait at most one chunk's worth of scanning.",
    )
    # Learning across workers: "local" learns in process (one worker, or an experiment);
    # "remote" decides only and follows the snapshots that `kairos learner` publishes.
    learning: Literal["local", "remote"] = "local"
    # Learning across workers.
    snapshot_interval_s: float = Field(default=30.0, gt=0)
    snapshot_key: str | None = Field(
        default=None, repr=False, description="HMAC key for signed model snapshots."
    )
    # Runtime: which stream layer moves records between Kafka and the processor.
    runtime: Literal["rdkafka", "faust"] = Field(
        default="rdkafka",
        description="rdkafka: one confluent-kafka consume loop with RocksDB tables and changelogs "
        "of its own (streams/rdkafka_worker.py); faust: Faust agents and tables (streams/app.py). "
        "Both use the same group, topics and changelogs, so a worker can switch between them. "
        "rdkafka costs a fraction of Faust's CPU per record (BENCHMARKS.md, Latency).",
    )
    # Delivery.
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    transaction_interval_s: float = Field(
        default=0.1,
        gt=0,
        description="Exactly-once with the rdkafka runtime: how long a transaction collects "
        "records before it commits. Decisions become visible to read-committed consumers at "
        "the commit, so this bounds their added latency; shorter costs more commits.",
    )
    # Latency and start-up knobs (measured; see BENCHMARKS.md).
    group_instance_id: str | None = Field(
        default=None,
        description="Static group membership (e.g. the pod name): a restart takes the old place "
        "at once instead of waiting for the session timeout.",
    )
    session_timeout_s: float = Field(default=10.0, gt=0)
    heartbeat_interval_s: float = Field(default=1.0, gt=0)
    rebalance_timeout_s: float = Field(default=20.0, gt=0)
    producer_linger_ms: int | None = Field(
        default=None,
        ge=0,
        description="How long the producer waits to fill a batch of changelog, tick and reward "
        "records: fewer, larger produce requests cost the broker and the worker less CPU on a "
        "shared 2-core machine. Decisions (the action topic) never wait: with librdkafka they "
        "have a client of their own without linger (BENCHMARKS.md, Latency). Unset: 50 ms on "
        "the rdkafka runtime, whose redo log resends what a crash caught in the producer, "
        "5 ms on Faust, where a crash loses a lingering reward (README, known gap).",
    )
    producer_acks: int = Field(default=-1, ge=-1, le=1, description="-1 = all replicas")
    producer_compression: Literal["none", "lz4", "zstd", "snappy", "gzip"] = Field(
        default="none",
        description="Compression of the worker's produced batches (decisions, changelogs, "
        "rewards), for links where bytes cost more than CPU. On one shared 2-core machine lz4 "
        "cost the broker CPU and the p99 (BENCHMARKS.md, Latency), hence none.",
    )
    commit_interval_s: float = Field(default=1.0, gt=0)
    consumer_fetch_min_bytes: int = Field(
        default=1,
        ge=1,
        description="rdkafka runtime: the broker answers a fetch once this much is there (or "
        "after consumer_fetch_max_wait_ms). 1 = at once, lowest latency; more batches records "
        "per fetch, fewer requests for the broker and fewer wake-ups for the worker.",
    )
    consumer_fetch_max_wait_ms: int = Field(default=10, ge=0)
    consumer_spin_us: int = Field(
        default=0,
        ge=0,
        le=100_000,
        description="rdkafka runtime: after a loop turn that handled records, poll without "
        "blocking for this long before waiting for the next record, so a record arriving soon "
        "after finds the worker on its CPU with warm caches instead of woken from a halted "
        "vCPU. Costs CPU right after work only (an idle worker blocks at once). 0 = always "
        "block: on 2 shared cores 500 µs gave no reliable gain (BENCHMARKS.md, Latency).",
    )
    write_batch_ms: float = Field(
        default=2.0,
        ge=0,
        description="rdkafka runtime: records handled in one loop turn are written to RocksDB "
        "and sent together once the turn has collected this long (or has nothing more to "
        "read): one WAL write per table instead of three per record. 0 = after every record; "
        "it bounds how long the first decision of a burst waits (BENCHMARKS.md, Latency).",
    )
    producer_client: Literal["librdkafka", "aiokafka"] = Field(
        default="librdkafka",
        description="Which client sends the worker's records (decisions, changelogs, ticks): "
        "librdkafka does the batching and I/O in C threads (BENCHMARKS.md, Latency). Under "
        "exactly-once, transactions always go through aiokafka.",
    )
    event_loop: Literal["uvloop", "asyncio"] = Field(
        default="uvloop",
        description="uvloop (libuv) runs the worker's event loop with less overhead per message "
        "than the stdlib loop (BENCHMARKS.md, Latency); asyncio is the fallback.",
    )
    gc_freeze: bool = Field(
        default=True,
        description="Exempt the start-up heap from garbage collection once the worker is ready, "
        "so that full collections walk only newer objects (shorter event-loop pauses; "
        "streams/gc_pauses.py, BENCHMARKS.md).",
    )
    cpu_latency_us: int | None = Field(
        default=None,
        ge=0,
        description="Hold a Linux CPU wake-up latency request (/dev/cpu_dma_latency) of this "
        "many µs while the worker runs; 0 keeps idle CPUs polling instead of halting, so a "
        "record does not wake the worker on a cold, halted vCPU. Machine-wide, costs idle CPU "
        "and needs write access to the device (streams/cpu_latency.py; BENCHMARKS.md Latency: "
        "medians about halved at 1,000 triggers/s on our 2-core VMs). Unset: none.",
    )
    action_features: bool = Field(
        default=False,
        description="Put each decision's features (the model's inputs, about half its bytes) on "
        "the action topic too. Off: senders get the action, ids, propensity, scores and times; "
        "the features stay in the pending table and rewards.v1, where learning, export and "
        "evaluation read them. Fewer bytes per trigger through the broker (BENCHMARKS.md, "
        "Latency), and derived customer data off a topic every sender reads.",
    )
    # Input hygiene.
    max_event_age_days: float = Field(default=30.0, gt=0)
    max_event_future_s: float = Field(default=300.0, ge=0)
    max_trigger_age_s: float = Field(
        default=86_400.0,
        gt=0,
        description="A trigger older than this when the worker reaches it (events backfilled or "
        "replayed from history, a timer that fell due long ago) updates the state but is not "
        "decided on (kairos_stale_triggers_total): a month of replayed events must not message "
        "customers about carts they left weeks ago.",
    )
    broker_wait_s: float = Field(
        default=30.0,
        gt=0,
        description="How long a starting command waits for the broker to answer before it ends "
        "with one line (a broker started beside it may take a while).",
    )
    # Web: health, metrics, dashboard, customer lookup.
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=6066, ge=0, le=65535)
    log_level: Literal["debug", "info", "warn", "error"] = "info"
    log_customer_ids: Literal["plain", "hashed", "omitted"] = "hashed"

    @field_validator("campaigns", mode="before")
    @classmethod
    def _split_campaigns(cls, value: Any) -> Any:
        """Accept a comma-separated string from the environment as well as a list."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return [item.strip().strip("'\"") for item in text[1:-1].split(",") if item.strip()]
            return [item.strip() for item in text.split(",") if item.strip()]
        return value

    @model_validator(mode="after")
    def _retention_outlives_lapse(self) -> Settings:
        """Expiring a customer before the lapse trigger could fire would silently disable it."""
        if self.state_ttl_days <= self.lapse_after_days:
            raise ValueError(
                f"state_ttl_days ({self.state_ttl_days}) must exceed lapse_after_days "
                f"({self.lapse_after_days}): idle customers must live long enough to lapse"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Order: explicit arguments, then environment, then the TOML file named by KAIROS_CONFIG."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_FILE_ENV)
        if config_file:
            if not Path(config_file).is_file():
                raise FileNotFoundError(f"{CONFIG_FILE_ENV}={config_file}: no such file")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    @property
    def linger_ms(self) -> int:
        """The producer linger in effect: producer_linger_ms, or the runtime's default."""
        if self.producer_linger_ms is not None:
            return self.producer_linger_ms
        return RDKAFKA_LINGER_MS if self.runtime == "rdkafka" else FAUST_LINGER_MS

    @property
    def broker_url(self) -> str:
        """The bootstrap servers as a Faust broker URL (aiokafka transport)."""
        return ";".join(f"kafka://{host}" for host in self.kafka_bootstrap.split(","))

    def confluent_config(self) -> dict[str, Any]:
        """Client settings for confluent-kafka producers, consumers and admin clients."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.kafka_bootstrap,
            "security.protocol": self.security.protocol,
            # TCP_NODELAY, as the broker and the Java clients set it: librdkafka's default (Nagle
            # on) may hold a small request until the one before it is acknowledged. Every client
            # gets it, the bench's floors too (measured: within the noise, BENCHMARKS.md Latency).
            "socket.nagle.disable": True,
            # librdkafka's lines through Kairos' logs, a connection failure once a minute rather
            # than at every reconnect (streams/kafka_logs.py).
            "logger": kafka_logger(),
        }
        if self.security.sasl_mechanism:
            config["sasl.mechanism"] = self.security.sasl_mechanism
            config["sasl.username"] = self.security.sasl_username or ""
            config["sasl.password"] = self.security.sasl_password or ""
        if self.security.ssl_cafile:
            config["ssl.ca.location"] = str(self.security.ssl_cafile)
        if self.security.ssl_certfile:
            config["ssl.certificate.location"] = str(self.security.ssl_certfile)
        if self.security.ssl_keyfile:
            config["ssl.key.location"] = str(self.security.ssl_keyfile)
        return config


#: KAIROS_* variables that are not settings: read by deploy/kafka/kafka.sh, or naming the file.
NON_SETTING_VARIABLES = frozenset(
    {
        CONFIG_FILE_ENV,
        "KAIROS_KAFKA_CACHE",
        "KAIROS_KAFKA_GC",
        "KAIROS_KAFKA_HEAP",
        "KAIROS_KAFKA_PROPERTIES",
        "KAIROS_KAFKA_RUN_DIR",
    }
)


def unknown_variables(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """KAIROS_* variables that set nothing (a misspelt name is silently ignored otherwise), each
    with the closest setting's variable name, if any is close."""
    names = {f"KAIROS_{field.upper()}" for field in Settings.model_fields}
    unknown = []
    for variable in sorted(environ):
        upper = variable.upper()
        if not upper.startswith("KAIROS_") or upper in NON_SETTING_VARIABLES:
            continue
        # Nested names (KAIROS_TOPICS__EVENTS) are checked by the model itself.
        top = upper.split("__", 1)[0]
        if top not in names:
            close = difflib.get_close_matches(top, sorted(names), n=1)
            unknown.append((variable, close[0] if close else None))
    return unknown


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as KAIROS_* environment variables, to configure a worker subprocess."""
    env: dict[str, str] = {}

    def put(prefix: str, value: object) -> None:
        if value is None:
            return
        if isinstance(value, dict):
            for key, inner in value.items():
                put(f"{prefix}__{key.upper()}", inner)
        elif isinstance(value, list):
            env[prefix] = ",".join(str(v) for v in value)
        else:
            env[prefix] = str(value)

    for name, value in settings.model_dump(mode="json").items():
        put(f"KAIROS_{name.upper()}", value)
    return env

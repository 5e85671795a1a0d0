"""Settings: environment over TOML file over defaults, validation, and the subprocess round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from streams.settings import Settings, settings_env, unknown_variables


def test_environment_overrides_nested_fields_and_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAIROS_KAFKA_BOOTSTRAP", "broker-a:9092,broker-b:9092")
    monkeypatch.setenv("KAIROS_TOPICS__EVENTS", "shop.events.v2")
    monkeypatch.setenv("KAIROS_CAMPAIGNS", "builtin:cart_abandonment, ./mine.toml")
    monkeypatch.setenv("KAIROS_PARTITIONS", "12")
    s = Settings()
    assert s.topics.events == "shop.events.v2"
    assert s.topics.decisions == "kairos.decisions.v1"
    assert s.campaigns == ["builtin:cart_abandonment", "./mine.toml"]
    assert s.partitions == 12
    assert s.broker_url == "kafka://broker-a:9092;kafka://broker-b:9092"


def test_toml_file_supplies_values_the_environment_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "kairos.toml"
    config.write_text('partitions = 6\nseed = 42\n[topics]\nrewards = "r.v9"\n')
    monkeypatch.setenv("KAIROS_CONFIG", str(config))
    monkeypatch.setenv("KAIROS_SEED", "7")
    s = Settings()
    assert s.partitions == 6
    assert s.topics.rewards == "r.v9"
    assert s.seed == 7


def test_bad_values_are_refused_with_the_field_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAIROS_PARTITIONS", "0")
    with pytest.raises(ValidationError, match="partitions"):
        Settings()


def test_unknown_settings_in_the_file_are_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "kairos.toml"
    config.write_text("partitons = 6\n")
    monkeypatch.setenv("KAIROS_CONFIG", str(config))
    with pytest.raises(ValidationError, match="partitons"):
        Settings()


def test_settings_survive_the_trip_through_environment_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = Settings(
        app_id="x",
        partitions=3,
        campaigns=["builtin:win_back"],
        security={"protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u"},  # type: ignore[arg-type]
    )
    for key, value in settings_env(original).items():
        monkeypatch.setenv(key, value)
    assert Settings() == original


def test_sasl_and_ssl_settings_reach_the_kafka_clients() -> None:
    s = Settings(
        security={  # type: ignore[arg-type]
            "protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": "kairos",
            "sasl_password": "secret",
            "ssl_cafile": "/etc/ca.pem",
        }
    )
    config = s.confluent_config()
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert config["sasl.username"] == "kairos"
    assert config["ssl.ca.location"] == "/etc/ca.pem"
    assert "secret" not in repr(s)
    assert config["socket.nagle.disable"] is True  # no small request waits behind another


def test_a_state_ttl_shorter_than_the_lapse_period_is_refused() -> None:
    with pytest.raises(ValidationError, match="state_ttl_days"):
        Settings(state_ttl_days=30.0, lapse_after_days=60.0)
    assert Settings(state_ttl_days=61.0, lapse_after_days=60.0).state_ttl_days == 61.0


def test_an_invalid_setting_ends_a_command_with_one_line_and_exit_code_2() -> None:
    from typer.testing import CliRunner

    from streams.cli import app

    result = CliRunner().invoke(app, ["worker", "--runtime", "nope"])
    assert result.exit_code == 2
    assert "invalid setting KAIROS_RUNTIME: Input should be 'rdkafka' or 'faust'" in result.output
    assert "Traceback" not in result.output


def test_the_producer_linger_defaults_by_runtime_and_an_explicit_one_wins() -> None:
    """rdkafka lingers 50 ms (its redo log covers a crash), Faust 5 ms; a set value is kept."""
    assert Settings(runtime="rdkafka").linger_ms == 50
    assert Settings(runtime="faust").linger_ms == 5
    assert Settings(runtime="faust").model_copy(update={"runtime": "rdkafka"}).linger_ms == 50
    assert Settings(runtime="rdkafka", producer_linger_ms=0).linger_ms == 0
    assert Settings(runtime="faust", producer_linger_ms=20).linger_ms == 20


def test_unknown_kairos_variables_are_named_with_the_closest_setting() -> None:
    environ = {
        "KAIROS_PARTITONS": "3",  # misspelt: would be ignored in silence
        "KAIROS_PARTITIONS": "4",
        "KAIROS_TOPICS__EVENTS": "e",  # nested names are the model's to check
        "KAIROS_KAFKA_HEAP": "1g",  # read by deploy/kafka/kafka.sh, not a setting
        "KAIROS_CONFIG": "kairos.toml",
        "KAIROS_QQQQQQQQQQ": "1",
        "PATH": "/bin",
    }
    assert unknown_variables(environ) == [
        ("KAIROS_PARTITONS", "KAIROS_PARTITIONS"),
        ("KAIROS_QQQQQQQQQQ", None),
    ]
    assert unknown_variables(settings_env(Settings())) == []

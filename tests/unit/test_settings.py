from pathlib import Path

import pytest

from invoice_batch.settings import ConfigError, load_settings, masked


def test_defaults_match_the_contract() -> None:
    settings = load_settings({})
    assert settings.input_topic == "invoices" and settings.output_topic == "invoices.classified"
    assert settings.dlq_topic == "invoices.dlq" and settings.consumer_group == "invoice-batch"
    assert settings.batch_max_requests == 10_000 and settings.batch_max_bytes == 200_000_000
    assert settings.claude_model == "claude-haiku-4-5"
    assert (
        settings.metrics_port_for("consumer") == 9101
        and settings.metrics_port_for("collector") == 9102
    )
    assert str(settings.approval_thresholds["INR"]) == "200000"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"BATCH_MAX_REQUESTS": "100001"}, "BATCH_MAX_REQUESTS"),
        ({"BATCH_MAX_BYTES": str(300 * 1024 * 1024)}, "BATCH_MAX_BYTES"),
        ({"BATCH_CUTOFF": "25:00"}, "BATCH_CUTOFF"),
        ({"BATCH_TIMEZONE": "Mars/Olympus"}, "BATCH_TIMEZONE"),
        ({"APPROVAL_THRESHOLDS": "INR=lots"}, "APPROVAL_THRESHOLDS"),
        ({"INPUT_FORMAT": "xml"}, "INPUT_FORMAT"),
        ({"SQLITE_SYNCHRONOUS": "off"}, "SQLITE_SYNCHRONOUS"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert str(caught.value).startswith(named + ":") and "\n" not in str(caught.value)


def test_kafka_variables_pass_through_to_librdkafka_and_secrets_are_masked() -> None:
    settings = load_settings(
        {
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_PASSWORD": "hunter22secret",
            "ANTHROPIC_API_KEY": "sk-ant-secret-123",
            "DATABASE_URL": "postgresql+psycopg://u:dbpass99@h/db",
        }
    )
    assert settings.librdkafka()["security.protocol"] == "SASL_SSL"
    shown = masked(settings)
    text = repr(settings) + str(shown)
    for secret in ("hunter22secret", "sk-ant-secret-123", "dbpass99"):
        assert secret not in text
    assert shown["DATABASE_URL"] == "postgresql+psycopg://u:***@h/db"


@pytest.mark.parametrize(
    "variable",
    [
        "KAFKA_ENABLE_AUTO_COMMIT",
        "KAFKA_ENABLE_AUTO_OFFSET_STORE",
        "KAFKA_ENABLE_IDEMPOTENCE",
        "KAFKA_ACKS",
    ],
)
def test_kafka_options_the_guarantees_rest_on_cannot_be_set(variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({variable: "1"})
    assert str(caught.value).startswith(f"{variable} cannot be set: ")
    assert "\n" not in str(caught.value)


def test_config_file_sets_keys_and_the_environment_wins(tmp_path: Path) -> None:
    config = tmp_path / "invoice-batch.toml"
    config.write_text(
        'batch_max_requests = 500\nBATCH_CUTOFF = "23:00"\nclaude_model = "from-file"\n'
    )
    settings = load_settings({"CLAUDE_MODEL": "from-env"}, config_file=config)
    assert settings.batch_max_requests == 500 and str(settings.batch_cutoff) == "23:00:00"
    assert settings.claude_model == "from-env"
    with pytest.raises(ConfigError):
        load_settings({}, config_file=tmp_path / "missing.toml")

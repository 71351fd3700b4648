"""KAFKA_* pass-through to every librdkafka client, and topic creation: the
``invoice-batch topics create`` command and TOPICS_AUTO_CREATE on a service's start,
against the real broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]

from invoice_batch.broker import free_port, wait_for_port
from invoice_batch.kafka import (
    CONSUMER_FETCH,
    consumer_config,
    ensure_service_topics,
    producer_config,
)
from invoice_batch.settings import load_settings, masked

CLOUD_ENV = {
    "KAFKA_BOOTSTRAP_SERVERS": "b-1.example.kafka.eu-west-1.amazonaws.com:9096",
    "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "KAFKA_SASL_USERNAME": "invoice-batch",
    "KAFKA_SASL_PASSWORD": "s3cret-scram-password",
    "KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM": "https",
}


def test_every_kafka_variable_reaches_the_consumer_and_the_producer_config() -> None:
    current = load_settings(CLOUD_ENV)
    for config in (consumer_config(current), producer_config(current)):
        assert config["bootstrap.servers"] == CLOUD_ENV["KAFKA_BOOTSTRAP_SERVERS"]
        assert config["security.protocol"] == "SASL_SSL"
        assert config["sasl.mechanism"] == "SCRAM-SHA-512"
        assert config["sasl.username"] == "invoice-batch"
        assert config["sasl.password"] == "s3cret-scram-password"
        assert config["ssl.endpoint.identification.algorithm"] == "https"
    # The consume protocol's own settings cannot be overridden by accident of naming...
    assert consumer_config(current)["enable.auto.commit"] is False
    # ...and the password never shows.
    shown = masked(current)
    assert shown["KAFKA_SASL_PASSWORD"] == "**********"
    assert "s3cret-scram-password" not in repr(current) + str(shown)


def test_consumers_fetch_with_a_short_queue_backoff_that_a_variable_overrides() -> None:
    """librdkafka's 1 s fetch.queue.backoff.ms stalled a consumer that empties its
    64 MB queue within the second (invoice_batch.kafka.CONSUMER_FETCH)."""
    from confluent_kafka import Consumer

    env = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"}
    default = consumer_config(load_settings(env))
    assert default["fetch.queue.backoff.ms"] == CONSUMER_FETCH["fetch.queue.backoff.ms"] == 20
    Consumer(default).close()  # librdkafka knows the option and takes the value
    chosen = load_settings({**env, "KAFKA_FETCH_QUEUE_BACKOFF_MS": "500"})
    assert consumer_config(chosen)["fetch.queue.backoff.ms"] == "500"


def test_librdkafka_accepts_the_passed_through_sasl_configuration() -> None:
    """librdkafka itself validates the names and values when a client is built."""
    from confluent_kafka import Consumer, Producer

    current = load_settings(CLOUD_ENV)
    Producer(producer_config(current))
    Consumer(consumer_config(current)).close()


def partitions_of(bootstrap: str, topic: str) -> int | None:
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    found = metadata.topics.get(topic)
    return len(found.partitions) if found is not None and found.error is None else None


def retention_of(bootstrap: str, topic: str) -> str:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    (future,) = admin.describe_configs([ConfigResource("topic", topic)]).values()
    return str(future.result(10)["retention.ms"].value)


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoice_batch", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_topics_create_makes_the_three_topics_with_the_partitions_and_retention_asked(
    broker: str, topics: dict[str, str]
) -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": broker, **topics}
    first = cli(
        env,
        "topics",
        "create",
        "--partitions",
        "4",
        "--replication-factor",
        "1",
        "--retention-hours",
        "2",
    )
    assert first.returncode == 0, first.stderr
    for name in (topics["INPUT_TOPIC"], topics["OUTPUT_TOPIC"], topics["DLQ_TOPIC"]):
        assert f"{name}: created" in first.stdout
        assert partitions_of(broker, name) == 4
        assert retention_of(broker, name) == str(2 * 3_600_000)
    again = cli(env, "topics", "create", "--partitions", "8")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count(": exists") == 3
    assert partitions_of(broker, topics["INPUT_TOPIC"]) == 4, "existing topics are left alone"


def test_topics_create_rejects_a_bad_partition_count_with_exit_2(
    broker: str, topics: dict[str, str]
) -> None:
    result = cli(
        {"KAFKA_BOOTSTRAP_SERVERS": broker, **topics}, "topics", "create", "--partitions", "0"
    )
    assert result.returncode == 2


def test_topic_settings_decide_what_a_service_creates_and_auto_create_false_creates_nothing(
    broker: str,
) -> None:
    name = f"auto-{uuid.uuid4().hex[:8]}"
    off = load_settings({"KAFKA_BOOTSTRAP_SERVERS": broker, "TOPICS_AUTO_CREATE": "false"})
    ensure_service_topics(off, [name])
    assert partitions_of(broker, name) is None
    on = load_settings({"KAFKA_BOOTSTRAP_SERVERS": broker, "TOPIC_PARTITIONS": "3"})
    ensure_service_topics(on, [name])
    assert partitions_of(broker, name) == 3


@pytest.mark.parametrize("auto_create", ["true", "false"])
def test_a_starting_consumer_creates_its_topics_only_when_allowed(
    broker: str, topics: dict[str, str], tmp_path: Path, auto_create: str
) -> None:
    port = free_port()
    log = (tmp_path / "consumer.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "invoice_batch", "consume"],
        env={
            **os.environ,
            **topics,
            "KAFKA_BOOTSTRAP_SERVERS": broker,
            "KAFKA_SESSION_TIMEOUT_MS": "6000",
            "TOPICS_AUTO_CREATE": auto_create,
            "TOPIC_PARTITIONS": "6",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}",
            "ANTHROPIC_API_KEY": "sk-ant-topics",
            "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{free_port()}",
            "METRICS_PORT": str(port),
            "LOG_FORMAT": "json",
        },
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_port(port, 30, process)
        time.sleep(1)
        expected = 6 if auto_create == "true" else None
        assert partitions_of(broker, topics["INPUT_TOPIC"]) == expected
        assert partitions_of(broker, topics["DLQ_TOPIC"]) == expected
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(20)

"""The store goes away mid-stream: the consumer pauses, keeps its group membership,
and resumes when the store is back; nothing is lost or classified twice."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition

from invoice_batch.demo import running_pipeline
from tests.integration.test_pipeline import decode_all, encoded, invoices
from tests.support.tcp_proxy import tcp_proxy
from tests.support.topics import produce_raw, read_topic


def test_a_store_outage_pauses_consumption_and_loses_nothing(
    topics: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    request.getfixturevalue("database_url_postgres_available")
    database_url = next(iter(request.getfixturevalue("_postgres_url_for_proxy")))
    host_part = database_url.split("@", 1)[1]
    database = host_part.split("/", 1)[1]
    sent = invoices(1200)
    with tcp_proxy("127.0.0.1", 5432) as proxy:
        proxied = f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/{database}"
        settings = {
            "DATABASE_URL": proxied,
            **topics,
            "BATCH_MAX_REQUESTS": "400",
            "BATCH_MAX_WAIT_SECONDS": "2",
            "CREATE_TIMEOUT_SECONDS": "5",
        }
        with running_pipeline(tmp_path, processing_seconds=0.5, settings=settings) as pipeline:
            produce_raw(pipeline.bootstrap, topics["INPUT_TOPIC"], encoded(sent[:400]))
            time.sleep(4)
            proxy.cut()
            produce_raw(pipeline.bootstrap, topics["INPUT_TOPIC"], encoded(sent[400:]))
            time.sleep(10)  # longer than the 6 s session timeout: membership must survive
            pipeline.check_alive()
            proxy.restore()
            out = read_topic(
                pipeline.bootstrap,
                topics["OUTPUT_TOPIC"],
                len(sent),
                120,
                check=pipeline.check_alive,
                settle=3,
            )
    ids = [r["invoice_id"] for r in decode_all(out)]
    assert len(ids) == len(set(ids)) == len(sent)
    events = [
        json.loads(line)["event"]
        for line in (tmp_path / "consumer.log").read_text().splitlines()
        if line.startswith("{")
    ]
    assert "store or DLQ write failed; partitions paused until it is back" in events
    assert "store is back; partitions resumed" in events
    before_shutdown = events[: events.index("stop requested")]
    assert "partitions revoked" not in before_shutdown, "the group lost the consumer in the outage"


def test_a_partition_assigned_during_a_store_outage_loses_nothing(
    broker: str, topics: dict[str, str], request: pytest.FixtureRequest
) -> None:
    """The store is down and the consumer's partitions are paused when a rival leaves
    the group: the partition the consumer is then given is not paused, and the
    records its membership polls return must be put back, not skipped."""
    from confluent_kafka import Consumer, Producer
    from invoice_batch.consumer.flusher import Flusher
    from invoice_batch.consumer.service import ConsumerService
    from prometheus_client import CollectorRegistry
    from sqlalchemy import create_engine, select

    from invoice_batch.bootstrap import anthropic_client, open_store
    from invoice_batch.kafka import DeadLetters, consumer_config, ensure_topics, producer_config
    from invoice_batch.metrics import Metrics
    from invoice_batch.settings import load_settings
    from invoice_batch.store.models import InvoiceRow

    request.getfixturevalue("database_url_postgres_available")
    database_url = next(iter(request.getfixturevalue("_postgres_url_for_proxy")))
    database = database_url.rsplit("/", 1)[1]
    records = iter(encoded(invoices(8)))
    with tcp_proxy("127.0.0.1", 5432) as proxy:
        settings = load_settings(
            {
                "KAFKA_BOOTSTRAP_SERVERS": broker,
                "KAFKA_SESSION_TIMEOUT_MS": "6000",
                "DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/{database}",
                "ANTHROPIC_BASE_URL": "http://127.0.0.1:9",
                "ANTHROPIC_API_KEY": "test-key",
                **topics,
            }
        )
        ensure_topics(settings, [settings.input_topic, settings.dlq_topic], 2)
        store = open_store(settings)
        producer = Producer(producer_config(settings))
        service = ConsumerService(
            settings,
            store,
            Consumer(consumer_config(settings)),
            DeadLetters(producer, settings.dlq_topic),
            Flusher(store, anthropic_client(settings), settings, Metrics(CollectorRegistry())),
            Metrics(CollectorRegistry()),
        )
        assigned: list[list[int]] = []
        on_assign = service._on_assign

        def recording(consumer: Consumer, partitions: list[TopicPartition]) -> None:
            assigned.append(sorted(p.partition for p in partitions))
            on_assign(consumer, partitions)

        service._on_assign = recording  # type: ignore[method-assign]
        stop = threading.Event()
        running = threading.Thread(target=service.run, args=(stop,), daemon=True)
        running.start()
        rival: Consumer | None = Consumer(
            {
                "bootstrap.servers": broker,
                "group.id": settings.consumer_group,
                "session.timeout.ms": 6000,
                "enable.auto.commit": False,
            }
        )
        rival.subscribe([settings.input_topic])

        def until(done: Callable[[], bool], what: str, timeout: float = 60) -> None:
            deadline = time.monotonic() + timeout
            while not done():
                assert running.is_alive(), "the consumer stopped"
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                if rival is not None:
                    assert rival.poll(0.1) is None, "the rival read a record"
                else:
                    time.sleep(0.1)

        def send(partition: int, count: int) -> None:
            for _ in range(count):
                key, value = next(records)
                producer.produce(settings.input_topic, key=key, value=value, partition=partition)
            assert producer.flush(30) == 0

        def ours() -> list[int]:
            return assigned[-1] if assigned else []

        try:
            until(
                lambda: len(ours()) == 1 and rival is not None and len(rival.assignment()) == 1,
                "a partition each",
            )
            mine, theirs = ours()[0], 1 - ours()[0]
            proxy.cut()
            send(mine, 3)
            until(lambda: service.store_down, "the consumer to find the store down")
            rival.close()
            rival = None
            until(lambda: ours() == [0, 1], "the rival's partition")
            send(theirs, 5)
            time.sleep(6)  # the outage goes on through membership polls of both partitions
            assert service.store_down
            proxy.restore()
            check = create_engine(database_url)
            try:

                def stored() -> set[tuple[int | None, int | None]]:
                    with check.connect() as connection:
                        return set(
                            connection.execute(
                                select(InvoiceRow.source_partition, InvoiceRow.source_offset)
                            ).all()
                        )

                until(lambda: len(stored()) == 8, "all eight rows", timeout=30)
                assert stored() == {(mine, offset) for offset in range(3)} | {
                    (theirs, offset) for offset in range(5)
                }
            finally:
                check.dispose()
        finally:
            stop.set()
            running.join(30)
            service.consumer.close()
            if rival is not None:
                rival.close()
            store.engine.dispose()

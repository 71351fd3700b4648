"""Schema registry wire format, schema evolution and poison bytes, through the codecs
(the SDK's ``mock://`` registry) and through the consumer and collector running on
the real broker and the emulator.

``mock://`` registries live in one process, so the services run in this process
(threads) here; the real-process tests use raw Avro.
"""

from __future__ import annotations

import contextlib
import json
import struct
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from hypothesis import given, settings
from hypothesis import strategies as st
from invoice_batch.schemas.codec import (
    RegistryUnavailable,
    classified_codec_for,
    invoice_codec_for,
    load_schema,
    registry_client,
    schema_fingerprint,
    schema_text,
)

from invoice_batch.invoices import InvalidMessage
from invoice_batch.settings import load_settings

GOOD = {
    "invoice_id": "INV-1",
    "supplier": "AWS",
    "description": "cloud hosting",
    "amount": "124500.50",
    "currency": "INR",
    "invoice_date": "2026-11-02",
}


def newer_invoice_schema() -> dict[str, Any]:
    """What an upstream team ships next: an optional field with a default, appended."""
    schema: dict[str, Any] = json.loads(schema_text("invoice_event"))
    schema["fields"].append({"name": "po_number", "type": ["null", "string"], "default": None})
    return schema


def newer_record(invoice_id: str) -> dict[str, object]:
    return {
        "invoice_id": invoice_id,
        "supplier": "Adobe",
        "description": "design software licence",
        "amount": "78000",
        "currency": "INR",
        "invoice_date": None,
        "raw_text": None,
        "event_time": None,
        "po_number": "PO-77",
    }


def registry_settings(**extra: str) -> Any:
    return load_settings({"SCHEMA_REGISTRY_URL": f"mock://{uuid.uuid4().hex}", **extra})


def code_of(codec: Any, value: bytes) -> str:
    with pytest.raises(InvalidMessage) as caught:
        codec.decode(value)
    return caught.value.code


# ------------------------------------------------------------------ codecs


def test_with_a_registry_values_carry_the_magic_byte_and_the_id_registered_under_topic_value() -> (
    None
):
    current = registry_settings()
    codec = invoice_codec_for(current, "invoices-x")
    value = codec.encode(GOOD)
    client = registry_client(current.schema_registry_url)
    registered = client.get_latest_version("invoices-x-value")
    assert value[0] == 0
    assert struct.unpack(">I", value[1:5])[0] == registered.schema_id
    assert codec.decode(value).invoice_id == "INV-1"

    classified = classified_codec_for(current, "classified-x")
    record = {
        "event_id": "e-1",
        "invoice_id": "INV-1",
        "department": "IT",
        "amount": "10",
        "currency": "INR",
        "summary": "cloud",
        "approval_required": False,
        "approval_reasons": [],
        "model": "claude-haiku-4-5",
        "batch_id": "msgbatch_1",
        "classified_at": datetime(2026, 11, 2, tzinfo=UTC),
    }
    out = classified.encode(record)
    assert (
        out[0] == 0
        and client.get_latest_version("classified-x-value").schema_id
        == (struct.unpack(">I", out[1:5])[0])
    )
    assert classified.decode(out) == record


def test_with_a_registry_a_producer_that_added_an_optional_field_is_read_by_the_writer_id() -> None:
    current = registry_settings()
    codec = invoice_codec_for(current, "invoices-evolved")
    old_value = codec.encode(GOOD)
    client = registry_client(current.schema_registry_url)
    serializer = AvroSerializer(client, json.dumps(newer_invoice_schema()))
    new_value = serializer(
        newer_record("INV-2"), SerializationContext("invoices-evolved", MessageField.VALUE)
    )
    assert new_value is not None and new_value[1:5] != old_value[1:5], "a new schema id"
    invoice = codec.decode(new_value)
    assert (invoice.invoice_id, invoice.supplier, str(invoice.amount)) == (
        "INV-2",
        "Adobe",
        "78000",
    )
    assert codec.decode(old_value).invoice_id == "INV-1"


def test_with_a_registry_unknown_ids_wrong_schemas_and_cut_values_are_invalid_messages() -> None:
    current = registry_settings()
    codec = invoice_codec_for(current, "invoices-bad")
    value = codec.encode(GOOD)
    client = registry_client(current.schema_registry_url)
    assert code_of(codec, b"\x00\x00\x00\x03\xe7" + value[5:]) == "schema_mismatch"
    assert code_of(codec, value[:-2]) == "malformed"
    assert code_of(codec, value + b"\x00") == "schema_mismatch"
    # A schema that cannot resolve to ours (no invoice_id) under the topic's subject.
    other = {"type": "record", "name": "Other", "fields": [{"name": "x", "type": "long"}]}
    other_id = client.register_schema("elsewhere-value", Schema(json.dumps(other), "AVRO"))
    assert code_of(codec, b"\x00" + struct.pack(">I", other_id) + b"\x02") == "schema_mismatch"
    # Raw Avro still decodes with a registry configured (producers migrating one by one).
    raw = invoice_codec_for(load_settings({}), "invoices-bad").encode(GOOD)
    assert codec.decode(raw).invoice_id == "INV-1"


def test_registry_framed_values_without_a_registry_are_a_schema_mismatch_not_garbage() -> None:
    framed = invoice_codec_for(registry_settings(), "t").encode(GOOD)
    raw = invoice_codec_for(load_settings({}), "t")
    with pytest.raises(InvalidMessage) as caught:
        raw.decode(framed)
    assert caught.value.code == "schema_mismatch"
    assert "SCHEMA_REGISTRY_URL" in caught.value.reason


def test_an_unreachable_registry_stops_the_consumer_instead_of_filling_the_dlq() -> None:
    from invoice_batch.broker import free_port

    current = load_settings({"SCHEMA_REGISTRY_URL": f"http://127.0.0.1:{free_port()}"})
    codec = invoice_codec_for(current, "t")
    with pytest.raises(RegistryUnavailable):
        codec.decode(b"\x00\x00\x00\x00\x07" + b"\x02\x00" * 4)


@settings(max_examples=300, deadline=None)
@given(
    body=st.binary(min_size=0, max_size=200),
    framing=st.sampled_from([b"", b"\x00\x00\x00\x00\x01", b"\xc3\x01"]),
)
def test_any_bytes_end_as_an_invoice_or_an_invalid_message(body: bytes, framing: bytes) -> None:
    for codec in (REGISTRY_CODEC, RAW_CODEC):
        with contextlib.suppress(InvalidMessage):
            codec.decode(framing + body)


REGISTRY_SETTINGS = registry_settings()
REGISTRY_CODEC = invoice_codec_for(REGISTRY_SETTINGS, "fuzz")
REGISTRY_CODEC.encode(GOOD)  # registers schema id 1, so fuzzed ids hit a real schema
RAW_CODEC = invoice_codec_for(load_settings({}), "fuzz")


# ------------------------------------------------------------------ raw Avro evolution


def write_newer_schema(tmp_path: Path) -> tuple[Path, Any]:
    import fastavro

    path = tmp_path / "invoice_event_v2.avsc"
    path.write_text(json.dumps(newer_invoice_schema()))
    return path, fastavro.parse_schema(newer_invoice_schema())


def raw_bytes(schema: Any, record: dict[str, object]) -> bytes:
    import io

    import fastavro

    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, record)
    return buffer.getvalue()


def test_raw_avro_from_a_newer_writer_is_read_once_its_schema_is_listed(tmp_path: Path) -> None:
    path, newer = write_newer_schema(tmp_path)
    value = raw_bytes(newer, newer_record("INV-3"))
    unaware = invoice_codec_for(load_settings({}))
    assert code_of(unaware, value) == "schema_mismatch"
    aware = invoice_codec_for(load_settings({"AVRO_WRITER_SCHEMAS": str(path)}))
    assert aware.decode(value).invoice_id == "INV-3"
    # Our own schema's records are still read with our schema first.
    assert aware.decode(aware.encode(GOOD)).invoice_id == "INV-1"


def test_raw_avro_single_object_encoding_names_its_writer_by_fingerprint(tmp_path: Path) -> None:
    path, newer = write_newer_schema(tmp_path)
    value = b"\xc3\x01" + schema_fingerprint(newer) + raw_bytes(newer, newer_record("INV-4"))
    aware = invoice_codec_for(load_settings({"AVRO_WRITER_SCHEMAS": str(path)}))
    assert aware.decode(value).invoice_id == "INV-4"
    ours = b"\xc3\x01" + schema_fingerprint(load_schema("invoice_event"))
    assert aware.decode(
        ours + raw_bytes(load_schema("invoice_event"), GOOD | {"invoice_date": None})
    )
    unaware = invoice_codec_for(load_settings({}))
    assert code_of(unaware, value) == "schema_mismatch"


# ------------------------------------------------------------------ through the services


def test_consumer_and_collector_speak_the_registry_wire_format_end_to_end(
    tmp_path: Path, topics: dict[str, str]
) -> None:
    """Old and newer registry-framed invoices in, registry-framed results out, on the
    real broker and the emulator; the services run as threads sharing the mock registry."""
    import anthropic
    from confluent_kafka import Consumer, Producer
    from invoice_batch.collector.service import CollectorService
    from invoice_batch.consumer.flusher import Flusher
    from invoice_batch.consumer.service import ConsumerService
    from prometheus_client import CollectorRegistry

    from invoice_batch.demo import running_pipeline
    from invoice_batch.kafka import DeadLetters, consumer_config, producer_config
    from invoice_batch.metrics import Metrics
    from invoice_batch.store.repository import Store
    from invoice_batch.store.schema import make_engine, upgrade_schema
    from tests.support.topics import produce_raw, read_topic

    registry_url = f"mock://{uuid.uuid4().hex}"
    with running_pipeline(
        tmp_path,
        processing_seconds=0.5,
        services=False,
        settings={
            **topics,
            "SCHEMA_REGISTRY_URL": registry_url,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'registry.db'}",
            "BATCH_MAX_REQUESTS": "20",
            "BATCH_MAX_WAIT_SECONDS": "1",
        },
    ) as pipeline:
        current = load_settings(pipeline.env)
        producer_codec = invoice_codec_for(current)
        client = registry_client(registry_url)
        newer = AvroSerializer(client, json.dumps(newer_invoice_schema()))
        context = SerializationContext(current.input_topic, MessageField.VALUE)
        items: list[tuple[bytes | None, bytes | None]] = []
        for i in range(20):
            record = GOOD | {"invoice_id": f"INV-R{i:03d}"}
            if i % 2:
                items.append((f"INV-R{i:03d}".encode(), producer_codec.encode(record)))
            else:
                items.append(
                    (f"INV-R{i:03d}".encode(), newer(newer_record(f"INV-R{i:03d}"), context))
                )
        items.append((b"poison", b"\x00\x00\x00\x03\xe7\x02\x02"))
        produce_raw(pipeline.bootstrap, current.input_topic, items)

        engine = make_engine(current.sqlalchemy_url())
        upgrade_schema(engine)
        store = Store(engine)
        api = anthropic.Anthropic(base_url=pipeline.emulator_url, api_key="sk-ant-registry")
        metrics = Metrics(CollectorRegistry())
        producer = Producer(producer_config(current))
        dead_letters = DeadLetters(producer, current.dlq_topic)
        consumer = Consumer(consumer_config(current))
        stop = threading.Event()
        services = [
            ConsumerService(
                current,
                store,
                consumer,
                dead_letters,
                Flusher(store, api, current, metrics),
                metrics,
            ),
            CollectorService(current, store, api, producer, dead_letters, metrics),
        ]
        threads = [threading.Thread(target=s.run, args=(stop,), daemon=True) for s in services]
        for thread in threads:
            thread.start()
        try:
            out = read_topic(pipeline.bootstrap, current.output_topic, 20, 90, settle=2)
            dlq = read_topic(pipeline.bootstrap, current.dlq_topic, 1, 30)
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
            consumer.close()
            producer.flush(10)
            engine.dispose()
    reader = classified_codec_for(current)
    records = [reader.decode(r.value) for r in out]
    assert all(r.value and r.value[0] == 0 for r in out), "results carry the registry framing"
    assert sorted(str(r["invoice_id"]) for r in records) == [f"INV-R{i:03d}" for i in range(20)]
    assert [r.headers["error.code"] for r in dlq] == [b"schema_mismatch"]
    assert client.get_latest_version(f"{current.output_topic}-value").schema_id > 0

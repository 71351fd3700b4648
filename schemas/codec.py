"""Bytes on the topics ⇄ records: Avro (raw, or Confluent-framed through a schema
registry) with the schemas in this folder, or JSON.

Decoding never raises anything but ``InvalidMessage`` for a bad record: fastavro
alone raises EOFError, UnicodeDecodeError, IndexError, ValueError, OverflowError
and more on bad bytes, and a poison record must reach the DLQ, not stop the
consumer. The one exception is a schema registry that cannot be reached
(``RegistryUnavailable``): that is not the record's fault, so the consumer stops
before committing the poll instead of sending good records to the DLQ.

Which Avro bytes are read, by their first bytes:

- ``00`` + 4-byte schema id: Confluent wire format. The writer schema comes from
  the registry by id and is resolved against our reader schema, so a producer that
  added optional fields with defaults is read without any change here. Without
  ``SCHEMA_REGISTRY_URL`` such a record is a ``schema_mismatch``.
- ``C3 01`` + 8-byte CRC-64-AVRO fingerprint: Avro single-object encoding. The
  writer schema is the known schema with that fingerprint (ours, or one listed in
  ``AVRO_WRITER_SCHEMAS``); an unknown fingerprint is a ``schema_mismatch``.
- anything else: raw schemaless Avro. It carries no hint of its writer schema, so
  it is read with ours, and only when that leaves bytes over (a newer writer
  appended fields) with each schema of ``AVRO_WRITER_SCHEMAS`` in turn; the first
  that consumes the value exactly wins. New fields must therefore be appended,
  which is how ``invoice_event.avsc`` says fields are added.

Raw InvoiceEvent values written with our own schema, nearly every record, are read
and validated in one pass by ``read_invoice``, at a third of the cost of fastavro
and ``validate_invoice``. It only takes the clean, valid case; every other value
goes through fastavro and ``validate_invoice``, which give the record or its error.
It also tells when the value is exactly what ``encode_invoice_event`` writes for the
invoice it read (``SourceEncoding``): the store then keeps the invoice once, and the
original bytes are rebuilt from it when a dead letter needs them.

Encoding writes the Confluent wire format when a registry is configured (our
schema registered under ``<topic>-value``), raw schemaless Avro otherwise.
"""

from __future__ import annotations

import contextlib
import io
import json
import struct
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import fastavro
from fastavro.read import SchemaResolutionError
from fastavro.schema import fingerprint, to_parsing_canonical_form

from invoice_batch.invoices import (
    CONTROL_BYTES,
    ISO_4217,
    MAX_INVOICE_ID_CHARS,
    InvalidMessage,
    Invoice,
    parse_amount,
    validate_invoice,
)

if TYPE_CHECKING:
    from invoice_batch.settings import Settings

Format = Literal["avro", "json"]
SchemaName = Literal["invoice_event", "classified_invoice"]
# How a record's value is rebuilt from the invoice read from it (``source_value_of``):
# raw Avro of INVOICE_EVENT_LAYOUT with the invoice's event_time, or with a null one
# (the invoice's event time then came from the record's Kafka timestamp).
SourceEncoding = Literal["avro", "avro-untimed"]

# Confluent wire format: magic byte 0, then the schema id as a big-endian int32.
CONFLUENT_MAGIC = b"\x00"
CONFLUENT_HEADER = 5
# Avro single-object encoding (Avro spec 1.8+): C3 01, then the CRC-64-AVRO
# fingerprint of the writer schema, little-endian.
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
SINGLE_OBJECT_HEADER = 10


class RegistryUnavailable(Exception):
    """The schema registry did not answer (connection error, 5xx, auth failure)."""


def schema_text(name: SchemaName) -> str:
    """The ``.avsc`` text shipped in this package."""
    return resources.files(__package__).joinpath(f"{name}.avsc").read_text()


@cache
def load_schema(name: SchemaName) -> Any:
    """The parsed Avro schema shipped in this package (``invoice_event.avsc``…)."""
    return fastavro.parse_schema(json.loads(schema_text(name)))


def schema_fingerprint(parsed: Any) -> bytes:
    """The 8 bytes of Avro single-object encoding that name a writer schema."""
    return struct.pack("<Q", int(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"), 16))


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__}")


def _avro_bytes(schema: Any, record: Mapping[str, object]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, dict(record))
    return buffer.getvalue()


def _read_avro(
    writer: Any, value: bytes | memoryview, reader: Any = None, *, offset: int = 0
) -> dict[str, object]:
    buffer = io.BytesIO(value)
    buffer.seek(offset)
    try:
        record = fastavro.schemaless_reader(buffer, writer, reader)
    except SchemaResolutionError as exc:
        raise InvalidMessage(
            "schema_mismatch", f"the writer schema does not resolve to ours: {exc}"[:300]
        ) from None
    except Exception as exc:  # fastavro's error types are many and undocumented
        raise InvalidMessage(
            "malformed", f"not an Avro record of this schema: {type(exc).__name__}"
        ) from None
    if buffer.tell() != len(value):
        raise InvalidMessage(
            "schema_mismatch", f"{len(value) - buffer.tell()} bytes left over after the Avro record"
        )
    if not isinstance(record, dict):
        raise InvalidMessage("schema_mismatch", "the Avro value is not a record")
    return record


def _read_json(value: bytes) -> dict[str, object]:
    try:
        record = json.loads(value)
    except UnicodeDecodeError:
        raise InvalidMessage("malformed", "the value is not UTF-8") from None
    except ValueError as exc:
        raise InvalidMessage("malformed", f"not JSON: {exc.args[0] if exc.args else exc}") from None
    except RecursionError:
        raise InvalidMessage("malformed", "JSON nested too deeply") from None
    if not isinstance(record, dict):
        raise InvalidMessage(
            "schema_mismatch", f"expected a JSON object, got {type(record).__name__}"
        )
    return record


# ------------------------------------------------------------------ InvoiceEvent, read directly

# The layout read_invoice reads: (field, Avro type) of invoice_event.avsc.
INVOICE_EVENT_LAYOUT: tuple[tuple[str, object], ...] = (
    ("invoice_id", "string"),
    ("supplier", "string"),
    ("description", "string"),
    ("amount", ["null", "string"]),
    ("currency", ["null", "string"]),
    ("invoice_date", ["null", {"type": "int", "logicalType": "date"}]),
    ("raw_text", ["null", "string"]),
    ("event_time", ["null", {"type": "long", "logicalType": "timestamp-millis"}]),
)
_DATE_EPOCH = date(1970, 1, 1).toordinal()
_TIME_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def event_time_of(milliseconds: int) -> datetime:
    """A Kafka or Avro timestamp in milliseconds as an aware UTC datetime."""
    return _TIME_EPOCH + timedelta(milliseconds=milliseconds)


def _long(value: bytes, pos: int) -> tuple[int, int]:
    """The zig-zag varint at ``pos`` and the position after it; _NotClean when it has
    more bytes than it needs (valid Avro, but no writer makes it: read the general way)."""
    byte = value[pos]
    pos += 1
    n = byte & 0x7F
    shift = 7
    while byte & 0x80:
        byte = value[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        shift += 7
    if not byte and shift > 7:
        raise _NotClean
    return (n >> 1) ^ -(n & 1), pos


class _NotClean(ValueError):
    """The value is not a clean, valid InvoiceEvent: read it the general way."""


def _text_at(value: bytes, pos: int, limit: int) -> tuple[str, int]:
    """The Avro string at ``pos`` and the position after it; _NotClean when it is over
    ``limit`` bytes, holds a control character validation would replace, is not UTF-8
    or runs past the end of the value."""
    byte = value[pos]
    if byte < 0x80:  # lengths under 64: one byte
        n, pos = (byte >> 1) ^ -(byte & 1), pos + 1
    else:
        n, pos = _long(value, pos)
    if not 0 <= n <= limit:
        raise _NotClean
    end = pos + n
    raw = value[pos:end]
    # Shorter when it has control bytes, or when the value ends before the string.
    if len(raw.translate(None, CONTROL_BYTES)) != n:
        raise _NotClean
    return raw.decode(), end


def _union(value: bytes, pos: int) -> tuple[bool, int]:
    """A ``["null", T]`` union's index at ``pos``: whether T follows (byte 02) or null
    (byte 00), and the position after it; _NotClean for any other index."""
    branch = value[pos]
    if branch & ~2:
        raise _NotClean
    return branch == 2, pos + 1


def read_invoice(
    value: bytes, *, max_text_bytes: int, event_time: datetime | None = None
) -> Invoice | None:
    """``validate_invoice(fastavro.schemaless_reader(value, <invoice_event.avsc>))`` for
    a raw value that is one clean, valid InvoiceEvent; None for every other value,
    which the caller then reads and validates the general way (for the invoice, or for
    the exact error). ``read_invoice_source`` also says how to rebuild the value."""
    found = read_invoice_source(value, max_text_bytes=max_text_bytes, event_time=event_time)
    return None if found is None else found[0]


def read_invoice_source(
    value: bytes, *, max_text_bytes: int, event_time: datetime | None = None
) -> tuple[Invoice, SourceEncoding | None] | None:
    """``read_invoice``'s invoice, and how ``source_value_of`` rebuilds ``value`` from it:
    None when validation changed a field (stripped a text, upper-cased a currency,
    wrote an amount differently, dropped an empty optional text), so the bytes cannot
    be rebuilt and must be kept.

    fastavro interprets the schema for every record, and validation then checks each
    field's type and encodes each text again to measure it; this reads our eight fields
    straight from the bytes and checks each text while it is still UTF-8. Together that
    was half of the consumer's time per record. Only the clean case is read here: any
    doubt (a control character to replace, an amount or currency to reject, bytes left
    over, a union index that is not 0 or 1, a varint longer than it needs) sends the
    value the general way, so every error still comes from one place.
    """
    limit = max_text_bytes
    try:
        given_id, pos = _text_at(value, 0, limit)
        given_supplier, pos = _text_at(value, pos, limit)
        given_description, pos = _text_at(value, pos, limit)
        given_amount = given_currency = given_text = None
        invoice_date = own_time = None
        present, pos = _union(value, pos)
        if present:
            given_amount, pos = _text_at(value, pos, limit)
        present, pos = _union(value, pos)
        if present:
            given_currency, pos = _text_at(value, pos, limit)
        present, pos = _union(value, pos)
        if present:
            days, pos = _long(value, pos)
            invoice_date = date.fromordinal(_DATE_EPOCH + days)
        present, pos = _union(value, pos)
        if present:
            given_text, pos = _text_at(value, pos, limit)
        present, pos = _union(value, pos)
        if present:
            millis, pos = _long(value, pos)
            own_time = event_time_of(millis)
        if pos != len(value):
            return None
        # The rules of validate_invoice, in its order, for values that pass them.
        invoice_id = given_id.strip()
        if not invoice_id or len(invoice_id) > MAX_INVOICE_ID_CHARS:
            return None
        supplier, description = given_supplier.strip(), given_description.strip()
        raw_text = (given_text.strip() or None) if given_text is not None else None
        if not (supplier or description or raw_text):
            return None
        amount_text = given_amount.strip() if given_amount is not None else None
        amount = parse_amount(amount_text) if amount_text else None
        if amount is None and raw_text is None:
            return None
        currency = given_currency.strip().upper() if given_currency else None
        if currency:
            if currency not in ISO_4217:
                return None
        else:
            currency = None
        if amount is not None and currency is None:
            return None
        if invoice_date is not None and not 1990 <= invoice_date.year <= 2100:
            return None
    except (IndexError, ValueError, OverflowError, InvalidMessage):
        # _NotClean, UnicodeDecodeError and date's range errors are ValueErrors.
        return None
    # Positional: a frozen dataclass takes keywords at twice the cost.
    invoice = Invoice(
        invoice_id,
        supplier,
        description,
        amount,
        currency,
        invoice_date,
        raw_text,
        own_time or event_time,
    )
    # The value is what encode_invoice_event writes for this invoice when validation
    # left every field as it came (an unchanged strip() or upper() compares by identity).
    unchanged = (
        invoice_id == given_id
        and supplier == given_supplier
        and description == given_description
        and raw_text == given_text
        and currency == given_currency
        and (str(amount) == given_amount if amount is not None else given_amount is None)
    )
    if not unchanged:
        return invoice, None
    return invoice, "avro" if own_time is not None else "avro-untimed"


@cache
def _layout_schema() -> Any:
    """INVOICE_EVENT_LAYOUT as a schema: what read_invoice read, whatever the shipped
    schema becomes, so a stored row's record is rebuilt as it was read."""
    fields = [{"name": name, "type": kind} for name, kind in INVOICE_EVENT_LAYOUT]
    return fastavro.parse_schema({"type": "record", "name": "InvoiceEvent", "fields": fields})


def encode_invoice_event(invoice: Invoice, *, with_event_time: bool = True) -> bytes:
    """``invoice`` as raw Avro of INVOICE_EVENT_LAYOUT (with a null event_time when
    ``with_event_time`` is false)."""
    return _avro_bytes(
        _layout_schema(),
        {
            "invoice_id": invoice.invoice_id,
            "supplier": invoice.supplier,
            "description": invoice.description,
            "amount": None if invoice.amount is None else str(invoice.amount),
            "currency": invoice.currency,
            "invoice_date": invoice.invoice_date,
            "raw_text": invoice.raw_text,
            "event_time": invoice.event_time if with_event_time else None,
        },
    )


def source_value_of(invoice: Invoice, encoding: SourceEncoding) -> bytes:
    """The record value ``read_invoice_source`` read ``invoice`` from, with ``encoding``."""
    return encode_invoice_event(invoice, with_event_time=encoding == "avro")


def _layout(schema: Any) -> tuple[tuple[str, object], ...]:
    return tuple((field["name"], field["type"]) for field in schema["fields"])


# ------------------------------------------------------------------ schema registry


def registry_client(url: str, basic_auth_user_info: str | None = None) -> Any:
    """One client per registry and process: it caches schemas by id, and every
    ``mock://`` client is its own in-memory registry, so all codecs must share it."""
    return _registry_client(url, basic_auth_user_info or "")


@lru_cache(maxsize=8)
def _registry_client(url: str, basic_auth_user_info: str) -> Any:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    config: dict[str, str] = {"url": url}
    if basic_auth_user_info:
        config["basic.auth.credentials.source"] = "USER_INFO"
        config["basic.auth.user.info"] = basic_auth_user_info
    return SchemaRegistryClient.new_client(config)


class RegistryAvro:
    """Confluent wire format for one topic's values.

    Encoding goes through confluent-kafka's ``AvroSerializer``, which registers our
    schema under ``<topic>-value`` on first use (or, with auto-registration off,
    uses the subject's latest version). Decoding takes the writer schema by id from
    the registry client (cached by id after the first fetch) and resolves it against
    ours with fastavro, as ``AvroDeserializer`` does, but also rejects bytes left
    over after the record: ``AvroDeserializer`` ignores them, so a value framed with
    the wrong schema id would otherwise decode as silent garbage.
    """

    def __init__(
        self, client: Any, topic: str, name: SchemaName, *, auto_register: bool = True
    ) -> None:
        from confluent_kafka.schema_registry.avro import AvroSerializer
        from confluent_kafka.serialization import MessageField, SerializationContext

        self.client = client
        self.topic = topic
        self.reader = load_schema(name)
        self._serializer = AvroSerializer(
            client,
            schema_text(name),
            conf={"auto.register.schemas": auto_register, "use.latest.version": not auto_register},
        )
        self._context = SerializationContext(topic, MessageField.VALUE)
        self._writers: dict[int, Any] = {}

    def encode(self, record: Mapping[str, object]) -> bytes:
        try:
            value = self._serializer(dict(record), self._context)
        except Exception as exc:
            _raise_if_unreachable(exc)
            raise
        assert value is not None
        return bytes(value)

    def decode(self, value: bytes) -> dict[str, object]:
        (schema_id,) = struct.unpack(">I", value[1:CONFLUENT_HEADER])
        return _read_avro(self._writer(schema_id), value, self.reader, offset=CONFLUENT_HEADER)

    def _writer(self, schema_id: int) -> Any:
        writer = self._writers.get(schema_id)
        if writer is not None:
            return writer
        try:
            schema = self.client.get_schema(schema_id)
        except Exception as exc:
            _raise_if_unreachable(exc)
            if getattr(exc, "http_status_code", None) == 404:
                raise InvalidMessage(
                    "schema_mismatch", f"schema id {schema_id} is not in the registry"
                ) from None
            raise InvalidMessage(
                "schema_mismatch", f"schema id {schema_id}: {type(exc).__name__}"
            ) from None
        if schema.schema_type not in (None, "AVRO"):
            raise InvalidMessage(
                "schema_mismatch", f"schema id {schema_id} is {schema.schema_type}, not Avro"
            )
        try:
            writer = fastavro.parse_schema(json.loads(schema.schema_str))
        except Exception as exc:
            raise InvalidMessage(
                "schema_mismatch", f"schema id {schema_id} does not parse: {type(exc).__name__}"
            ) from None
        # Schemas under an id never change (the registry's contract), so this never goes
        # stale; its size is bounded by the schema versions producers actually use.
        self._writers[schema_id] = writer
        return writer


def _raise_if_unreachable(exc: Exception) -> None:
    """Registry outages are not the record's fault: raise RegistryUnavailable for them."""
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    if isinstance(exc, SchemaRegistryError):
        status = exc.http_status_code
        if status is not None and (status >= 500 or status in (401, 403, 408, 429) or status < 0):
            raise RegistryUnavailable(f"schema registry answered {status}") from None
    # The client's HTTP library (httpx, or its vendored httpx2) raises TransportError
    # subclasses for connection failures and timeouts; match by name, not by module.
    if isinstance(exc, OSError) or any(
        cls.__name__ == "TransportError" for cls in type(exc).__mro__
    ):
        raise RegistryUnavailable(f"schema registry unreachable: {type(exc).__name__}") from None


# ------------------------------------------------------------------ Avro of one schema


class AvroValues:
    """Avro values of one of our schemas, in every framing we accept (module doc)."""

    def __init__(
        self,
        name: SchemaName,
        *,
        registry: RegistryAvro | None = None,
        writer_schemas: Sequence[Any] = (),
    ) -> None:
        self.schema = load_schema(name)
        self.registry = registry
        self.writer_schemas = list(writer_schemas)
        known = [self.schema, *self.writer_schemas]
        self._by_fingerprint = {schema_fingerprint(s): s for s in known}

    def encode(self, record: Mapping[str, object]) -> bytes:
        if self.registry is not None:
            return self.registry.encode(record)
        return _avro_bytes(self.schema, record)

    def decode(self, value: bytes) -> dict[str, object]:
        if value[:1] == CONFLUENT_MAGIC and len(value) > CONFLUENT_HEADER:
            if self.registry is None:
                # Raw Avro starts with 0x00 too when invoice_id is empty: read it as
                # raw first, so such a record gets its real reason (missing_field).
                with contextlib.suppress(InvalidMessage):
                    return _read_avro(self.schema, value)
                schema_id = struct.unpack(">I", value[1:CONFLUENT_HEADER])[0]
                raise InvalidMessage(
                    "schema_mismatch",
                    f"framed for a schema registry (schema id {schema_id}) "
                    "but SCHEMA_REGISTRY_URL is not set",
                )
            return self.registry.decode(value)
        if value[:2] == SINGLE_OBJECT_MAGIC and len(value) >= SINGLE_OBJECT_HEADER:
            writer = self._by_fingerprint.get(value[2:SINGLE_OBJECT_HEADER])
            if writer is None:
                raise InvalidMessage(
                    "schema_mismatch",
                    f"unknown writer schema fingerprint {value[2:SINGLE_OBJECT_HEADER].hex()}; "
                    "list its .avsc in AVRO_WRITER_SCHEMAS",
                )
            return _read_avro(writer, value, self.schema, offset=SINGLE_OBJECT_HEADER)
        try:
            return _read_avro(self.schema, value)
        except InvalidMessage as first:
            # Only a value with bytes left over can be a newer writer's appended fields.
            if first.code != "schema_mismatch" or not self.writer_schemas:
                raise
            for writer in self.writer_schemas:
                try:
                    return _read_avro(writer, value, self.schema)
                except InvalidMessage:
                    continue
            raise


def load_writer_schemas(paths: str) -> list[Any]:
    """Parse the ``.avsc`` files of ``AVRO_WRITER_SCHEMAS`` (comma-separated paths)."""
    from invoice_batch.settings import ConfigError

    schemas = []
    for raw in paths.split(","):
        if not raw.strip():
            continue
        path = Path(raw.strip())
        try:
            schemas.append(fastavro.parse_schema(json.loads(path.read_text())))
        except (OSError, ValueError, fastavro.schema.SchemaParseException) as exc:
            raise ConfigError(f"AVRO_WRITER_SCHEMAS: {path}: {exc}") from None
    return schemas


# ------------------------------------------------------------------ the codecs


class InvoiceCodec:
    """InvoiceEvent bytes ⇄ Invoice. ``decode`` validates; ``encode`` is for producers."""

    def __init__(
        self,
        fmt: Format,
        *,
        max_text_bytes: int,
        registry: RegistryAvro | None = None,
        writer_schemas: Sequence[Any] = (),
    ) -> None:
        self.format = fmt
        self.max_text_bytes = max_text_bytes
        self._avro = AvroValues("invoice_event", registry=registry, writer_schemas=writer_schemas)
        self._schema = self._avro.schema
        # Raw values may be read directly: no registry framing is expected, and the
        # schema is the layout read_invoice knows.
        self._direct = (
            fmt == "avro"
            and registry is None
            and _layout(json.loads(schema_text("invoice_event"))) == INVOICE_EVENT_LAYOUT
        )

    @property
    def reads_raw_directly(self) -> bool:
        """Whether raw Avro values are read by ``read_invoice_source`` before the general
        way (Avro without a registry, and the shipped schema is INVOICE_EVENT_LAYOUT)."""
        return self._direct

    def decode(self, value: bytes | None, *, timestamp: datetime | None = None) -> Invoice:
        return self.decode_source(value, timestamp=timestamp)[0]

    def decode_source(
        self, value: bytes | None, *, timestamp: datetime | None = None
    ) -> tuple[Invoice, SourceEncoding | None]:
        """``decode``, and how ``source_value_of`` rebuilds ``value`` from the invoice
        (None: only a copy of the value keeps it)."""
        if not value:
            raise InvalidMessage("empty_record", "the record value is empty")
        # A value far over every text cap is rejected before parsing it.
        if len(value) > 4 * self.max_text_bytes + 4096:
            raise InvalidMessage("text_too_large", f"the record is {len(value)} bytes")
        # 00 and C3 01 start framed values (module doc); raw ones are read directly,
        # and the general way only when that cannot take them.
        if self._direct and value[0] != 0 and value[:2] != SINGLE_OBJECT_MAGIC:
            found = read_invoice_source(
                value, max_text_bytes=self.max_text_bytes, event_time=timestamp
            )
            if found is not None:
                return found
        record = self._avro.decode(value) if self.format == "avro" else _read_json(value)
        invoice = validate_invoice(record, max_text_bytes=self.max_text_bytes, event_time=timestamp)
        return invoice, None

    def encode(self, record: Mapping[str, object]) -> bytes:
        """Encode an InvoiceEvent given as a JSON-style mapping (amount a decimal string)."""
        if self.format == "json":
            return json.dumps(dict(record), default=_json_default).encode()
        fields = dict(record)
        if isinstance(fields.get("amount"), Decimal | int | float):
            fields["amount"] = str(fields["amount"])
        if isinstance(fields.get("invoice_date"), str) and fields["invoice_date"]:
            fields["invoice_date"] = date.fromisoformat(str(fields["invoice_date"]))
        if isinstance(fields.get("event_time"), str) and fields["event_time"]:
            fields["event_time"] = datetime.fromisoformat(str(fields["event_time"]))
        for name in ("supplier", "description"):
            fields.setdefault(name, "")
        return self._avro.encode(fields)

    def encode_invoice(self, invoice: Invoice) -> bytes:
        return self.encode(invoice.to_json_dict())


class ClassifiedCodec:
    """ClassifiedInvoice records ⇄ bytes on the output topic."""

    def __init__(self, fmt: Format, *, registry: RegistryAvro | None = None) -> None:
        self.format = fmt
        self._avro = AvroValues("classified_invoice", registry=registry)
        self._schema = self._avro.schema

    def encode(self, record: Mapping[str, object]) -> bytes:
        if self.format == "json":
            return json.dumps(dict(record), default=_json_default, separators=(",", ":")).encode()
        return self._avro.encode(record)

    def decode(self, value: bytes) -> dict[str, object]:
        if self.format == "json":
            return _read_json(value)
        record = self._avro.decode(value)
        classified_at = record.get("classified_at")
        if isinstance(classified_at, datetime) and classified_at.tzinfo is None:
            record["classified_at"] = classified_at.replace(tzinfo=UTC)
        return record


# ------------------------------------------------------------------ wiring


def registry_for(settings: Settings, topic: str, name: SchemaName) -> RegistryAvro | None:
    """The registry framing for ``topic``'s values, or None without SCHEMA_REGISTRY_URL."""
    if not settings.schema_registry_url:
        return None
    auth = settings.schema_registry_basic_auth_user_info
    client = registry_client(
        settings.schema_registry_url, auth.get_secret_value() if auth else None
    )
    return RegistryAvro(client, topic, name, auto_register=settings.schema_registry_auto_register)


def invoice_codec_for(settings: Settings, topic: str | None = None) -> InvoiceCodec:
    """The codec of InvoiceEvent values on ``topic`` (default INPUT_TOPIC), as configured."""
    topic = topic or settings.input_topic
    avro = settings.input_format == "avro"
    return InvoiceCodec(
        settings.input_format,
        max_text_bytes=settings.max_text_bytes,
        registry=registry_for(settings, topic, "invoice_event") if avro else None,
        writer_schemas=load_writer_schemas(settings.avro_writer_schemas) if avro else (),
    )


def classified_codec_for(settings: Settings, topic: str | None = None) -> ClassifiedCodec:
    """The codec of ClassifiedInvoice values on ``topic`` (default OUTPUT_TOPIC)."""
    topic = topic or settings.output_topic
    avro = settings.output_format == "avro"
    return ClassifiedCodec(
        settings.output_format,
        registry=registry_for(settings, topic, "classified_invoice") if avro else None,
    )

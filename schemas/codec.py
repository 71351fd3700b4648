"""Bytes on the topics ⇄ records: raw (schemaless) Avro with the schemas in this folder, or JSON.

Decoding never raises anything but ``InvalidMessage``: fastavro alone raises
EOFError, UnicodeDecodeError, IndexError, ValueError, OverflowError and more on
bad bytes, and a poison record must reach the DLQ, not stop the consumer.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import cache
from importlib import resources
from typing import Any, Literal

import fastavro

from invoice_batch.invoices import InvalidMessage, Invoice, validate_invoice

Format = Literal["avro", "json"]


@cache
def load_schema(name: Literal["invoice_event", "classified_invoice"]) -> Any:
    """The parsed Avro schema shipped in this package (``invoice_event.avsc``…)."""
    text = resources.files(__package__).joinpath(f"{name}.avsc").read_text()
    return fastavro.parse_schema(json.loads(text))


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


def _read_avro(schema: Any, value: bytes) -> dict[str, object]:
    buffer = io.BytesIO(value)
    try:
        record = fastavro.schemaless_reader(buffer, schema, None)
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


class InvoiceCodec:
    """InvoiceEvent bytes ⇄ Invoice. ``decode`` validates; ``encode`` is for producers."""

    def __init__(self, fmt: Format, *, max_text_bytes: int) -> None:
        self.format = fmt
        self.max_text_bytes = max_text_bytes
        self._schema = load_schema("invoice_event")

    def decode(self, value: bytes | None, *, timestamp: datetime | None = None) -> Invoice:
        if not value:
            raise InvalidMessage("empty_record", "the record value is empty")
        # A value far over every text cap is rejected before parsing it.
        if len(value) > 4 * self.max_text_bytes + 4096:
            raise InvalidMessage("text_too_large", f"the record is {len(value)} bytes")
        record = _read_avro(self._schema, value) if self.format == "avro" else _read_json(value)
        return validate_invoice(record, max_text_bytes=self.max_text_bytes, event_time=timestamp)

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
        return _avro_bytes(self._schema, fields)

    def encode_invoice(self, invoice: Invoice) -> bytes:
        return self.encode(invoice.to_json_dict())


class ClassifiedCodec:
    """ClassifiedInvoice records ⇄ bytes on the output topic."""

    def __init__(self, fmt: Format) -> None:
        self.format = fmt
        self._schema = load_schema("classified_invoice")

    def encode(self, record: Mapping[str, object]) -> bytes:
        if self.format == "json":
            return json.dumps(dict(record), default=_json_default, separators=(",", ":")).encode()
        return _avro_bytes(self._schema, record)

    def decode(self, value: bytes) -> dict[str, object]:
        if self.format == "json":
            return _read_json(value)
        record = _read_avro(self._schema, value)
        classified_at = record.get("classified_at")
        if isinstance(classified_at, datetime) and classified_at.tzinfo is None:
            record["classified_at"] = classified_at.replace(tzinfo=UTC)
        return record

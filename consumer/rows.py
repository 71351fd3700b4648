"""Step 1 of the consume protocol, a poll at a time: each record's store row, or its error.

Two paths give the same rows. The Python one (``python_row``) takes every record:
the codec decodes and validates it, and the invoice gives its stored forms and its
request size bound. The compiled one (``compiled``, ``invoice_batch/_avro_rows.c``)
takes a whole poll at once and gives a row for each clean raw Avro value whose every
field validation keeps as it came, nearly every record, at a fraction of the cost;
it leaves every other record (None) to the Python path, which gives its row or its
error, so every error still comes from one place. Property tests hold the compiled
rows to the Python ones byte for byte (tests/unit/test_avro_rows.py).

For PostgreSQL the compiled path writes a poll as binary COPY data instead
(``copy``), which the store's writer thread sends as it is: no row objects are built,
nor formatted again for the COPY while holding the interpreter lock. A poll it cannot
take whole goes through ``compiled`` and ``python_row``.

Without a C compiler or OpenSSL's headers at install time there is no compiled
path (``COMPILED`` is false) and every record takes the Python one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from json.encoder import encode_basestring_ascii
from typing import TYPE_CHECKING

from confluent_kafka import Message
from invoice_batch.schemas.codec import InvoiceCodec, event_time_of

from invoice_batch.batch_requests import request_fixed_size, request_size_bound
from invoice_batch.invoices import ISO_4217
from invoice_batch.store.repository import PG_EPOCH, PendingRow

if TYPE_CHECKING:
    from invoice_batch._avro_rows import Rows

_CompiledRows: type[Rows] | None
try:
    from invoice_batch._avro_rows import Rows as _CompiledRows
except ImportError:  # not built: no C compiler or OpenSSL headers
    _CompiledRows = None

COMPILED = _CompiledRows is not None


def _pg_micros(at: datetime) -> int:
    """A timestamptz in binary COPY: microseconds since 2000-01-01 UTC."""
    return (at - PG_EPOCH) // timedelta(microseconds=1)


class PollRows:
    """A consumer's step 1: ``start`` at every poll, then ``compiled`` for the whole
    poll and ``python_row`` for a record. One per consumer: the compiled path keeps
    its buffers (a poll's COPY data is megabytes) from one poll to the next."""

    def __init__(
        self,
        codec: InvoiceCodec,
        to_db: Callable[[datetime | None], object],
        *,
        model: str,
        max_tokens: int,
        pg_copy: bool = False,
    ) -> None:
        self.codec = codec
        self.to_db = to_db
        self.model = model
        self.max_tokens = max_tokens
        self.received_at: object = None
        self._pg_copy = pg_copy
        # Records produced together share their millisecond timestamps: each distinct
        # one is converted once a poll (by each path, in its own form).
        self._times: dict[int, tuple[datetime, object]] = {}
        self._compiled = (
            _CompiledRows(
                max_text_bytes=codec.max_text_bytes,
                fixed_size=request_fixed_size(model, max_tokens),
                time_forms=self._time_forms,
                currencies=ISO_4217,
            )
            if _CompiledRows is not None and codec.reads_raw_directly
            else None
        )

    def start(self, received_at: datetime) -> None:
        """Begin a poll whose rows are received at ``received_at``."""
        self.received_at = self.to_db(received_at)
        self._times.clear()
        if self._compiled is not None:
            self._compiled.start(self.received_at, _pg_micros(received_at))

    def _time_forms(self, milliseconds: int) -> tuple[str, object]:
        at = event_time_of(milliseconds)
        return encode_basestring_ascii(at.isoformat()), self.to_db(at)

    def _time(self, milliseconds: int) -> tuple[datetime, object]:
        found = self._times.get(milliseconds)
        if found is None:
            at = event_time_of(milliseconds)
            found = self._times[milliseconds] = (at, self.to_db(at))
        return found

    def compiled(self, messages: Sequence[Message]) -> list[PendingRow | None] | None:
        """Each record's row, or None where ``python_row`` must take it; None for the
        whole poll when there is no compiled path (or it cannot read this codec's values)."""
        return None if self._compiled is None else self._compiled.rows(messages)

    def copy(self, messages: Sequence[Message]) -> bytes | None:
        """The poll's rows as PostgreSQL's binary COPY data alone, without the rows
        (``Store.add_pending_copy``), when the compiled path takes every record and no
        pair repeats within the poll; None otherwise, and always unless ``pg_copy``
        was asked for: ``compiled`` and ``python_row`` then take the poll."""
        if self._compiled is None or not self._pg_copy:
            return None
        return self._compiled.copy(messages)

    def flat(self, messages: Sequence[Message]) -> list[object] | None:
        """The poll's rows as one list of their values, row after row
        (``Store.add_pending_flat``), when the compiled path takes every record and no
        pair repeats within the poll; None otherwise, and always when ``pg_copy`` was
        asked for (``copy`` is for that store). No row tuple is built, and the store's
        writer has none to take apart."""
        if self._compiled is None or self._pg_copy:
            return None
        return self._compiled.flat(messages)

    def python_row(self, message: Message) -> PendingRow:
        """The record's row; InvalidMessage when it is not a valid invoice."""
        value = message.value()
        timestamp_ms = message.timestamp()[1]
        kafka_time, kafka_time_db = self._time(timestamp_ms) if timestamp_ms > 0 else (None, None)
        invoice, encoding = self.codec.decode_source(value, timestamp=kafka_time)
        payload, content_hash, raw_text_json_len = invoice.row_forms()
        own_time = invoice.event_time
        return (
            invoice.invoice_id,
            content_hash,
            payload,
            request_size_bound(
                invoice,
                model=self.model,
                max_tokens=self.max_tokens,
                raw_text_json_len=raw_text_json_len,
            ),
            self.received_at,
            kafka_time_db if own_time is kafka_time else self.to_db(own_time),
            message.topic(),
            message.partition(),
            message.offset(),
            message.key(),
            # A value rebuilt from the payload is not stored a second time.
            None if encoding else value,
            encoding,
        )

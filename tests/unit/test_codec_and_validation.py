import json
from decimal import Decimal

import pytest
from invoice_batch.schemas.codec import ClassifiedCodec, InvoiceCodec

from invoice_batch.invoices import InvalidMessage

GOOD = {
    "invoice_id": "INV-1",
    "supplier": "AWS",
    "description": "cloud",
    "amount": "124500.50",
    "currency": "INR",
    "invoice_date": "2026-11-02",
}


@pytest.mark.parametrize("fmt", ["avro", "json"])
def test_a_valid_invoice_round_trips(fmt: str) -> None:
    codec = InvoiceCodec(fmt, max_text_bytes=1000)  # type: ignore[arg-type]
    invoice = codec.decode(codec.encode(GOOD))
    assert (
        invoice.invoice_id == "INV-1"
        and invoice.amount == Decimal("124500.50")
        and invoice.currency == "INR"
    )


def code_of(codec: InvoiceCodec, value: bytes | None) -> str:
    with pytest.raises(InvalidMessage) as caught:
        codec.decode(value)
    assert "\n" not in caught.value.reason
    return caught.value.code


@pytest.mark.parametrize(
    ("record", "code"),
    [
        ({**GOOD, "invoice_id": ""}, "missing_field"),
        ({k: v for k, v in GOOD.items() if k != "invoice_id"}, "missing_field"),
        ({**GOOD, "amount": "-5"}, "negative_amount"),
        ({**GOOD, "amount": "ten"}, "invalid_amount"),
        ({**GOOD, "amount": "NaN"}, "invalid_amount"),
        ({**GOOD, "amount": "1e20"}, "amount_out_of_range"),
        ({**GOOD, "currency": "XXX1"}, "unknown_currency"),
        ({**GOOD, "currency": "ABC"}, "unknown_currency"),
        ({**GOOD, "description": "x" * 2000}, "text_too_large"),
        ({**GOOD, "invoice_date": "yesterday"}, "invalid_date"),
        ({**GOOD, "amount": None, "raw_text": None}, "missing_field"),
    ],
)
def test_bad_json_records_get_their_code(record: dict[str, object], code: str) -> None:
    codec = InvoiceCodec("json", max_text_bytes=1000)
    assert code_of(codec, json.dumps(record).encode()) == code


def test_bytes_that_are_not_a_record_are_malformed_or_empty() -> None:
    json_codec = InvoiceCodec("json", max_text_bytes=1000)
    avro_codec = InvoiceCodec("avro", max_text_bytes=1000)
    assert code_of(json_codec, b"") == "empty_record"
    assert code_of(json_codec, None) == "empty_record"
    assert code_of(json_codec, b"{not json") == "malformed"
    assert code_of(json_codec, b"\xff\xfe\x00") == "malformed"
    assert code_of(json_codec, b"[1, 2]") == "schema_mismatch"
    assert code_of(json_codec, b"{}") == "empty_record"
    assert code_of(avro_codec, b"\x02") == "malformed"
    assert code_of(avro_codec, avro_codec.encode(GOOD)[:-3]) == "malformed"
    assert code_of(avro_codec, avro_codec.encode(GOOD) + b"\x00\x00") == "schema_mismatch"


def test_amount_may_be_missing_when_raw_text_carries_it() -> None:
    codec = InvoiceCodec("avro", max_text_bytes=1000)
    invoice = codec.decode(
        codec.encode({"invoice_id": "INV-9", "raw_text": "Total due: Rs 12,500", "currency": None})
    )
    assert invoice.amount is None and invoice.raw_text == "Total due: Rs 12,500"


@pytest.mark.parametrize("fmt", ["avro", "json"])
def test_classified_records_round_trip(fmt: str) -> None:
    from datetime import UTC, datetime

    codec = ClassifiedCodec(fmt)  # type: ignore[arg-type]
    record = {
        "event_id": "e",
        "invoice_id": "INV-1",
        "department": "IT",
        "amount": "1.5",
        "currency": "USD",
        "summary": "s",
        "approval_required": True,
        "approval_reasons": ["r"],
        "model": "m",
        "batch_id": "b",
        "classified_at": datetime(2026, 11, 27, 1, 2, 3, tzinfo=UTC),
    }
    decoded = codec.decode(codec.encode(record))
    assert decoded["invoice_id"] == "INV-1" and decoded["approval_reasons"] == ["r"]

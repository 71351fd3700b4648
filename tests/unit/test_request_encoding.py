"""The flusher's fast request encoding is byte for byte what json.dumps writes."""

import json
from datetime import date, datetime
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from invoice_batch.batch_requests import (
    _CUSTOM_ID_MAX,
    build_request,
    encode_request,
    encode_request_bytes,
    encode_request_from_payload,
    request_size,
    request_size_bound,
)
from invoice_batch.invoices import Invoice

texts = st.text(max_size=300)


@given(
    invoice_id=st.text(min_size=1, max_size=40),
    supplier=texts,
    description=texts,
    raw_text=st.none() | texts,
    amount=st.none() | st.decimals(min_value=0, max_value=10**9, places=2),
    model=st.sampled_from(["claude-haiku-4-5", "claude-sonnet-4-5"]),
    max_tokens=st.integers(min_value=1, max_value=128_000),
    row=st.integers(min_value=1, max_value=10**18),
)
def test_encoded_request_and_size_bound_equal_the_dict_path(
    invoice_id: str,
    supplier: str,
    description: str,
    raw_text: str | None,
    amount: Decimal | None,
    model: str,
    max_tokens: int,
    row: int,
) -> None:
    invoice = Invoice(invoice_id, supplier, description, amount, "INR", date(2026, 1, 2), raw_text)
    custom_id = f"i{row}-a1"
    built = build_request(invoice, custom_id=custom_id, model=model, max_tokens=max_tokens)
    assert encode_request(
        invoice, custom_id=custom_id, model=model, max_tokens=max_tokens
    ) == json.dumps(built)
    assert encode_request_bytes(
        invoice, custom_id=custom_id, model=model, max_tokens=max_tokens
    ) == json.dumps(built).encode("ascii")
    longest = build_request(invoice, custom_id=_CUSTOM_ID_MAX, model=model, max_tokens=max_tokens)
    assert request_size_bound(invoice, model=model, max_tokens=max_tokens) == request_size(longest)
    assert request_size(built) <= request_size(longest)


def _decoded(payload: str, custom_id: str, model: str, max_tokens: int) -> bytes:
    invoice = Invoice.from_json_dict(json.loads(payload))
    return encode_request_bytes(invoice, custom_id=custom_id, model=model, max_tokens=max_tokens)


@given(
    invoice_id=st.text(min_size=1, max_size=40),
    supplier=texts,
    description=texts,
    raw_text=st.none() | texts,
    amount=st.none() | st.decimals(allow_nan=False, allow_infinity=False, places=2),
    currency=st.none() | st.sampled_from(["INR", "", "US D", "EUR ", "E\nR", "\u20ac"]),
    invoice_date=st.none() | st.dates(),
    event_time=st.none() | st.datetimes(),
    row=st.integers(min_value=1, max_value=10**18),
)
def test_the_request_spliced_from_a_stored_payload_equals_the_decoded_one(
    invoice_id: str,
    supplier: str,
    description: str,
    raw_text: str | None,
    amount: Decimal | None,
    currency: str | None,
    invoice_date: date | None,
    event_time: datetime | None,
    row: int,
) -> None:
    invoice = Invoice(
        invoice_id, supplier, description, amount, currency, invoice_date, raw_text, event_time
    )
    payload = invoice.stored_forms()[0]
    custom_id = f"i{row}-a2"
    spliced = encode_request_from_payload(
        payload, custom_id=custom_id, model="claude-haiku-4-5", max_tokens=1024
    )
    assert spliced == _decoded(payload, custom_id, "claude-haiku-4-5", 1024)
    # Other writers of the same JSON: spaced, unescaped non-ASCII, a numeric amount.
    data = json.loads(payload)
    others = [
        json.dumps(data),
        json.dumps(data, ensure_ascii=False),
        json.dumps({**data, "extra": "x"}, separators=(",", ":")),
        json.dumps(dict(reversed(list(data.items()))), separators=(",", ":")),
    ]
    if amount is not None:
        others.append(json.dumps({**data, "amount": float(amount)}, separators=(",", ":")))
    for other in others:
        assert encode_request_from_payload(
            other, custom_id=custom_id, model="claude-haiku-4-5", max_tokens=1024
        ) == _decoded(other, custom_id, "claude-haiku-4-5", 1024)


def test_a_payload_of_another_layout_is_decoded_not_spliced() -> None:
    # A key the splice does not know between two it does: the supplier's text would
    # otherwise run on into it.
    payload = (
        '{"invoice_id":"A","supplier":"S","note":"x","description":"D","amount":null,'
        '"currency":null,"invoice_date":null,"raw_text":null,"event_time":null}'
    )
    spliced = encode_request_from_payload(payload, custom_id="i1-a1", model="m", max_tokens=5)
    assert spliced == _decoded(payload, "i1-a1", "m", 5)
    assert b'"Invoice ID: A\\nSupplier: S\\nDescription: D"' in spliced

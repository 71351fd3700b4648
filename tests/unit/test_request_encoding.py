"""The flusher's fast request encoding is byte for byte what json.dumps writes."""

import json
from datetime import date
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from invoice_batch.batch_requests import (
    _CUSTOM_ID_MAX,
    build_request,
    encode_request,
    encode_request_bytes,
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

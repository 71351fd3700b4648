"""The consumer's one-pass JSON forms and the collector's written-out event id are
byte for byte what json.dumps and uuid.uuid5 write.

Stored content hashes are compared with new ones to deduplicate, so the hashed text
must never change: a replay of an invoice stored before an upgrade must still match.
"""

import hashlib
import json
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from invoice_batch.batch_requests import build_request, request_size, request_size_bound
from invoice_batch.invoices import Invoice
from invoice_batch.results import EVENT_ID_NAMESPACE, event_id_from

texts = st.text(max_size=300)


@given(
    invoice_id=st.text(min_size=1, max_size=40),
    supplier=texts,
    description=texts,
    raw_text=st.none() | texts,
    amount=st.none() | st.decimals(min_value=0, max_value=10**12, places=4),
    currency=st.none() | st.sampled_from(["INR", "USD"]),
    invoice_date=st.none() | st.dates(),
    event_time=st.none() | st.datetimes(timezones=st.just(UTC)),
)
def test_stored_forms_equal_json_dumps_of_the_dicts(
    invoice_id: str,
    supplier: str,
    description: str,
    raw_text: str | None,
    amount: Decimal | None,
    currency: str | None,
    invoice_date: date | None,
    event_time: datetime | None,
) -> None:
    invoice = Invoice(
        invoice_id, supplier, description, amount, currency, invoice_date, raw_text, event_time
    )
    payload, content_hash = invoice.stored_forms()
    assert payload == json.dumps(invoice.to_json_dict(), separators=(",", ":"))
    content = invoice.to_json_dict()
    del content["event_time"]
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    assert content_hash == hashlib.sha256(canonical.encode()).hexdigest()
    assert invoice.content_hash() == content_hash


def test_the_content_hash_of_a_known_invoice_never_changes() -> None:
    invoice = Invoice(
        "INV-001", "AWS", "cloud", Decimal("124500.00"), "INR", date(2026, 1, 5), "Total: 124500"
    )
    # Written by the version that hashed json.dumps(..., sort_keys=True) itself.
    assert invoice.content_hash() == (
        "08d36ac1f86680b32a9ed1be781e7fc6acebe94a203472acd2160c636518ad5e"
    )


@given(invoice_id=st.text(min_size=1, max_size=40), content_hash=st.text(max_size=64))
def test_the_written_out_event_id_is_the_uuid5_of_invoice_id_and_content_hash(
    invoice_id: str, content_hash: str
) -> None:
    expected = uuid.uuid5(EVENT_ID_NAMESPACE, f"{invoice_id}\x00{content_hash}")
    assert event_id_from(invoice_id, content_hash) == str(expected)


@given(
    invoice_id=st.text(min_size=1, max_size=40),
    supplier=texts,
    description=texts,
    raw_text=st.none() | st.text(max_size=2000),
    amount=st.none() | st.decimals(min_value=0, max_value=10**12, places=4),
    currency=st.none() | st.sampled_from(["INR", "USD"]),
    invoice_date=st.none() | st.dates(),
)
def test_the_size_bound_from_row_forms_equals_the_one_from_the_prompt(
    invoice_id: str,
    supplier: str,
    description: str,
    raw_text: str | None,
    amount: Decimal | None,
    currency: str | None,
    invoice_date: date | None,
) -> None:
    invoice = Invoice(invoice_id, supplier, description, amount, currency, invoice_date, raw_text)
    payload, content_hash, raw_text_json_len = invoice.row_forms()
    assert (payload, content_hash) == invoice.stored_forms()
    assert raw_text_json_len == (0 if raw_text is None else len(json.dumps(raw_text)))
    bound = request_size_bound(invoice, model="claude-haiku-4-5", max_tokens=1024)
    assert bound == request_size_bound(
        invoice, model="claude-haiku-4-5", max_tokens=1024, raw_text_json_len=raw_text_json_len
    )
    request = build_request(
        invoice, custom_id="i9999999999999999999-a999", model="claude-haiku-4-5", max_tokens=1024
    )
    assert bound == request_size(request)

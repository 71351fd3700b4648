from datetime import UTC, date, datetime
from decimal import Decimal

from invoice_batch.approval import decide_approval
from invoice_batch.invoices import Invoice
from invoice_batch.pricing import Usage, cost_usd, price_for
from invoice_batch.results import (
    Canceled,
    Classified,
    Errored,
    Expired,
    Reject,
    Retry,
    Succeeded,
    classified_record,
    decide_outcome,
    event_id_for,
)

THRESHOLDS = {"INR": Decimal("200000"), "USD": Decimal("2500")}
GOOD_INPUT = {
    "department": "Admin",
    "amount": 285000,
    "currency": "INR",
    "summary": "Hotel conference offsite room",
    "needs_review": False,
    "reason": "",
}
USAGE = Usage(1000, 80, 0, 0)


def test_a_succeeded_result_with_valid_tool_input_is_classified() -> None:
    outcome = decide_outcome(Succeeded(GOOD_INPUT, "claude-haiku-4-5", USAGE))
    assert isinstance(outcome, Classified)
    assert outcome.classification.department == "Admin"
    assert outcome.classification.amount == Decimal("285000")


def test_tool_input_that_breaks_the_schema_is_a_retry_not_a_crash() -> None:
    for bad in (
        {**GOOD_INPUT, "department": "Space"},
        {**GOOD_INPUT, "amount": "abc"},
        {**GOOD_INPUT, "summary": ""},
        {**GOOD_INPUT, "needs_review": "yes"},
        None,
        "text",
        {**GOOD_INPUT, "amount": -5},
    ):
        outcome = decide_outcome(Succeeded(bad, "claude-haiku-4-5", USAGE))
        assert isinstance(outcome, Retry) and outcome.reason == "errored"
        assert outcome.usage == USAGE  # billed all the same


def test_errored_results_retry_server_errors_and_reject_invalid_requests() -> None:
    assert isinstance(decide_outcome(Errored("api_error", "boom")), Retry)
    assert isinstance(decide_outcome(Errored("overloaded_error", "busy")), Retry)
    rejected = decide_outcome(Errored("invalid_request_error", "max_tokens: too large"))
    assert isinstance(rejected, Reject) and "invalid_request_error" in rejected.detail


def test_canceled_and_expired_requests_are_retried_with_their_reason() -> None:
    assert decide_outcome(Canceled()) == Retry(
        "canceled", "the batch was canceled before this request ran"
    )
    outcome = decide_outcome(Expired())
    assert isinstance(outcome, Retry) and outcome.reason == "expired"


def test_amount_at_the_threshold_needs_approval_with_the_reason_in_words() -> None:
    decision = decide_approval(
        amount=Decimal("200000"),
        currency="INR",
        needs_review=False,
        review_reason="",
        thresholds=THRESHOLDS,
    )
    assert decision.required
    assert decision.reasons == ("amount 200000 INR reaches the approval threshold of 200000 INR",)
    below = decide_approval(
        amount=Decimal("199999.99"),
        currency="INR",
        needs_review=False,
        review_reason="",
        thresholds=THRESHOLDS,
    )
    assert not below.required and below.reasons == ()


def test_model_flag_unknown_currency_and_unknown_amount_each_add_a_reason() -> None:
    flagged = decide_approval(
        amount=Decimal("10"),
        currency="USD",
        needs_review=True,
        review_reason="looks like a duplicate",
        thresholds=THRESHOLDS,
    )
    assert flagged.reasons == ("flagged for review: looks like a duplicate",)
    assert decide_approval(
        amount=Decimal("10"),
        currency="JPY",
        needs_review=False,
        review_reason="",
        thresholds=THRESHOLDS,
    ).reasons == ("no approval threshold is configured for JPY",)
    assert decide_approval(
        amount=None, currency=None, needs_review=False, review_reason="", thresholds=THRESHOLDS
    ).reasons == ("the amount could not be determined",)


def test_model_amount_far_from_the_upstream_amount_needs_approval() -> None:
    decision = decide_approval(
        amount=Decimal("1000"),
        currency="USD",
        needs_review=False,
        review_reason="",
        thresholds=THRESHOLDS,
        model_amount=Decimal("1100"),
    )
    assert decision.required and "1100" in decision.reasons[0]
    close = decide_approval(
        amount=Decimal("1000"),
        currency="USD",
        needs_review=False,
        review_reason="",
        thresholds=THRESHOLDS,
        model_amount=Decimal("1005"),
    )
    assert not close.required


def test_classified_record_keeps_upstream_amount_and_a_stable_event_id() -> None:
    invoice = Invoice("INV-003", "Taj", "Hotel", Decimal("285000"), "INR", date(2026, 11, 5), None)
    outcome = decide_outcome(Succeeded({**GOOD_INPUT, "amount": 1}, "claude-haiku-4-5", USAGE))
    assert isinstance(outcome, Classified)
    approval = decide_approval(
        amount=invoice.amount,
        currency="INR",
        needs_review=False,
        review_reason="",
        thresholds=THRESHOLDS,
    )
    now = datetime(2026, 11, 27, tzinfo=UTC)
    record = classified_record(
        invoice=invoice,
        classification=outcome.classification,
        approval=approval,
        model="claude-haiku-4-5",
        batch_id="msgbatch_x",
        classified_at=now,
    )
    assert record["amount"] == "285000" and record["currency"] == "INR"
    assert record["approval_required"] is True
    assert (
        record["event_id"]
        == event_id_for(invoice)
        == event_id_for(
            Invoice("INV-003", "Taj", "Hotel", Decimal("285000"), "INR", date(2026, 11, 5), None)
        )
    )
    changed = Invoice("INV-003", "Taj", "Hotel", Decimal("285001"), "INR", date(2026, 11, 5), None)
    assert event_id_for(changed) != record["event_id"]


def test_cost_uses_batch_prices_half_of_list() -> None:
    price = price_for("claude-haiku-4-5-20251001")
    assert price is not None
    usage = Usage(
        input_tokens=1_000_000,
        output_tokens=1_000_000,
        cache_read_tokens=1_000_000,
        cache_creation_tokens=1_000_000,
    )
    assert cost_usd(usage, price, batch=False) == Decimal("7.35")
    assert cost_usd(usage, price) == Decimal("3.675")
    assert price_for("unknown-model") is None

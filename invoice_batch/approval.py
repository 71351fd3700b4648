"""Whether a manager must approve an invoice, and why in words. Pure code."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

# A model reading of the amount that differs from the upstream amount by more than
# this share is worth a human look (1 %: rounding and tax lines stay under it).
AMOUNT_MISMATCH_SHARE = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class ApprovalDecision:
    required: bool
    reasons: tuple[str, ...]


def _money(amount: Decimal, currency: str) -> str:
    return f"{amount.normalize():f} {currency}"


def decide_approval(
    *,
    amount: Decimal | None,
    currency: str | None,
    needs_review: bool,
    review_reason: str,
    thresholds: Mapping[str, Decimal],
    model_amount: Decimal | None = None,
) -> ApprovalDecision:
    """Approval is required when any rule below holds; each adds its reason.

    1. The amount reaches the threshold for its currency (APPROVAL_THRESHOLDS).
    2. The currency has no threshold configured: nobody decided what is small there.
    3. The amount is unknown (neither upstream nor the model could read it).
    4. The model flagged the invoice (needs_review), with the model's reason.
    5. The model read an amount that differs from the upstream one by more than 1 %.
    """
    reasons: list[str] = []
    if amount is None or currency is None:
        reasons.append("the amount could not be determined")
    elif currency not in thresholds:
        reasons.append(f"no approval threshold is configured for {currency}")
    elif amount >= thresholds[currency]:
        reasons.append(
            f"amount {_money(amount, currency)} reaches the approval threshold of "
            f"{_money(thresholds[currency], currency)}"
        )
    if needs_review:
        reason = " ".join(review_reason.split())[:200] or "no reason given"
        reasons.append(f"flagged for review: {reason}")
    if (
        amount is not None
        and model_amount is not None
        and amount > 0
        and abs(model_amount - amount) / amount > AMOUNT_MISMATCH_SHARE
    ):
        reasons.append(
            f"the invoice text reads {model_amount.normalize():f}, "
            f"the upstream amount is {amount.normalize():f}"
        )
    return ApprovalDecision(required=bool(reasons), reasons=tuple(reasons))

"""Deterministic invoices with realistic text: 1–2 KB of raw_text each."""

from __future__ import annotations

import random
from datetime import date, timedelta
from typing import Any

SUPPLIERS = (
    ("Amazon Web Services India Pvt Ltd", "AWS cloud infrastructure, EC2 and S3 usage", "IT"),
    ("Naukri Recruitment Solutions", "Job posting on recruitment platform", "HR"),
    ("Taj Hotels Palace Conference Centre", "Hotel rooms and conference hall for offsite", "Admin"),
    ("Adobe Systems Software Ireland", "Adobe design software licence, Creative Cloud", "Mkt"),
    ("Ernst & Young LLP", "Consulting on risk assessment and internal audit", "Finance"),
    ("Khaitan & Co Advocates", "Legal opinion on supplier contract", "Legal"),
    ("Sodexo Facilities Management", "Office cleaning and maintenance for March", "Facilities"),
    ("Dell Technologies India", "Laptops for new engineering hires", "IT"),
    ("Google Ads India", "Search advertising campaign, brand awareness", "Marketing"),
    ("Blue Dart Express", "Courier and logistics for sales samples", "Operations"),
)
CURRENCIES = ("INR", "INR", "INR", "USD", "EUR", "GBP")
WORDS = (
    "service",
    "period",
    "line",
    "item",
    "quantity",
    "unit",
    "rate",
    "tax",
    "GST",
    "IGST",
    "CGST",
    "SGST",
    "HSN",
    "SAC",
    "code",
    "payment",
    "terms",
    "net",
    "thirty",
    "days",
    "bank",
    "transfer",
    "account",
    "IFSC",
    "branch",
    "reference",
    "purchase",
    "order",
    "delivery",
    "note",
    "approved",
    "by",
    "procurement",
    "cost",
    "centre",
    "project",
    "milestone",
    "support",
    "renewal",
    "annual",
    "monthly",
    "subscription",
    "usage",
    "hours",
    "consultant",
    "travel",
    "expenses",
    "per",
    "diem",
    "discount",
    "rounding",
    "total",
    "subtotal",
    "balance",
    "due",
    "remit",
    "to",
    "billing",
    "address",
    "shipping",
)


def invoice_dict(index: int, seed: int = 8) -> dict[str, Any]:
    """Invoice ``index`` as a JSON-style InvoiceEvent; the same index gives the same one."""
    rng = random.Random(seed * 1_000_003 + index)
    supplier, description, _ = SUPPLIERS[index % len(SUPPLIERS)]
    currency = rng.choice(CURRENCIES)
    amount = f"{rng.randrange(1_000, 900_000)}.{rng.randrange(100):02d}"
    day = date(2026, 1, 1) + timedelta(days=rng.randrange(300))
    lines = [
        "TAX INVOICE",
        f"Invoice number: BENCH-{index:07d}   Date: {day.isoformat()}",
        f"From: {supplier}, GSTIN 27AAAC{rng.randrange(10**6):06d}Z1",
        "Bill to: Accounts Payable, Example Industries Ltd, Pune 411001",
        f"Description: {description}",
    ]
    target = rng.randrange(1_000, 2_000)
    size = sum(len(line) + 1 for line in lines)
    item = 1
    while size < target:
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(6, 14)))
        line = f"{item:>3}. {words} .... {currency} {rng.randrange(100, 90_000)}.00"
        lines.append(line)
        size += len(line) + 1
        item += 1
    lines.append(f"Total due: {currency} {amount}")
    return {
        "invoice_id": f"BENCH-{index:07d}",
        "supplier": supplier,
        "description": description,
        "amount": amount,
        "currency": currency,
        "invoice_date": day.isoformat(),
        "raw_text": "\n".join(lines),
    }

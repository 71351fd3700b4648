"""The deterministic stand-in for the model: classifies invoice text for the
`classify_invoice` tool, and fills any other tool's input from its schema.

Pure functions. The same text always gives the same answer; the article's five
invoices come out as printed there because their descriptions hit the keyword
table, not because their ids are known.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

CLASSIFY_TOOL = "classify_invoice"

DEPARTMENTS = (
    "IT",
    "HR",
    "Admin",
    "Marketing",
    "Finance",
    "Operations",
    "Legal",
    "Sales",
    "Facilities",
    "Other",
)

# Phrases weigh 3, single words 1; the description counts twice as much as the
# supplier and raw text. A tie goes to the department listed first above.
# "design software" and "creative cloud" sit under Marketing so that a design
# tool licence bought for a brand team is Marketing, not IT.
_KEYWORDS: dict[str, tuple[str, ...]] = {
    "IT": (
        "cloud",
        "server",
        "servers",
        "software",
        "laptop",
        "laptops",
        "aws",
        "azure",
        "gcp",
        "ec2",
        "s3",
        "hosting",
        "saas",
        "infrastructure",
        "network",
        "it support",
        "computer",
        "computers",
        "database",
        "subscription software",
    ),
    "HR": (
        "recruit",
        "recruitment",
        "recruiting",
        "payroll",
        "training",
        "job posting",
        "hiring",
        "employee",
        "employees",
        "benefits",
        "onboarding",
        "staffing",
    ),
    "Admin": (
        "hotel",
        "travel",
        "office supplies",
        "stationery",
        "offsite",
        "room booking",
        "flight",
        "flights",
        "courier",
        "accommodation",
        "nights",
    ),
    "Marketing": (
        "advert",
        "advertising",
        "advertisement",
        "campaign",
        "design",
        "design software",
        "creative cloud",
        "brand",
        "branding",
        "creative",
        "seo",
        "social media",
        "promotion",
        "marketing",
    ),
    "Finance": (
        "audit",
        "consulting",
        "tax",
        "bank",
        "banking",
        "accounting",
        "risk assessment",
        "insurance",
        "treasury",
        "financial",
    ),
    "Operations": ("logistics", "freight", "shipping", "warehouse", "fleet", "operations"),
    "Legal": ("legal", "law", "lawyer", "attorney", "litigation", "notary", "trademark"),
    "Sales": ("sales", "crm", "lead generation", "commission", "trade show"),
    "Facilities": (
        "rent",
        "lease",
        "electricity",
        "utilities",
        "cleaning",
        "maintenance",
        "repair",
        "security guard",
        "facility",
        "facilities",
    ),
}

_REVIEW_TRIGGERS: tuple[tuple[str, str], ...] = (
    ("urgent", "marked urgent"),
    ("advance payment", "asks for an advance payment"),
    ("duplicate", "may be a duplicate"),
    ("new bank account", "asks to pay a new bank account"),
    ("immediately", "asks for immediate payment"),
)

_CURRENCY_SYMBOLS = {"₹": "INR", "rs": "INR", "rs.": "INR", "inr": "INR", "$": "USD", "€": "EUR"}
_CURRENCY_SYMBOLS |= {"£": "GBP", "usd": "USD", "eur": "EUR", "gbp": "GBP"}

_NUMBER = r"(\d{1,3}(?:,\d{2,3})+(?:\.\d+)?|\d+(?:\.\d+)?)"
_CODE = r"([A-Z]{3}|Rs\.?|₹|\$|€|£)"
_AMOUNT_LINE = re.compile(rf"^\s*{_NUMBER}\s*([A-Za-z]{{3}})?\s*$")
_CODE_THEN_NUMBER = re.compile(rf"{_CODE}\s?{_NUMBER}", re.IGNORECASE)
_NUMBER_THEN_CODE = re.compile(rf"{_NUMBER}\s?([A-Z]{{3}})\b")
_SUMMARY_WORDS = 4
_SUMMARY_MAX = 60


@dataclass(frozen=True)
class InvoiceText:
    """The labelled lines of one invoice prompt."""

    invoice_id: str
    supplier: str
    description: str
    amount_line: str
    currency_line: str
    raw_text: str

    @classmethod
    def parse(cls, text: str) -> InvoiceText:
        labels: dict[str, str] = {}
        for line in text.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                labels.setdefault(key.strip().lower(), value.strip())
        return cls(
            invoice_id=labels.get("invoice id", ""),
            supplier=labels.get("supplier", ""),
            description=labels.get("description", ""),
            amount_line=labels.get("amount", ""),
            currency_line=labels.get("currency", ""),
            raw_text=labels.get("text", labels.get("raw text", "")),
        )


def _number(raw: str) -> float | int | None:
    try:
        value = Decimal(raw.replace(",", ""))
    except InvalidOperation:
        return None
    return int(value) if value == value.to_integral_value() else float(value)


def _currency(token: str) -> str:
    return _CURRENCY_SYMBOLS.get(token.lower(), token.upper())


def find_amount(invoice: InvoiceText) -> tuple[float | int, str] | None:
    """Amount and currency from the Amount line, else from the raw text."""
    match = _AMOUNT_LINE.match(invoice.amount_line)
    if match:
        value = _number(match.group(1))
        if value is not None:
            return value, (match.group(2) or invoice.currency_line or "XXX").upper()
    for source in (invoice.raw_text, invoice.description):
        found = _CODE_THEN_NUMBER.search(source)
        if found:
            value = _number(found.group(2))
            if value is not None:
                return value, _currency(found.group(1))
        found = _NUMBER_THEN_CODE.search(source)
        if found:
            value = _number(found.group(1))
            if value is not None:
                return value, found.group(2)
    return None


_PHRASES = tuple({k for ks in _KEYWORDS.values() for k in ks if " " in k})
_SINGLE_WORDS = frozenset(k for ks in _KEYWORDS.values() for k in ks if " " not in k)
# Stems such as "recruit" or "advert" also match longer words ("recruitment").
_STEMS = frozenset(k for k in _SINGLE_WORDS if len(k) >= 5)
_LONGEST_STEM = max(len(k) for k in _STEMS)


def _keyword_scores(text: str) -> dict[str, int]:
    """Keyword → weight found in one text (phrase 3, word or stem 1): one pass
    over the text's words instead of one scan per keyword."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    found: dict[str, int] = {}
    for word in set(words):
        if word in _SINGLE_WORDS:
            found[word] = 1
        for end in range(5, min(len(word), _LONGEST_STEM) + 1):
            if word[:end] in _STEMS:
                found[word[:end]] = 1
    padded = f" {' '.join(words)} "
    for phrase in _PHRASES:
        if f" {phrase} " in padded:
            found[phrase] = 3
    return found


def pick_department(invoice: InvoiceText) -> tuple[str, list[str]]:
    weights: dict[str, int] = {}
    for text, factor in ((invoice.description, 2), (invoice.supplier, 1), (invoice.raw_text, 1)):
        for keyword, weight in _keyword_scores(text).items():
            weights[keyword] = weights.get(keyword, 0) + factor * weight
    best, best_score, best_hits = "Other", 0, []
    for department in DEPARTMENTS:
        hits = [k for k in _KEYWORDS.get(department, ()) if k in weights]
        score = sum(weights[k] for k in hits)
        if score > best_score:
            best, best_score, best_hits = department, score, hits
    return best, best_hits


def summarize(invoice: InvoiceText) -> str:
    """The first few words of the description, up to a dash or comma, ≤ 60 chars."""
    source = invoice.description or invoice.raw_text or invoice.supplier or "Invoice"
    head = re.split(r"\s+-\s+|,|;|\n", source, maxsplit=1)[0]
    words = head.split()[:_SUMMARY_WORDS]
    summary = " ".join(words) or "Invoice"
    return summary[:_SUMMARY_MAX].rstrip()


def classify_invoice(text: str) -> dict[str, Any]:
    """The `classify_invoice` tool input for one invoice prompt."""
    invoice = InvoiceText.parse(text)
    department, hits = pick_department(invoice)
    amount = find_amount(invoice)
    everything = f"{invoice.description}\n{invoice.raw_text}\n{invoice.supplier}".lower()
    concerns = [why for word, why in _REVIEW_TRIGGERS if word in everything]
    if amount is None:
        concerns.append("no amount could be found")
    if concerns:
        reason = "Needs review: " + "; ".join(concerns) + "."
    elif hits:
        reason = f"Routine {department} expense (matched: {', '.join(hits[:3])})."
    else:
        reason = "No department keywords matched; routine expense."
    value, currency = amount if amount is not None else (0, invoice.currency_line or "XXX")
    return {
        "department": department,
        "amount": value,
        "currency": currency,
        "summary": summarize(invoice),
        "needs_review": bool(concerns),
        "reason": reason,
    }


def input_from_schema(schema: Any, hint: str = "") -> Any:
    """A value that satisfies a JSON schema: required and listed properties, the
    first enum value, minimums respected. `hint` seeds string values."""
    if not isinstance(schema, dict):
        return {}
    if "const" in schema:
        return schema["const"]
    if "default" in schema:
        return schema["default"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        options = schema.get(combinator)
        if isinstance(options, list) and options:
            return input_from_schema(options[0], hint)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            return {}
        return {name: input_from_schema(sub, name) for name, sub in properties.items()}
    if kind == "array":
        minimum = schema.get("minItems", 1)
        count = max(1, minimum) if isinstance(minimum, int) else 1
        return [input_from_schema(schema.get("items", {}), hint) for _ in range(count)]
    if kind in ("number", "integer"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        value = low if isinstance(low, int | float) else 0
        if "exclusiveMinimum" in schema and "minimum" not in schema:
            value += 1
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    text = f"example {hint}".strip()
    min_length = schema.get("minLength", 0)
    if isinstance(min_length, int) and len(text) < min_length:
        text = text.ljust(min_length, "x")
    max_length = schema.get("maxLength")
    if isinstance(max_length, int):
        text = text[:max_length]
    return text

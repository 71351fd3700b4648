"""What a batch costs, from the usage in its results and list prices. Pure code.

Prices are USD per million tokens at list (real-time) rates, as published on
2026-11-01; the Message Batches API bills 50 % of them. Cache writes are the 5-minute
rate (the only one a batch request asks for). PRICES in the settings overrides or
adds models.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

PRICES_AS_OF: Final = "2026-11-01"
BATCH_DISCOUNT: Final = Decimal("0.5")


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per million tokens at list price."""

    input: Decimal
    output: Decimal
    cache_read: Decimal
    cache_write: Decimal


def _p(i: str, o: str, r: str, w: str) -> ModelPrice:
    return ModelPrice(Decimal(i), Decimal(o), Decimal(r), Decimal(w))


LIST_PRICES: Final[Mapping[str, ModelPrice]] = {
    "claude-haiku-4-5": _p("1.00", "5.00", "0.10", "1.25"),
    "claude-sonnet-4-5": _p("3.00", "15.00", "0.30", "3.75"),
    "claude-opus-4-5": _p("5.00", "25.00", "0.50", "6.25"),
    "claude-3-5-haiku": _p("0.80", "4.00", "0.08", "1.00"),
}


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cache_creation_tokens + other.cache_creation_tokens,
        )


def price_for(model: str, overrides: Mapping[str, ModelPrice] | None = None) -> ModelPrice | None:
    """The price of a model, matching dated ids (claude-haiku-4-5-20251001) by prefix."""
    table = {**LIST_PRICES, **(overrides or {})}
    if model in table:
        return table[model]
    for name in sorted(table, key=len, reverse=True):
        if model.startswith(name):
            return table[name]
    return None


def cost_usd(usage: Usage, price: ModelPrice, *, batch: bool = True) -> Decimal:
    """Cost of the usage; batch=False gives what real-time calls would have cost."""
    per_million = (
        usage.input_tokens * price.input
        + usage.output_tokens * price.output
        + usage.cache_read_tokens * price.cache_read
        + usage.cache_creation_tokens * price.cache_write
    )
    cost = per_million / Decimal(1_000_000)
    return cost * BATCH_DISCOUNT if batch else cost


def parse_price_overrides(raw: str) -> dict[str, ModelPrice]:
    """``model=in,out,cache_read,cache_write;model2=...`` (USD per million, list price)."""
    prices: dict[str, ModelPrice] = {}
    for part in raw.split(";"):
        if not part.strip():
            continue
        model, sep, values = part.partition("=")
        numbers = [v.strip() for v in values.split(",")]
        if not sep or len(numbers) != 4:
            raise ValueError(f"expected model=in,out,cache_read,cache_write, got {part.strip()!r}")
        prices[model.strip()] = _p(*numbers)
    return prices

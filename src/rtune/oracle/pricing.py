"""Token prices (USD per million tokens, input/output), overridable per model."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError

# Public list prices at the time of writing; override with --prices FILE or --price-in/--price-out.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-3.5-turbo": (0.50, 1.50),
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4": (30.00, 60.00),
}
# the OpenAI Batch API bills every token at half the online price
BATCH_DISCOUNT = 0.5


class Prices:
    def __init__(self, table: dict[str, tuple[float, float]] | None = None):
        self.table = dict(DEFAULT_PRICES if table is None else table)

    @classmethod
    def load(cls, path: str | Path | None = None, *, model: str | None = None,
             price_in: float | None = None, price_out: float | None = None) -> Prices:
        prices = cls()
        if path:
            try:
                data = json.loads(Path(path).read_text(encoding="utf-8-sig"))
                for name, pair in data.items():
                    prices.table[name] = (float(pair[0]), float(pair[1]))
            except (OSError, ValueError, TypeError, IndexError, KeyError, AttributeError) as e:
                raise ConfigError(f"--prices {path}: expected a JSON object "
                                  f'{{"model": [usd_in_per_1M, usd_out_per_1M]}} ({e})') from None
        if model and (price_in is not None or price_out is not None):
            old = prices.lookup(model)
            prices.table[model] = (price_in if price_in is not None else old[0],
                                   price_out if price_out is not None else old[1])
        return prices

    def lookup(self, model: str) -> tuple[float, float]:
        if model in self.table:
            return self.table[model]
        # dated snapshots ("gpt-4o-mini-2024-07-18") cost what their family costs
        best = max((name for name in self.table if model.startswith(name)), key=len, default=None)
        return self.table[best] if best else (0.0, 0.0)

    def cost(self, model: str, tokens_in: int, tokens_out: int, *, batch: bool = False) -> float:
        pin, pout = self.lookup(model)
        return (tokens_in * pin + tokens_out * pout) / 1e6 * (BATCH_DISCOUNT if batch else 1.0)

"""The budget stop: ``limits.max_cost_usd`` caps what an output's rows cost, across runs.

Before each attempt the runner reserves the attempt's ceiling (estimated prompt
tokens at the input price plus ``max_tokens``, or the learnt completion guess, at
the output price); when the answer arrives the reservation is released and the
actual cost added. When ``spent + reserved + next`` would pass the limit, the run
stops taking rows, lets requests in flight finish, checkpoints and exits 6.

``spent`` starts with the cost recorded in the output's earlier results (the
previous output file and the parts of stopped runs), so running the same command
again with the same budget sends nothing, and with a higher one resumes.

A model without a price cannot be budgeted: a job that sets ``max_cost_usd`` for
one is refused before anything is sent (exit 2) unless a price is given.
"""

from __future__ import annotations

from pipeline.cost import Price
from pipeline.errors import JobError
from pipeline.prices import PriceTable


class Budget:
    """Spent and reserved USD against a limit (one event loop: no locks needed)."""

    def __init__(self, limit_usd: float, spent_usd: float = 0.0) -> None:
        self.limit_usd = limit_usd
        self.spent_usd = spent_usd
        self.reserved_usd = 0.0

    def reserve(self, amount: float) -> bool:
        """Hold ``amount`` for an attempt; False (nothing held) when it would pass the limit."""
        if self.spent_usd + self.reserved_usd + amount > self.limit_usd:
            return False
        self.reserved_usd += amount
        return True

    def release(self, amount: float) -> None:
        """Give back a reservation whose attempt returned no usage."""
        self.reserved_usd = max(0.0, self.reserved_usd - amount)

    def settle(self, amount: float, actual: float | None) -> None:
        """Replace a reservation by what the answer cost (the reservation itself when unknown)."""
        self.release(amount)
        self.spent_usd += amount if actual is None else actual

    def refusal(self, amount: float) -> str:
        """Why the next attempt does not fit, in words."""
        return (
            f"budget: ${self.spent_usd:.4f} spent + ${self.reserved_usd:.4f} in flight"
            f" + ${amount:.4f} for the next request would pass limits.max_cost_usd ${self.limit_usd:g};"
            " raise it and run the same command again to resume"
        )


def budget_price(max_cost_usd: float | None, model: str, prices: PriceTable) -> Price | None:
    """The price reservations use; ``JobError`` when a budget is set for a model without one."""
    if max_cost_usd is None:
        return None
    price = prices.resolve(model)
    if price is None:
        raise JobError(
            f"[limits] max_cost_usd: model {model!r} has no known price;"
            " add it under [prices] or with --prices FILE"
        )
    return price

"""Cost arithmetic: what one answer's usage costs, summed over a row's attempts. Pure, no I/O.

Prices are USD per million tokens. For one answer::

    cost = ((prompt - cached) * input + cached * cached_input + output_tokens * output) / 1e6

* ``cached`` is ``usage.prompt_tokens_details.cached_tokens``: a part of the prompt
  tokens, billed at the cached-input price (capped at the prompt tokens).
* ``output_tokens`` is ``completion_tokens``. Reasoning tokens
  (``usage.completion_tokens_details.reasoning_tokens``) are part of it, as OpenAI
  counts them, and are billed as output. A provider that counts them *outside*
  completion tokens shows it in ``total_tokens == prompt + completion + reasoning``;
  then they are added.

A row's cost is the sum over every attempt that returned usage; an attempt that
could not be priced (no usage, or no price for the model) makes the row's cost
unknown (``None``), never a guess.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import AttemptError, BadResponse, ConnectionFailed, NotSent, RequestTimeout
from pipeline.records import Usage

PER_MILLION = 1_000_000.0


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens for one model, and where the figures came from."""

    input: float
    cached_input: float
    output: float
    model: str = ""
    as_of: str | None = None
    source: str | None = None
    uncertain: bool = False
    batch_input: float | None = None
    """Batch API price of input tokens; None: half of ``input``."""
    batch_output: float | None = None
    """Batch API price of output tokens; None: half of ``output``."""

    def for_batch(self) -> Price:
        """The prices a Batch API answer is billed at (half the live ones unless given;
        cached input at half its live price, never above batch input)."""
        batch_input = self.input / 2 if self.batch_input is None else self.batch_input
        return Price(
            input=batch_input,
            cached_input=min(self.cached_input / 2, batch_input),
            output=self.output / 2 if self.batch_output is None else self.batch_output,
            model=self.model,
            as_of=self.as_of,
            source=self.source,
            uncertain=self.uncertain,
        )


def tokens_cost(
    price: Price, prompt_tokens: float, output_tokens: float, *, cached_tokens: float = 0.0
) -> float:
    """USD for token counts, the formula itself (fractional counts for estimates).

    ``cached_tokens`` is the part of ``prompt_tokens`` billed at the cached-input price.
    """
    return (
        (prompt_tokens - cached_tokens) * price.input
        + cached_tokens * price.cached_input
        + output_tokens * price.output
    ) / PER_MILLION


def usage_cost(
    price: Price,
    prompt_tokens: int,
    completion_tokens: int,
    *,
    cached_tokens: int | None = None,
    reasoning_tokens: int | None = None,
    total_tokens: int | None = None,
) -> float:
    """USD for one answer's usage (see the module docstring)."""
    cached = min(max(cached_tokens or 0, 0), prompt_tokens)
    output = completion_tokens
    reasoning = reasoning_tokens or 0
    if (
        reasoning > 0
        and total_tokens is not None
        and total_tokens == prompt_tokens + completion_tokens + reasoning
    ):
        output += reasoning
    return tokens_cost(price, prompt_tokens, output, cached_tokens=cached)


def reply_cost(price: Price | None, usage: Usage) -> float | None:
    """USD for one answer's usage, or ``None`` when it has no price or reports no usage."""
    if price is None or usage.prompt_tokens is None or usage.completion_tokens is None:
        return None
    return usage_cost(
        price,
        usage.prompt_tokens,
        usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        total_tokens=usage.total_tokens,
    )


def attempt_ceiling(price: Price, prompt_tokens: float, completion_tokens: float) -> float:
    """The most an attempt is expected to cost: nothing cached, every output token used."""
    return tokens_cost(price, prompt_tokens, completion_tokens)


def possibly_billed(exc: AttemptError, *, gateway: bool = False) -> bool:
    """Whether a failed attempt may have been billed: sent, but its answer never arrived in full.

    Client-side timeouts, dropped connections and broken 200 bodies count; an HTTP error
    status (a 408 included) is a complete answer and does not. A connection refused
    before the request was sent cannot be told apart cheaply and counts too. Behind a
    ``gateway``, a 5xx may come after the upstream provider finished: it counts too.
    """
    if isinstance(exc, BadResponse):
        return True
    if isinstance(exc, NotSent):
        return False
    if gateway and exc.http_status is not None and 500 <= exc.http_status < 600:
        return True  # a gateway may fail after the provider generated (and billed) the answer
    return isinstance(exc, RequestTimeout | ConnectionFailed) and exc.http_status is None

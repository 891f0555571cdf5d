"""Model prices: the packaged table, overridden by the job's ``[prices]`` and ``--prices FILE``.

The table ships in the package (``pipeline/data/prices.json``): per model, USD per
million input, cached-input and output tokens, with ``as_of`` and ``source``. Later
layers replace whole entries: packaged < job ``[prices]`` < ``--prices FILE``.

A model name resolves, case-insensitively, by the first of:

1. the name itself (or an entry's ``aliases``);
2. without a ``provider/`` prefix (``openai/gpt-4o-mini``);
3. without a dated suffix (``-2024-07-18``, ``-20241022``, ``-0125``, ``-latest``);
4. the longest known name it starts with, followed by ``-``, ``:``, ``@`` or ``_``
   (``o3-mini-high`` -> ``o3-mini``).

A model that resolves to nothing has no price: its cost is null, and one warning
(``price.unknown_model``) is logged per model per table, never an error.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import structlog
from pydantic import TypeAdapter, ValidationError

from pipeline.cost import Price
from pipeline.errors import JobError
from pipeline.spec import PriceSpec

log = structlog.get_logger("pipeline")

_DATED = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4}|latest)$")
_BOUNDARY = frozenset("-:@_")
_ENTRIES = TypeAdapter(dict[str, PriceSpec])
_MISSING = object()


def _price(name: str, spec: PriceSpec) -> Price:
    return Price(
        input=spec.input,
        cached_input=spec.input if spec.cached_input is None else spec.cached_input,
        output=spec.output,
        model=name,
        as_of=spec.as_of,
        source=spec.source,
        uncertain=spec.uncertain,
        batch_input=spec.batch_input,
        batch_output=spec.batch_output,
    )


def parse_entries(data: Any, source: str) -> dict[str, PriceSpec]:
    """A mapping of model -> price (optionally under ``models``), validated; ``JobError`` naming the key."""
    if isinstance(data, dict) and isinstance(data.get("models"), dict):
        data = data["models"]
    try:
        return _ENTRIES.validate_python(data, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "prices"
        message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise JobError(f"{source}: {where}: {message}") from None


def read_price_file(path: Path) -> dict[str, PriceSpec]:
    """A ``--prices`` file: JSON, or TOML (``"model" = { input = ..., output = ... }``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise JobError(f"{path}: cannot read price file: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise JobError(
            f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'}: {exc}"
        ) from None
    prices = data.get("prices", data) if isinstance(data, dict) else data
    return parse_entries(prices, str(path))


@cache
def packaged_entries() -> Mapping[str, PriceSpec]:
    """The table shipped in the package (read once per process)."""
    text = resources.files("pipeline").joinpath("data/prices.json").read_text(encoding="utf-8")
    return parse_entries(json.loads(text), "pipeline/data/prices.json")


class PriceTable:
    """Prices by model name, resolved as the module docstring says; one instance per run."""

    def __init__(self, *layers: Mapping[str, PriceSpec]) -> None:
        self._names: dict[str, Price] = {}
        for layer in layers:
            for name, spec in layer.items():
                price = _price(name, spec)
                for key in (name, *spec.aliases):
                    self._names[key.strip().lower()] = price
        self._resolved: dict[str, Price | None] = {}
        self._pairs: dict[tuple[str | None, str | None], Price | None] = {}

    @classmethod
    def for_job(
        cls, job_prices: Mapping[str, PriceSpec], price_file: Path | None = None
    ) -> PriceTable:
        """Packaged table < the job's ``[prices]`` < ``--prices FILE``."""
        layers = [packaged_entries(), job_prices]
        if price_file is not None:
            layers.append(read_price_file(price_file))
        return cls(*layers)

    def __len__(self) -> int:
        return len(self._names)

    def resolve(self, model: str) -> Price | None:
        """The price of ``model`` or ``None`` (no warning: see ``lookup``)."""
        found = self._resolved.get(model, _MISSING)
        if found is _MISSING:
            found = self._resolve(model)
            self._resolved[model] = found
        return found  # type: ignore[return-value]

    def _resolve(self, model: str) -> Price | None:
        name = model.strip().lower()
        candidates = [name]
        if "/" in name:
            candidates.append(name.rsplit("/", 1)[1])
        candidates += [_DATED.sub("", c) for c in candidates if _DATED.search(c)]
        for candidate in candidates:
            if candidate in self._names:
                return self._names[candidate]
        best: str | None = None
        for candidate in candidates:
            for key in self._names:
                if (
                    len(candidate) > len(key)
                    and candidate.startswith(key)
                    and candidate[len(key)] in _BOUNDARY
                    and (best is None or len(key) > len(best))
                ):
                    best = key
        return None if best is None else self._names[best]

    def lookup(self, reported: str | None, requested: str | None = None) -> Price | None:
        """The price of the model the server reported, else of the one requested.

        Logs ``price.unknown_model`` (neither has a price) or ``price.fallback`` (only
        the requested one has) once per pair of names.
        """
        pair = (reported, requested)
        found = self._pairs.get(pair, _MISSING)
        if found is not _MISSING:
            return found  # type: ignore[return-value]
        price = self.resolve(reported) if reported else None
        if price is None and requested:
            price = self.resolve(requested)
            if price is not None and reported:
                log.warning("price.fallback", model=reported, priced_as=price.model)
        if price is None:
            log.warning(
                "price.unknown_model",
                model=reported or requested,
                hint="cost_usd is null for it: add its price under [prices] or with --prices FILE",
            )
        self._pairs[pair] = price
        return price

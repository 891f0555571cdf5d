"""``{column}`` placeholders, shared by the prompt ``template`` and templated header values.

``{name}`` (a Python identifier) is filled from the row; ``{{`` and ``}}`` are literal
braces; any other brace stays as written. A value that is not text is written as JSON
(``5``, ``12.5``, ``true``, ``["x", "y"]``, ``{"k": 1}``; dates as ISO 8601), never as a
Python repr; a null, a NaN or infinity, or a value JSON cannot hold (bytes) is a bad row.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from decimal import Decimal
from typing import Any

import orjson

from pipeline.errors import BadRowError

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


def template_fields(template: str) -> list[str]:
    """Column names a template refers to, in order of first use."""
    names: dict[str, None] = {}
    for match in _PLACEHOLDER.finditer(template):
        if match.group(1):
            names[match.group(1)] = None
    return list(names)


def render_template(template: str, values: dict[str, Any]) -> str:
    """Fill ``{column}`` placeholders; ``{{`` and ``}}`` are literal braces, other braces stay."""

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return match.group(0)[0]
        value = values.get(name)
        if value is None:
            raise BadRowError(f"template placeholder {{{name}}} has no value in this row")
        return value_text(value, f"template placeholder {{{name}}}")

    return _PLACEHOLDER.sub(fill, template)


def _plain(value: object) -> object:
    """What orjson cannot write itself: decimals and durations as their text."""
    if isinstance(value, Decimal | dt.timedelta):
        return str(value)
    raise TypeError


def value_text(value: object, what: str) -> str:
    """A row value as prompt text: a string as is, anything else as JSON text."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise BadRowError(f"{what} is {value}, not a number a prompt can hold")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Decimal | dt.timedelta):
        return str(value)
    try:
        return orjson.dumps(value, default=_plain, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        raise BadRowError(
            f"{what} holds a {type(value).__name__} value, which cannot be written as text"
        ) from None

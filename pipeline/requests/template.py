"""``{column}`` placeholders, shared by the prompt ``template`` and templated header values.

``{name}`` (a Python identifier) is filled from the row; ``{{`` and ``}}`` are literal
braces; any other brace stays as written.
"""

from __future__ import annotations

import re
from typing import Any

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
        return str(value)

    return _PLACEHOLDER.sub(fill, template)

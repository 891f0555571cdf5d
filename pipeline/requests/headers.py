"""Header values filled per row: ``{ "x-portkey-trace-id" = "{id}" }``.

A header value with at least one ``{name}`` placeholder is a template, filled for each
row with the same rules as the prompt ``template``: ``{id}`` is the row id, any other
name is an input column (checked to exist before the run), and ``{{``/``}}`` are literal
braces. A value without placeholders is static: sent exactly as written, once set on
the client, so a job without templates pays nothing per request.

A row whose value is missing, renders empty, or is not a valid header value (printable
ASCII, no line breaks) cannot be sent: it becomes a ``bad_input`` row.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pipeline.errors import BadRowError
from pipeline.records import PromptRow
from pipeline.requests.template import render_template, template_fields

ROW_ID = "id"
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")


class HeaderTemplates:
    """The templated headers of an endpoint, rendered for one row at a time."""

    def __init__(self, templates: Mapping[str, str]) -> None:
        self._templates = dict(templates)

    def columns(self) -> list[str]:
        """Input columns the templates read (``{id}`` is the row id, not a column)."""
        names: dict[str, None] = {}
        for template in self._templates.values():
            names.update(dict.fromkeys(n for n in template_fields(template) if n != ROW_ID))
        return list(names)

    def render(self, row: PromptRow) -> dict[str, str]:
        """The headers for ``row``; raises ``BadRowError`` when one cannot be filled."""
        values: dict[str, Any] = {**row.values, ROW_ID: row.id}
        headers: dict[str, str] = {}
        for name, template in self._templates.items():
            try:
                text = render_template(template, values)
            except BadRowError as exc:
                raise BadRowError(f"[endpoint] headers.{name}: {exc}") from None
            if not text.strip():
                raise BadRowError(f"[endpoint] headers.{name}: renders empty for this row")
            if not _HEADER_VALUE.fullmatch(text):
                raise BadRowError(
                    f"[endpoint] headers.{name}: the value for this row is not a valid header "
                    "value (printable ASCII, no line breaks)"
                )
            headers[name] = text
        return headers


def split_headers(headers: Mapping[str, str]) -> tuple[dict[str, str], HeaderTemplates | None]:
    """Static headers (set once on the client) and the templated ones (None if there are none)."""
    static = {name: value for name, value in headers.items() if not template_fields(value)}
    templated = {name: value for name, value in headers.items() if name not in static}
    return static, HeaderTemplates(templated) if templated else None

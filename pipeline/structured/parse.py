"""Load the job's JSON Schema; parse, validate and normalise every JSON-mode answer.

An answer goes through, in order: ``finish_reason == "length"`` -> ``Truncated``;
not parseable as JSON, or not a JSON object -> ``InvalidJson``; fails the schema, or
holds a value its Arrow column cannot (an integer beyond int64, a number beyond a double
such as ``5E402``) -> ``SchemaMismatch``.
What survives becomes the value of the ``parsed`` column (typed from the schema) or,
without a schema, the normalised JSON text of the ``parsed_json`` column.

Validation uses ``jsonschema`` with the dialect the schema's ``$schema`` names
(Draft 2020-12 by default). ``format`` is an annotation, not asserted: a
``date-time`` string is checked to be a string, and stays one. ``jsonschema`` is imported
by the functions that use it (about 45 ms): a run or ``validate`` without a schema never
loads it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pyarrow as pa

from pipeline.errors import InvalidJson, JobError, SchemaMismatch, Truncated
from pipeline.spec import RequestSpec
from pipeline.structured.schema_arrow import Node, NotFit, resolve_pointer, schema_node

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

_KEY = "[request] json_schema"
_MAX_MESSAGE = 300
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]+")
_DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples"})


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _MAX_MESSAGE else flat[: _MAX_MESSAGE - 3] + "..."


def _refs(schema: Any) -> list[str]:
    """Every ``$ref`` string in a schema (data-holding keywords such as ``enum`` skipped)."""
    found: list[str] = []
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                found.append(ref)
            stack.extend(value for key, value in node.items() if key not in _DATA_KEYWORDS)
        elif isinstance(node, list):
            stack.extend(node)
    return found


def load_schema(value: str | dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The schema and its name for OpenAI (file stem, or ``response`` inline); ``JobError`` if unusable."""
    from jsonschema import Draft202012Validator, SchemaError, validators

    if isinstance(value, dict):
        schema: Any = value
        name = "response"
    else:
        path = Path(value)
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise JobError(f"{_KEY}: cannot read {path}: {exc.strerror or exc}") from None
        try:
            schema = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise JobError(f"{_KEY}: {path} is not valid JSON: {exc}") from None
        name = _NAME_CHARS.sub("_", path.stem)[:64] or "response"
    where = "the inline table" if isinstance(value, dict) else str(value)
    if not isinstance(schema, dict):
        raise JobError(f"{_KEY}: {where} must hold a JSON object (a JSON Schema)")
    try:
        validators.validator_for(schema, default=Draft202012Validator).check_schema(schema)
    except SchemaError as exc:
        at = "/".join(str(p) for p in exc.absolute_path)
        raise JobError(
            _one_line(
                f"{_KEY}: {where} is not a valid JSON Schema{f' at {at}' if at else ''}: {exc.message}"
            )
        ) from None
    for ref in _refs(schema):
        if not ref.startswith("#"):
            raise JobError(
                f"{_KEY}: {where}: $ref {ref!r} is not local; only references inside the schema (#/...) are supported"
            )
        if resolve_pointer(schema, ref) is None:
            raise JobError(f"{_KEY}: {where}: $ref {ref!r} does not resolve inside the schema")
    return schema, name


@dataclass(frozen=True)
class Extraction:
    """JSON mode of one job: what to send, how to check answers, which columns they fill.

    ``schema`` is None for ``json_object`` without a schema: answers must then be JSON
    objects and are kept as normalised JSON text (compact, keys sorted).
    """

    mode: str
    schema: dict[str, Any] | None = None
    name: str = "response"
    strict: bool | None = None
    node: Node | None = field(default=None, repr=False)
    validator: Validator | None = field(default=None, repr=False)

    @classmethod
    def from_schema(
        cls,
        mode: str,
        schema: dict[str, Any] | None,
        name: str = "response",
        strict: bool | None = None,
    ) -> Extraction:
        """Build the mapping and the validator for an already-checked schema."""
        if schema is None:
            return cls(mode)
        from jsonschema import Draft202012Validator, validators

        validator_class = validators.validator_for(schema, default=Draft202012Validator)
        return cls(mode, schema, name, strict, schema_node(schema), validator_class(schema))

    @property
    def column(self) -> pa.Field:
        """``parsed`` typed from the schema, or ``parsed_json`` (string) without one."""
        if self.node is None:
            return pa.field("parsed_json", pa.string())
        return pa.field("parsed", self.node.arrow)

    @property
    def output_schema(self) -> pa.Schema:
        """The columns JSON mode adds to the output."""
        return pa.schema([self.column, pa.field("json_attempts", pa.int32(), nullable=False)])

    def response_format(self) -> dict[str, Any]:
        """The ``response_format`` body field."""
        if self.mode == "json_object" or self.schema is None:
            return {"type": "json_object"}
        spec = {"name": self.name, "schema": self.schema, "strict": bool(self.strict)}
        return {"type": "json_schema", "json_schema": spec}

    def parse(self, content: str | None, finish_reason: str | None) -> Any:
        """The column value for one answer; raises ``Truncated``, ``InvalidJson`` or ``SchemaMismatch``."""
        if finish_reason == "length":
            raise Truncated("the answer was cut at max_tokens (finish_reason length)")
        if content is None:
            raise InvalidJson("the answer has no content")
        value = _loads(content)
        if self.validator is None or self.node is None:
            if not isinstance(value, dict):
                raise InvalidJson("the answer is JSON but not an object")
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
        from jsonschema.exceptions import best_match

        error = best_match(self.validator.iter_errors(value))
        if error is not None:
            at = "/".join(str(p) for p in error.absolute_path)
            raise SchemaMismatch(_one_line(f"{'at ' + at + ': ' if at else ''}{error.message}"))
        try:
            return self.node.convert(value)
        except NotFit as exc:
            text = str(exc)
            where = f"parsed{text}" if text[:1] in ".[" else f"parsed: {text}"
            raise SchemaMismatch(_one_line(f"a value does not fit its column: {where}")) from None


def _loads(content: str) -> Any:
    """The answer's JSON value; ``InvalidJson`` when it is not JSON, ``SchemaMismatch`` when it
    is valid JSON holding a number no double can (``5E402``: no column can hold it)."""
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        problem = exc
    too_large: list[str] = []

    def parse_float(text: str) -> float:
        number = float(text)
        if math.isinf(number):
            too_large.append(text)
        return number

    def no_constants(text: str) -> None:
        raise ValueError(text)  # NaN, Infinity: not JSON

    try:
        json.loads(content, parse_float=parse_float, parse_constant=no_constants)
    except (ValueError, RecursionError):
        raise InvalidJson(_one_line(f"the answer is not valid JSON: {problem}")) from None
    if too_large:
        raise SchemaMismatch(
            _one_line(f"the number {too_large[0]} is too large for any column (beyond a double)")
        )
    raise InvalidJson(_one_line(f"the answer is not valid JSON: {problem}"))


def load_extraction(request: RequestSpec) -> Extraction | None:
    """JSON mode of a job's ``[request]``, schema loaded and checked; None without JSON mode."""
    mode = request.json_mode
    if mode is None:
        return None
    if request.json_schema is None:
        return Extraction(mode)
    schema, name = load_schema(request.json_schema)
    return Extraction.from_schema(mode, schema, name, request.strict)

"""JSON Schema -> Arrow type, and a validated answer -> a Python value of that type.

    JSON Schema                                      Arrow
    {"type": "string"} (any format, e.g. date-time)  string
    {"type": "integer"}                              int64
    {"type": "number"}, {"type": ["integer", "number"]}  float64
    {"type": "boolean"}                              bool
    {"enum": [...]} / {"const": x} of one JSON type   that type (strings -> string)
    {"type": "array", "items": T}                    list<element: T>
    {"type": "object", "properties": {...}}          struct<...> (nested), declared properties only
    {"type": [X, "null"]}, {"anyOf": [X, {"type": "null"}]}, not in ``required``
                                                     X, nullable
    {"$ref": "#/$defs/X"} (not recursive)            as X
    anything else: oneOf/anyOf of several types, objects without ``properties``
    (free-form or ``additionalProperties`` maps), tuples (``prefixItems``), ``allOf``,
    recursive or unresolvable ``$ref``, ``{}``        string holding the value as compact
                                                     JSON text (sorted keys), always nullable

A struct field is non-nullable only when it is in ``required`` and its schema does not
admit null. JSON ``null`` and an absent optional property both become Arrow null. When a
schema gives ``type``, every valid value has that type (other keywords only narrow it),
so ``type`` decides the column; without ``type`` the JSON types of ``enum``/``const``
decide, and failing that the value is kept as JSON text.

``Node.convert`` turns a value that passed validation into the Python value the Arrow
type holds; a value that still does not fit (an integer beyond int64, say) raises
``NotFit``, which the caller reports as a schema mismatch rather than storing garbage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_ANNOTATIONS = frozenset(
    {
        "title", "description", "default", "examples", "$comment", "deprecated", "readOnly",
        "writeOnly", "$schema", "$id", "$anchor", "$defs", "definitions", "format",
    }
)  # fmt: skip
_OBJECT_COMBINATORS = (
    "allOf",
    "anyOf",
    "oneOf",
    "if",
    "patternProperties",
    "dependentSchemas",
    "dependencies",
)
_SCALARS = {
    "string": pa.string(),
    "integer": pa.int64(),
    "number": pa.float64(),
    "boolean": pa.bool_(),
}


class NotFit(ValueError):
    """A value that passed validation still does not fit its Arrow type."""


@dataclass(frozen=True, slots=True)
class Node:
    """One schema position: its Arrow type and whether it admits null."""

    arrow: pa.DataType
    nullable: bool

    def convert(self, value: Any) -> Any:
        """The Python value of ``self.arrow`` for a JSON value (``NotFit`` if impossible)."""
        raise NotImplementedError

    def _null(self) -> None:
        if not self.nullable:
            raise NotFit("null where the schema does not allow it")


@dataclass(frozen=True, slots=True)
class Scalar(Node):
    """string, int64, float64 or bool."""

    kind: str

    def convert(self, value: Any) -> Any:
        if value is None:
            return self._null()
        kind, cls = self.kind, type(value)
        if kind == "string" and cls is str:
            return value
        if kind == "boolean" and cls is bool:
            return value
        if kind == "integer":
            if cls is float and value.is_integer():
                value, cls = int(value), int
            if cls is int:
                if _INT64_MIN <= value <= _INT64_MAX:
                    return value
                raise NotFit(f"{value} does not fit int64")
        if kind == "number" and cls in (int, float):
            try:
                return float(value)
            except OverflowError:
                raise NotFit(f"{value} does not fit float64") from None
        raise NotFit(f"{_json_text(value)[:40]} is not a {kind}")


@dataclass(frozen=True, slots=True)
class ListNode(Node):
    """list<element: item>."""

    item: Node

    def convert(self, value: Any) -> Any:
        if value is None:
            return self._null()
        if type(value) is not list:
            raise NotFit("not an array")
        item = self.item
        converted = []
        for index, element in enumerate(value):
            try:
                converted.append(item.convert(element))
            except NotFit as exc:
                raise NotFit(f"[{index}]: {exc}") from None
        return converted


@dataclass(frozen=True, slots=True)
class StructNode(Node):
    """struct of the declared properties."""

    fields: tuple[tuple[str, Node], ...]

    def convert(self, value: Any) -> Any:
        if value is None:
            return self._null()
        if type(value) is not dict:
            raise NotFit("not an object")
        converted = {}
        for name, node in self.fields:
            try:
                converted[name] = node.convert(value.get(name))
            except NotFit as exc:
                raise NotFit(f".{name}: {exc}") from None
        return converted


@dataclass(frozen=True, slots=True)
class JsonText(Node):
    """string holding the value as compact JSON text; JSON null is Arrow null."""

    def convert(self, value: Any) -> Any:
        return None if value is None else _json_text(value)


def _json_text(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


JSON_TEXT = JsonText(pa.string(), True)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _is_null_only(schema: Any) -> bool:
    if not isinstance(schema, dict):
        return False
    shape = {key: value for key, value in schema.items() if key not in _ANNOTATIONS}
    return shape in ({"type": "null"}, {"type": ["null"]}, {"const": None}, {"enum": [None]})


class _Mapper:
    """Walks one schema; ``root`` resolves local ``$ref``, ``seen`` stops recursion."""

    def __init__(self, root: Any) -> None:
        self.root = root

    def node(self, schema: Any, seen: tuple[str, ...]) -> Node:
        if not isinstance(schema, dict):
            return JSON_TEXT  # true, false
        if "$ref" in schema:
            return self._ref(schema, seen)
        for key in ("anyOf", "oneOf"):
            if key in schema and "type" not in schema:
                return self._nullable_union(schema, schema[key], seen)
        types = self._types(schema)
        if types is None:
            return JSON_TEXT
        nullable = "null" in types
        kinds = set(types) - {"null"}
        if kinds == {"integer", "number"}:
            kinds = {"number"}
        if len(kinds) != 1:
            return JSON_TEXT
        (kind,) = kinds
        if kind in _SCALARS:
            return Scalar(_SCALARS[kind], nullable, kind)
        if kind == "array":
            items = schema.get("items", True)
            if "prefixItems" in schema or not isinstance(items, dict | bool):
                return JSON_TEXT
            item = self.node(items, seen)
            return ListNode(
                pa.list_(pa.field("element", item.arrow, nullable=item.nullable)), nullable, item
            )
        return self._object(schema, nullable, seen)

    def _types(self, schema: Mapping[str, Any]) -> list[str] | None:
        declared = schema.get("type")
        if isinstance(declared, str):
            return [declared]
        if isinstance(declared, list) and declared and all(isinstance(t, str) for t in declared):
            return list(declared)
        if declared is not None:
            return None
        if "const" in schema:
            return [_json_type(schema["const"])]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return sorted({_json_type(value) for value in schema["enum"]})
        return None

    def _object(self, schema: Mapping[str, Any], nullable: bool, seen: tuple[str, ...]) -> Node:
        properties = schema.get("properties")
        if not isinstance(properties, dict) or not properties:
            return JSON_TEXT
        if any(key in schema for key in _OBJECT_COMBINATORS):
            return JSON_TEXT
        required = schema.get("required", [])
        required = set(required) if isinstance(required, list) else set()
        fields: list[tuple[str, Node]] = []
        arrow_fields: list[pa.Field] = []
        for name, sub in properties.items():
            child = self.node(sub, seen)
            if name not in required and not child.nullable:
                child = _with_nullable(child)
            fields.append((name, child))
            arrow_fields.append(pa.field(name, child.arrow, nullable=child.nullable))
        return StructNode(pa.struct(arrow_fields), nullable, tuple(fields))

    def _nullable_union(
        self, schema: Mapping[str, Any], branches: Any, seen: tuple[str, ...]
    ) -> Node:
        if not isinstance(branches, list) or any(
            key not in _ANNOTATIONS and key not in ("anyOf", "oneOf") for key in schema
        ):
            return JSON_TEXT
        if "anyOf" in schema and "oneOf" in schema:
            return JSON_TEXT
        rest = [branch for branch in branches if not _is_null_only(branch)]
        if len(rest) != 1:
            return JSON_TEXT
        node = self.node(rest[0], seen)
        return _with_nullable(node) if len(rest) < len(branches) else node

    def _ref(self, schema: Mapping[str, Any], seen: tuple[str, ...]) -> Node:
        ref = schema["$ref"]
        if not isinstance(ref, str) or ref in seen:
            return JSON_TEXT
        if any(key not in _ANNOTATIONS and key != "$ref" for key in schema):
            return JSON_TEXT
        target = resolve_pointer(self.root, ref)
        if target is None:
            return JSON_TEXT
        return self.node(target, (*seen, ref))


def _with_nullable(node: Node) -> Node:
    if node.nullable:
        return node
    if isinstance(node, Scalar):
        return Scalar(node.arrow, True, node.kind)
    if isinstance(node, ListNode):
        return ListNode(node.arrow, True, node.item)
    if isinstance(node, StructNode):
        return StructNode(node.arrow, True, node.fields)
    return JSON_TEXT


def resolve_pointer(root: Any, ref: str) -> Any:
    """The subschema a local ``#/...`` (or ``#``) reference points at, or None."""
    if ref == "#":
        return root
    if not ref.startswith("#/"):
        return None
    target = root
    for raw in ref[2:].split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(target, dict) and part in target:
            target = target[part]
        elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
            target = target[int(part)]
        else:
            return None
    return target


def schema_node(schema: Any) -> Node:
    """The Arrow mapping of a whole schema (see the module docstring)."""
    return _Mapper(schema).node(schema, ())

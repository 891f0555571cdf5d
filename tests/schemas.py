"""Hypothesis strategies for JSON Schemas, each with the Arrow type it should map to,
a strategy of values valid against it, and the normalised value each should become.

The expected types are written out here independently of ``pipeline.structured``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from hypothesis import strategies as st

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
WORDS = st.text(alphabet="abcdefghij xyz", min_size=1, max_size=8)
NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=6)
SCALAR_JSON = st.none() | st.booleans() | st.integers(-1000, 1000) | FLOATS | st.text(max_size=6)
ANY_JSON = st.recursive(
    SCALAR_JSON,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


def _identity(value: Any) -> Any:
    return value


def _as_json_text(value: Any) -> Any:
    """Expected for JSON-text columns: compared after decoding (see ``same``)."""
    return None if value is None else JsonText(value)


@dataclass(frozen=True)
class JsonText:
    """A JSON-text cell, equal to any string that decodes to ``value``."""

    value: Any

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and json.loads(other) == self.value

    def __hash__(self) -> int:
        return 0


@dataclass(frozen=True)
class Gen:
    """A generated schema with what it should become."""

    schema: dict[str, Any]
    arrow: pa.DataType
    nullable: bool
    values: st.SearchStrategy[Any]
    expect: Callable[[Any], Any] = _identity
    defs: dict[str, dict[str, Any]] = field(default_factory=dict)
    has_type: bool = True


def _scalar(kind: str, arrow: pa.DataType, values: st.SearchStrategy[Any], **extra: Any) -> Gen:
    return Gen({"type": kind, **extra}, arrow, False, values)


def scalars() -> st.SearchStrategy[Gen]:
    enums = st.lists(WORDS, min_size=1, max_size=4, unique=True)
    return st.one_of(
        st.just(_scalar("string", pa.string(), st.text(max_size=10))),
        st.just(_scalar("string", pa.string(), st.text(max_size=10), format="date-time")),
        enums.map(lambda e: Gen({"type": "string", "enum": e}, pa.string(), False, st.sampled_from(e))),
        enums.map(lambda e: Gen({"enum": e}, pa.string(), False, st.sampled_from(e), has_type=False)),
        st.just(_scalar("integer", pa.int64(), INT64)),
        st.just(_scalar("integer", pa.int64(), st.integers(1, 5), minimum=1, maximum=5)),
        st.just(_scalar("number", pa.float64(), FLOATS | st.integers(-(10**6), 10**6))).map(
            lambda g: Gen(g.schema, g.arrow, False, g.values, float)
        ),
        st.just(_scalar("boolean", pa.bool_(), st.booleans())),
        # no Arrow equivalent: kept as JSON text
        st.just(
            Gen(
                {"oneOf": [{"type": "string"}, {"type": "integer"}]},
                pa.string(), True, st.text(max_size=5) | st.integers(-100, 100), _as_json_text, has_type=False,
            )
        ),
        st.just(
            Gen(
                {"type": "object", "additionalProperties": {"type": "integer"}},
                pa.string(), True, st.dictionaries(NAMES, st.integers(-9, 9), max_size=3), _as_json_text,
            )
        ),
        st.just(Gen({}, pa.string(), True, ANY_JSON, _as_json_text, has_type=False)),
    )  # fmt: skip


def _defs_of(children: list[Gen]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for child in children:
        merged.update(child.defs)
    return merged


def array_of(child: Gen) -> Gen:
    return Gen(
        {"type": "array", "items": child.schema},
        pa.list_(pa.field("element", child.arrow, nullable=child.nullable)),
        False,
        st.lists(child.values, max_size=3),
        lambda values: [child.expect(v) for v in values],
        child.defs,
    )


def nullable(child: Gen, style: str) -> Gen:
    if child.nullable:
        return child
    schema: dict[str, Any]
    if style == "type" and child.has_type and isinstance(child.schema.get("type"), str):
        schema = {**child.schema, "type": [child.schema["type"], "null"]}
        if "enum" in schema:
            schema["enum"] = [*schema["enum"], None]
    else:
        schema = {"anyOf": [child.schema, {"type": "null"}], "description": "may be null"}
    return Gen(
        schema,
        child.arrow,
        True,
        st.none() | child.values,
        lambda v: None if v is None else child.expect(v),
        child.defs,
        has_type=style == "type",
    )


def by_ref(child: Gen) -> Gen:
    name = "d" + hashlib.sha1(json.dumps(child.schema, sort_keys=True).encode()).hexdigest()[:10]
    defs = {**child.defs, name: child.schema}
    return Gen(
        {"$ref": f"#/$defs/{name}"},
        child.arrow,
        child.nullable,
        child.values,
        child.expect,
        defs,
        False,
    )


@st.composite
def objects(draw: st.DrawFn, children: st.SearchStrategy[Gen], min_size: int = 1) -> Gen:
    named = draw(st.dictionaries(NAMES, children, min_size=min_size, max_size=4))
    required = [name for name in named if draw(st.booleans())]
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {name: gen.schema for name, gen in named.items()},
        "required": required,
    }
    if draw(st.booleans()):
        schema["additionalProperties"] = False
    arrow = pa.struct(
        [
            pa.field(name, gen.arrow, nullable=gen.nullable or name not in required)
            for name, gen in named.items()
        ]
    )
    values = st.fixed_dictionaries(
        {name: named[name].values for name in required},
        optional={name: gen.values for name, gen in named.items() if name not in required},
    )

    def expect(value: dict[str, Any]) -> dict[str, Any]:
        return {
            name: gen.expect(value[name]) if name in value else None for name, gen in named.items()
        }

    return Gen(schema, arrow, False, values, expect, _defs_of(list(named.values())))


def _extend(children: st.SearchStrategy[Gen]) -> st.SearchStrategy[Gen]:
    return st.one_of(
        children.map(array_of),
        objects(children),
        st.tuples(children, st.sampled_from(["type", "anyOf"])).map(lambda pair: nullable(*pair)),
        children.map(by_ref),
    )


GENS = st.recursive(scalars(), _extend, max_leaves=8)


@st.composite
def root_schemas(draw: st.DrawFn) -> Gen:
    """An object schema (as OpenAI requires at the root), ``$defs`` gathered at the top."""
    root = draw(objects(GENS))
    if root.defs:
        root = Gen(
            {**root.schema, "$defs": root.defs},
            root.arrow,
            root.nullable,
            root.values,
            root.expect,
            root.defs,
        )
    return root

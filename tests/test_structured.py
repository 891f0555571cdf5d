"""Tests of structured extraction: schema -> Arrow mapping, schema loading, parse/validate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from pipeline.errors import InvalidJson, JobError, SchemaMismatch, Truncated
from pipeline.spec import RequestSpec
from pipeline.structured import Extraction, load_extraction, load_schema, schema_node
from tests.schemas import Gen, root_schemas

S, INT, F, B = pa.string(), pa.int64(), pa.float64(), pa.bool_()


def lst(item: pa.DataType, nullable: bool = False) -> pa.DataType:
    return pa.list_(pa.field("element", item, nullable=nullable))


def obj(
    properties: dict[str, Any], required: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        **extra,
    }


def arrow_of(schema: Any) -> pa.DataType:
    return schema_node(schema).arrow


# ---- the mapping table ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "arrow", "nullable"),
    [
        ({"type": "string"}, S, False),
        ({"type": "string", "format": "date-time"}, S, False),
        ({"type": "string", "enum": ["a", "b"]}, S, False),
        ({"enum": ["a", "b"]}, S, False),
        ({"enum": ["a", None]}, S, True),
        ({"const": "fixed"}, S, False),
        ({"type": "integer", "minimum": 1}, INT, False),
        ({"enum": [1, 2, 3]}, INT, False),
        ({"type": "number"}, F, False),
        ({"type": ["integer", "number"]}, F, False),
        ({"enum": [1, 2.5]}, F, False),
        ({"type": "boolean"}, B, False),
        ({"type": ["string", "null"]}, S, True),
        ({"anyOf": [{"type": "integer"}, {"type": "null"}]}, INT, True),
        ({"oneOf": [{"type": "null"}, {"type": "boolean"}], "description": "d"}, B, True),
        ({"anyOf": [{"type": "integer"}]}, INT, False),
        ({"type": "array", "items": {"type": "string"}}, lst(S), False),
        ({"type": "array", "items": {"type": ["number", "null"]}, "maxItems": 3}, lst(F, True), False),
        ({"type": "array", "items": {"type": "array", "items": {"type": "integer"}}}, lst(lst(INT)), False),
        ({"type": "array"}, lst(S, True), False),
        (obj({"a": {"type": "integer"}, "b": {"type": "string"}}, ["a"]),
         pa.struct([pa.field("a", INT, nullable=False), pa.field("b", S)]), False),
        (obj({"a": {"type": "integer"}}, additionalProperties=False), pa.struct([pa.field("a", INT, nullable=False)]), False),
        ({**obj({"a": {"type": "integer"}}), "type": ["object", "null"]}, pa.struct([pa.field("a", INT, nullable=False)]), True),
        # no Arrow equivalent: JSON text, nullable
        ({"oneOf": [{"type": "string"}, {"type": "integer"}]}, S, True),
        ({"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]}, S, True),
        ({"type": ["string", "integer"]}, S, True),
        ({"enum": ["a", 1]}, S, True),
        ({"type": "object"}, S, True),
        ({"type": "object", "additionalProperties": {"type": "string"}}, S, True),
        ({"type": "object", "properties": {}}, S, True),
        ({**obj({"a": {"type": "integer"}}), "allOf": [{"required": ["a"]}]}, S, True),
        ({"type": "array", "prefixItems": [{"type": "string"}]}, S, True),
        ({"type": "null"}, S, True),
        ({}, S, True),
        ({"description": "anything"}, S, True),
        (True, S, True),
    ],
)  # fmt: skip
def test_mapping_table(schema: Any, arrow: pa.DataType, nullable: bool) -> None:
    node = schema_node(schema)
    assert node.arrow == arrow
    assert node.nullable is nullable


def test_struct_fields_are_nullable_unless_required_and_not_null() -> None:
    schema = obj(
        {
            "req": {"type": "string"},
            "opt": {"type": "string"},
            "req_null": {"type": ["string", "null"]},
        },
        ["req", "req_null"],
    )
    struct = arrow_of(schema)
    assert [(f.name, f.nullable) for f in struct] == [
        ("req", False),
        ("opt", True),
        ("req_null", True),
    ]


def test_local_refs_resolve_and_recursion_becomes_json_text() -> None:
    schema = obj(
        {
            "address": {"$ref": "#/$defs/address"},
            "old": {"$ref": "#/definitions/old"},
            "maybe": {"anyOf": [{"$ref": "#/$defs/address"}, {"type": "null"}]},
            "tree": {"$ref": "#/$defs/node"},
            "bad": {"$ref": "#/$defs/missing"},
        },
        ["address", "old", "tree"],
    )
    schema["$defs"] = {
        "address": obj({"city": {"type": "string"}}),
        "node": obj(
            {
                "value": {"type": "integer"},
                "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
            }
        ),
    }
    schema["definitions"] = {"old": {"type": "integer"}}
    struct = arrow_of(schema)
    address = pa.struct([pa.field("city", S, nullable=False)])
    assert struct.field("address").type == address
    assert struct.field("old").type == INT
    assert struct.field("maybe").type == address
    assert struct.field("maybe").nullable
    tree = struct.field("tree").type
    assert tree.field("value").type == INT
    assert tree.field("children").type == lst(S, True)  # the recursive reference: JSON text
    assert struct.field("bad").type == S


# ---- loading the schema -----------------------------------------------------------------


def test_load_schema_from_a_file_names_it_after_the_file(tmp_path: Path) -> None:
    path = tmp_path / "my review.v2.json"
    path.write_text(json.dumps(obj({"a": {"type": "string"}})), encoding="utf-8")
    schema, name = load_schema(str(path))
    assert schema["properties"] == {"a": {"type": "string"}}
    assert name == "my_review_v2"
    assert load_schema({"type": "object"}) == ({"type": "object"}, "response")


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "cannot read"),
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"type": "strin"}', "is not a valid JSON Schema at type"),
        (
            '{"type": "object", "properties": {"a": {"minimum": "one"}}}',
            "is not a valid JSON Schema at properties/a/minimum",
        ),
        ('{"$ref": "https://example.com/s.json"}', "is not local"),
        ('{"$ref": "#/$defs/nothing"}', "does not resolve"),
    ],
)
def test_schema_file_errors_are_one_line_naming_the_key(
    tmp_path: Path, content: str | None, says: str
) -> None:
    path = tmp_path / "schema.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(JobError) as info:
        load_extraction(RequestSpec(model="m", json_schema=str(path)))
    message = str(info.value)
    assert message.startswith("[request] json_schema: ")
    assert says in message
    assert "\n" not in message


def test_enum_values_that_look_like_refs_are_data() -> None:
    schema, _ = load_schema({"enum": [{"$ref": "https://example.com"}]})
    assert schema_node(schema).arrow == S


def test_load_extraction_per_mode(tmp_path: Path) -> None:
    assert load_extraction(RequestSpec(model="m")) is None
    plain = load_extraction(RequestSpec(model="m", response_format="json_object"))
    assert plain is not None
    assert plain.response_format() == {"type": "json_object"}
    assert plain.column == pa.field("parsed_json", S)
    assert plain.output_schema.names == ["parsed_json", "json_attempts"]
    assert plain.output_schema.field("json_attempts").type == pa.int32()

    schema = obj({"a": {"type": "string"}})
    strict = load_extraction(RequestSpec(model="m", json_schema=schema, strict=True))
    assert strict is not None
    assert strict.response_format() == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema, "strict": True},
    }
    assert strict.column == pa.field("parsed", pa.struct([pa.field("a", S, nullable=False)]))
    assert strict.output_schema.names == ["parsed", "json_attempts"]
    loose = load_extraction(RequestSpec(model="m", json_schema=schema))
    assert loose is not None
    assert loose.response_format()["json_schema"]["strict"] is False

    local = load_extraction(
        RequestSpec(model="m", response_format="json_object", json_schema=schema)
    )
    assert local is not None
    assert local.response_format() == {"type": "json_object"}
    assert local.column.name == "parsed"


# ---- parsing answers --------------------------------------------------------------------

REVIEW = obj(
    {
        "sentiment": {"type": "string", "enum": ["positive", "negative"]},
        "score": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    ["sentiment", "score"],
)


def test_a_valid_answer_becomes_the_struct_value() -> None:
    extraction = Extraction.from_schema("json_schema", REVIEW)
    parsed = extraction.parse('{"score": 4.0, "sentiment": "positive", "extra": 1}', "stop")
    assert parsed == {"sentiment": "positive", "score": 4, "tags": None}
    assert type(parsed["score"]) is int


@pytest.mark.parametrize(
    ("content", "finish_reason", "error", "says"),
    [
        ('{"sentiment": "positive", "score": 4}', "length", Truncated, "finish_reason length"),
        ('{"sentiment": "posi', "length", Truncated, "max_tokens"),
        (None, "stop", InvalidJson, "no content"),
        ('{"sentiment": "positive", "score": 4', "stop", InvalidJson, "not valid JSON"),
        ('```json\n{"sentiment": "positive", "score": 4}\n```', "stop", InvalidJson, "not valid JSON"),
        ('{"score": NaN, "sentiment": "positive"}', "stop", InvalidJson, "not valid JSON"),
        ('{"sentiment": "meh", "score": 4}', "stop", SchemaMismatch, "at sentiment: 'meh' is not one of"),
        ('{"score": 4}', "stop", SchemaMismatch, "'sentiment' is a required property"),
        ('{"sentiment": "positive", "score": 4.5}', "stop", SchemaMismatch, "at score: 4.5 is not of type 'integer'"),
        ('{"sentiment": "positive", "score": 4, "tags": [1]}', "stop", SchemaMismatch, "at tags/0"),
        ('["positive", 4]', "stop", SchemaMismatch, "is not of type 'object'"),
        ('{"sentiment": "positive", "score": 9223372036854775808}', "stop", SchemaMismatch,
         "does not fit its column: parsed.score: 9223372036854775808 does not fit int64"),
        ('{"sentiment": "positive", "score": 5E402}', "stop", SchemaMismatch,
         "the number 5E402 is too large for any column"),
        ('{"sentiment": "positive", "score": -1e999, "x": ', "stop", InvalidJson, "not valid JSON"),
        ('{"sentiment": "positive", "score": Infinity}', "stop", InvalidJson, "not valid JSON"),
    ],
)  # fmt: skip
def test_unusable_answers_are_classified(
    content: str | None, finish_reason: str, error: type[Exception], says: str
) -> None:
    with pytest.raises(error) as info:
        Extraction.from_schema("json_schema", REVIEW).parse(content, finish_reason)
    assert says in str(info.value)
    assert "\n" not in str(info.value)


def test_json_object_without_schema_keeps_normalised_json_text() -> None:
    extraction = Extraction("json_object")
    assert extraction.parse('{ "b": [1, 2.50],\n "a": {"y": null, "x": "é"} }', "stop") == (
        '{"a":{"x":"é","y":null},"b":[1,2.5]}'
    )
    with pytest.raises(InvalidJson, match="not an object"):
        extraction.parse("[1, 2]", "stop")
    with pytest.raises(SchemaMismatch, match="5E402 is too large"):
        extraction.parse('{"price": 5E402}', "stop")
    with pytest.raises(Truncated):
        extraction.parse('{"a": 1}', "length")


# ---- properties over generated schemas ---------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(root_schemas())
def test_generated_schemas_map_to_the_expected_arrow_type(gen: Gen) -> None:
    Draft202012Validator.check_schema(gen.schema)
    node = schema_node(gen.schema)
    assert node.arrow == gen.arrow
    assert not node.nullable


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(root_schemas(), st.data())
def test_valid_values_parse_and_round_trip_through_arrow(gen: Gen, data: st.DataObject) -> None:
    value = data.draw(gen.values)
    Draft202012Validator(gen.schema).validate(value)
    extraction = Extraction.from_schema("json_schema", gen.schema)

    parsed = extraction.parse(orjson.dumps(value).decode(), "stop")

    assert parsed == gen.expect(value)
    column = pa.array([parsed, None], type=extraction.column.type)
    column.validate(full=True)
    assert column.to_pylist() == [parsed, None]


@settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(root_schemas(), st.data())
def test_broken_answers_never_parse(gen: Gen, data: st.DataObject) -> None:
    value = data.draw(gen.values)
    extraction = Extraction.from_schema("json_schema", gen.schema)
    text = orjson.dumps(value).decode()

    with pytest.raises(InvalidJson):
        extraction.parse(text[: data.draw(st.integers(0, len(text) - 1))], "stop")
    with pytest.raises(Truncated):
        extraction.parse(text, "length")
    required = gen.schema["required"]
    if required:
        del value[data.draw(st.sampled_from(required))]
        with pytest.raises(SchemaMismatch):
            extraction.parse(orjson.dumps(value).decode(), "stop")

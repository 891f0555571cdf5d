"""Tests of the request builder: derived seeds, canonical bodies, hashes, templates, a job's builder."""

from __future__ import annotations

import datetime as dt
import hashlib
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import BadRowError
from pipeline.records import PromptRow
from pipeline.requests import (
    HeaderTemplates,
    RequestBuilder,
    derive_seed,
    encode_body,
    estimate_prompt_tokens,
    reask_seed,
    render_template,
    request_hash,
    template_fields,
)
from pipeline.spec import JobSpec, RequestSpec, parse_job


def spec(**fields: Any) -> RequestSpec:
    return RequestSpec(**{"model": "gpt-4o-mini", **fields})


def row(values: dict[str, Any], row_id: str = "r1", seq: int = 0, **extra: Any) -> PromptRow:
    return PromptRow(seq=seq, id=row_id, values=values, **extra)


def body_of(builder: RequestBuilder, prompt_row: PromptRow) -> dict[str, Any]:
    parsed: dict[str, Any] = orjson.loads(builder.build(prompt_row).body)
    return parsed


def documented_seed(base_seed: int, row_id: str) -> int:
    """The formula of ``pipeline.requests``'s docstring, written out independently."""
    digest = hashlib.sha256(f"{base_seed}:{row_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def assert_keys_sorted(value: Any) -> None:
    if isinstance(value, dict):
        assert list(value) == sorted(value)
        for item in value.values():
            assert_keys_sorted(item)
    elif isinstance(value, list):
        for item in value:
            assert_keys_sorted(item)


# ---- derived seed -----------------------------------------------------------------------


def test_derive_seed_pinned_value() -> None:
    # sha256("1234:r1") starts with these 32 bits; pinned so a formula change shows up
    assert derive_seed(1234, "r1") == documented_seed(1234, "r1")
    assert derive_seed(0, "0") == int(hashlib.sha256(b"0:0").hexdigest()[:8], 16) & 0x7FFFFFFF


@settings(max_examples=300)
@given(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.text())
def test_derive_seed_matches_formula_and_range(base_seed: int, row_id: str) -> None:
    seed = derive_seed(base_seed, row_id)

    assert seed == documented_seed(base_seed, row_id)
    assert 0 <= seed < 2**31
    assert derive_seed(base_seed, row_id) == seed


def test_different_ids_give_different_seeds() -> None:
    seeds = {derive_seed(42, f"row-{i}") for i in range(2000)}
    # 2000 draws from 2**31 values: a collision is possible but very unlikely
    assert len(seeds) >= 1999


def test_different_base_seeds_give_different_seeds() -> None:
    seeds = {derive_seed(base, "same-row") for base in range(500)}
    assert len(seeds) >= 499


def test_seed_in_body_is_the_derived_seed() -> None:
    builder = RequestBuilder(spec(seed=99), prompt_column="text")
    request = builder.build(row({"text": "hello"}, row_id="abc"))

    assert request.seed == derive_seed(99, "abc")
    assert orjson.loads(request.body)["seed"] == request.seed


def test_reask_seeds_follow_the_documented_derivation() -> None:
    assert reask_seed(99, "abc", 0) == derive_seed(99, "abc")
    assert reask_seed(99, "abc", 1) == documented_seed(99, "abc#json1")
    assert reask_seed(99, "abc", 2) == documented_seed(99, "abc#json2")
    assert len({reask_seed(99, "abc", k) for k in range(10)}) == 10


def test_reask_changes_only_the_seed() -> None:
    builder = RequestBuilder(
        spec(seed=99), prompt_column="text", response_format={"type": "json_object"}
    )
    first = builder.build(row({"text": "hello"}, row_id="abc"))
    again = builder.build(row({"text": "hello"}, row_id="abc"), reask=2)

    assert again.seed == reask_seed(99, "abc", 2) != first.seed
    assert again.request_hash != first.request_hash
    first_body, again_body = orjson.loads(first.body), orjson.loads(again.body)
    assert again_body.pop("seed") == again.seed
    assert first_body.pop("seed") == first.seed
    assert first_body == again_body


def test_response_format_is_sent_when_given() -> None:
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "r", "schema": {"type": "object"}, "strict": True},
    }
    builder = RequestBuilder(spec(), prompt_column="text", response_format=response_format)
    assert body_of(builder, row({"text": "hi"}))["response_format"] == response_format


def test_the_schema_keeps_its_property_order_and_the_rest_is_sorted() -> None:
    schema = {
        "type": "object",
        "properties": {"reasoning": {"type": "string"}, "answer": {"type": "string"}},
    }
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "r", "schema": schema, "strict": False},
    }
    builder = RequestBuilder(
        spec(params={"top_p": 1.0, "zeta": {"b": 1, "a": 2}}),
        prompt_column="text",
        response_format=response_format,
    )
    request = builder.build(row({"text": "hi"}))

    body = orjson.loads(request.body)
    assert list(body["response_format"]["json_schema"]["schema"]["properties"]) == [
        "reasoning",
        "answer",
    ]
    assert list(body) == sorted(body)
    assert list(body["zeta"]) == ["a", "b"]
    assert request.body == encode_body(body)
    assert request.body == builder.build(row({"text": "hi"})).body
    assert (
        b'"response_format":{"type":"json_schema","json_schema":{"name":"r","schema":'
        in request.body
    )


# ---- canonical body and hash ------------------------------------------------------------


def test_request_hash_is_sha256_of_the_exact_body() -> None:
    builder = RequestBuilder(spec(system="Be brief."), prompt_column="text")
    request = builder.build(row({"text": "héllo ✓"}))

    assert request.request_hash == hashlib.sha256(request.body).hexdigest()
    assert request.request_hash == request_hash(request.body)
    assert len(request.request_hash) == 64
    assert "héllo ✓".encode() in request.body  # UTF-8, not \u escapes


def test_body_is_compact_and_sorted() -> None:
    builder = RequestBuilder(
        spec(
            temperature=0.5,
            max_tokens=64,
            params={"top_p": 1.0, "stop": ["END"]},
            extra_body={"zeta": {"b": 1, "a": 2}, "alpha": True},
        ),
        prompt_column="text",
    )
    request = builder.build(row({"text": "hi"}))

    body = orjson.loads(request.body)
    assert list(body) == sorted(body)
    assert_keys_sorted(body)
    assert b": " not in request.body
    assert b", " not in request.body
    assert request.body == encode_body(body)


def test_encode_body_sorts_nested_keys() -> None:
    assert encode_body({"b": {"y": 1, "x": 2}, "a": [{"d": 1, "c": 2}]}) == (
        b'{"a":[{"c":2,"d":1}],"b":{"x":2,"y":1}}'
    )


@settings(max_examples=100)
@given(st.text(min_size=1).filter(str.strip), st.text(), st.integers())
def test_same_row_built_twice_gives_identical_bytes(text: str, row_id: str, seed: int) -> None:
    request_spec = spec(system="sys", seed=seed, temperature=0.0, params={"top_p": 0.5})
    first = RequestBuilder(request_spec, prompt_column="text").build(row({"text": text}, row_id))
    again = RequestBuilder(request_spec, prompt_column="text").build(row({"text": text}, row_id))

    assert first.body == again.body
    assert first.request_hash == again.request_hash
    assert first.seed == again.seed


def test_different_rows_give_different_hashes() -> None:
    builder = RequestBuilder(spec(), prompt_column="text")
    same_text = [builder.build(row({"text": "x"}, row_id=str(i))).request_hash for i in range(50)]
    assert len(set(same_text)) == 50  # the seed differs per id


# ---- templates --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "values", "expected"),
    [
        ("Summarize:\n{text}", {"text": "great shoes"}, "Summarize:\ngreat shoes"),
        ("{a} and {b} and {a}", {"a": "x", "b": "y"}, "x and y and x"),
        ("count: {n}", {"n": 3}, "count: 3"),
        ("{{text}}", {"text": "x"}, "{text}"),
        ("{{{text}}}", {"text": "x"}, "{x}"),
        ("a {{ b }} c", {}, "a { b } c"),
        (
            'Reply as {"summary": "..."} for: {text}',
            {"text": "t"},
            'Reply as {"summary": "..."} for: t',
        ),
        ("{ text } {0} {-x}", {"text": "t"}, "{ text } {0} {-x}"),
        ("no placeholders", {}, "no placeholders"),
    ],
)
def test_render_template(template: str, values: dict[str, Any], expected: str) -> None:
    assert render_template(template, values) == expected


def test_template_fields_in_order_of_first_use() -> None:
    assert template_fields("{b} {{a}} {a} {b} {c_1} {0}") == ["b", "a", "c_1"]


@pytest.mark.parametrize("values", [{"text": "x"}, {"text": "x", "author": None}])
def test_missing_placeholder_value_is_a_bad_row(values: dict[str, Any]) -> None:
    builder = RequestBuilder(spec(template="{text} by {author}"), prompt_column="text")

    with pytest.raises(BadRowError, match=r"\{author\}"):
        builder.build(row(values))


def test_template_renders_into_user_message() -> None:
    builder = RequestBuilder(spec(template="Title: {title}\n{text}"), prompt_column="text")
    body = body_of(builder, row({"text": "body", "title": "T"}))
    assert body["messages"] == [{"role": "user", "content": "Title: T\nbody"}]


# ---- bad rows ---------------------------------------------------------------------------


def test_null_prompt_is_a_bad_row() -> None:
    builder = RequestBuilder(spec(), prompt_column="text")
    with pytest.raises(BadRowError, match=r"prompt column 'text' is null"):
        builder.build(row({"text": None}))


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_prompt_is_a_bad_row(text: str) -> None:
    builder = RequestBuilder(spec(), prompt_column="text")
    with pytest.raises(BadRowError, match=r"prompt column 'text' is empty"):
        builder.build(row({"text": text}))


@pytest.mark.parametrize(("text", "says"), [(None, "is null"), ("", "is empty"), (" ", "is empty")])
def test_blank_prompt_under_a_template_is_a_bad_row(text: str | None, says: str) -> None:
    builder = RequestBuilder(spec(template="Summarize: {text}"), prompt_column="text")
    with pytest.raises(BadRowError, match=f"prompt column 'text' {says}"):
        builder.build(row({"text": text}))


def test_row_with_problem_is_a_bad_row() -> None:
    builder = RequestBuilder(spec(), prompt_column="text")
    bad = row({}, problem="not valid JSON (unexpected character)", line=3)
    with pytest.raises(BadRowError, match=r"not valid JSON \(unexpected character\)"):
        builder.build(bad)


@pytest.mark.parametrize(
    ("messages", "says"),
    [
        (None, "non-empty list"),
        ([], "non-empty list"),
        ("hello", "non-empty list"),
        ({"role": "user", "content": "x"}, "non-empty list"),
        (["hello"], r"messages\[0\] has no valid role"),
        ([{"content": "x"}], r"messages\[0\] has no valid role"),
        (
            [{"role": "user", "content": "x"}, {"role": "robot", "content": "y"}],
            r"messages\[1\] has no valid role",
        ),
        ([{"role": "user"}], r"messages\[0\] has no content"),
    ],
)
def test_bad_messages_are_bad_rows(messages: Any, says: str) -> None:
    builder = RequestBuilder(spec(), messages_column="messages")
    with pytest.raises(BadRowError, match=says):
        builder.build(row({"messages": messages}))


def test_bad_row_error_type() -> None:
    assert BadRowError.error_type == "bad_input"


# ---- messages and body ------------------------------------------------------------------


def test_system_message_is_prepended() -> None:
    builder = RequestBuilder(spec(system="You are terse."), prompt_column="text")
    assert body_of(builder, row({"text": "hi"}))["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "hi"},
    ]


def test_no_system_message_without_system() -> None:
    builder = RequestBuilder(spec(), prompt_column="text")
    assert body_of(builder, row({"text": "hi"}))["messages"] == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (12, "12"),
        (12.5, "12.5"),
        (True, "true"),
        (["x", "y"], '["x","y"]'),
        ({"k": 1}, '{"k":1}'),
        (dt.date(2026, 1, 2), "2026-01-02"),
        (Decimal("12.50"), "12.50"),
        ([Decimal("1.5"), dt.datetime(2026, 1, 2, 3, 4, 5)], '["1.5","2026-01-02T03:04:05"]'),
    ],
)
def test_non_string_prompt_is_sent_as_json_text(value: object, text: str) -> None:
    builder = RequestBuilder(spec(), prompt_column="text")
    assert body_of(builder, row({"text": value}))["messages"] == [{"role": "user", "content": text}]


@pytest.mark.parametrize(
    ("value", "text"), [(5, "5"), (False, "false"), (["a", "b"], '["a","b"]'), (None, None)]
)
def test_template_values_are_json_text_never_python_reprs(value: object, text: str | None) -> None:
    builder = RequestBuilder(spec(template="Tags: {tags}."), prompt_column="text")
    the_row = row({"text": "x", "tags": value})
    if text is None:
        with pytest.raises(BadRowError, match=r"\{tags\} has no value"):
            builder.build(the_row)
    else:
        content = body_of(builder, the_row)["messages"][0]["content"]
        assert content == f"Tags: {text}."


@pytest.mark.parametrize(("value", "says"), [(float("nan"), "nan"), (b"\x00", "bytes")])
def test_prompt_values_json_cannot_hold_are_bad_rows(value: object, says: str) -> None:
    builder = RequestBuilder(spec(), prompt_column="text")
    with pytest.raises(BadRowError, match=says):
        builder.build(row({"text": value}))


def test_messages_column_is_sent_as_is() -> None:
    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": [{"type": "text", "text": "look"}]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "and?"},
    ]
    builder = RequestBuilder(spec(), messages_column="messages")
    assert body_of(builder, row({"messages": messages}))["messages"] == messages


def test_params_and_extra_body_are_merged_extra_body_wins() -> None:
    builder = RequestBuilder(
        spec(
            temperature=0.2,
            max_tokens=128,
            seed=5,
            params={"top_p": 0.5, "stop": ["END"], "n": 1},
            extra_body={"top_k": 1, "top_p": 0.9},
        ),
        prompt_column="text",
    )
    request = builder.build(row({"text": "hi"}, row_id="7"))

    assert orjson.loads(request.body) == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.2,
        "max_tokens": 128,
        "seed": derive_seed(5, "7"),
        "top_p": 0.9,
        "stop": ["END"],
        "n": 1,
        "top_k": 1,
    }
    assert request.max_tokens == 128


def test_unset_optional_fields_are_left_out() -> None:
    body = body_of(RequestBuilder(spec(), prompt_column="text"), row({"text": "hi"}))
    assert set(body) == {"model", "messages", "seed"}


# ---- token estimate ---------------------------------------------------------------------


def test_estimate_prompt_tokens() -> None:
    assert estimate_prompt_tokens([]) == 3
    assert estimate_prompt_tokens([{"role": "user", "content": "x" * 400}]) == 100 + 4 + 3
    two = [{"role": "system", "content": "a" * 40}, {"role": "user", "content": "b" * 40}]
    assert estimate_prompt_tokens(two) == 20 + 8 + 3
    parts = [
        {"role": "user", "content": [{"type": "text", "text": "c" * 80}, {"type": "image_url"}]}
    ]
    assert estimate_prompt_tokens(parts) == 20 + 85 + 4 + 3  # a flat 85 per image
    assert estimate_prompt_tokens([{"role": "assistant", "content": None}]) == 7


def test_estimate_grows_with_length() -> None:
    estimates = [
        estimate_prompt_tokens([{"role": "user", "content": "w " * n}]) for n in range(0, 2000, 100)
    ]
    assert estimates == sorted(estimates)
    assert estimates[-1] > estimates[0] + 900


def test_request_carries_the_estimate() -> None:
    builder = RequestBuilder(spec(system="s" * 40), prompt_column="text")
    request = builder.build(row({"text": "t" * 400}))
    assert request.estimated_prompt_tokens == (40 + 400) // 4 + 2 * 4 + 3
    assert request.max_tokens is None


# ---- a job's builder --------------------------------------------------------------------


def job(**sections: dict[str, Any]) -> JobSpec:
    data: dict[str, Any] = {
        "name": "j",
        "input": {"path": "rows.jsonl", "prompt_column": "text"},
        "request": {"model": "gpt-4o-mini", "system": "Be brief.", "temperature": 0.0},
        "endpoint": {"base_url": "http://127.0.0.1:9/v1"},
    }
    for name, fields in sections.items():
        data[name] = {**data.get(name, {}), **fields}
    return parse_job(data)


def test_for_job_builds_what_the_job_describes() -> None:
    the_job = job(endpoint={"headers": {"x-static": "on", "x-trace": "t-{id}"}})
    builder = RequestBuilder.for_job(the_job)
    by_hand = RequestBuilder(
        the_job.request,
        prompt_column="text",
        headers=HeaderTemplates({"x-trace": "t-{id}"}),
    )

    request = builder.build(row({"text": "hi"}, row_id="r7"))

    assert request == by_hand.build(row({"text": "hi"}, row_id="r7"))
    assert request.headers == {"x-trace": "t-r7"}  # the static header goes on the client
    assert orjson.loads(request.body)["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]


def test_for_job_without_templated_headers_sends_none() -> None:
    request = RequestBuilder.for_job(job(endpoint={"headers": {"x-static": "on"}})).build(
        row({"text": "hi"})
    )
    assert request.headers is None


def test_for_job_reads_the_messages_column_and_takes_a_response_format() -> None:
    the_job = job(input={"prompt_column": None, "messages_column": "messages"})
    fmt = {"type": "json_object"}
    messages = [{"role": "user", "content": "hi"}]

    body = orjson.loads(
        RequestBuilder.for_job(the_job, response_format=fmt).build(row({"messages": messages})).body
    )

    assert body["messages"] == messages
    assert body["response_format"] == fmt

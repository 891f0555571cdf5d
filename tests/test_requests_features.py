"""The request builder's per-row model, seed and headers, streaming, tools and images."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.errors import BadRowError
from pipeline.records import PromptRow
from pipeline.requests import HeaderTemplates, RequestBuilder, derive_seed, image_url, split_headers
from pipeline.requests.images import image_type
from pipeline.spec import RequestSpec

WEATHER = {"type": "function", "function": {"name": "get_weather"}}


def spec(**fields: Any) -> RequestSpec:
    if not {"models", "model_column"} & fields.keys():
        fields.setdefault("model", "gpt-4o-mini")
    return RequestSpec(**fields)


def row(values: dict[str, Any], row_id: str = "r1") -> PromptRow:
    return PromptRow(seq=0, id=row_id, values=values)


def body(
    builder: RequestBuilder, prompt_row: PromptRow, model: str | None = None
) -> dict[str, Any]:
    parsed: dict[str, Any] = orjson.loads(builder.build(prompt_row, model).body)
    return parsed


def test_plain_jobs_send_no_headers_and_no_stream_fields() -> None:
    request = RequestBuilder(spec(), prompt_column="text").build(row({"text": "hi"}))
    assert request.headers is None
    assert request.model == "gpt-4o-mini"
    assert set(orjson.loads(request.body)) == {"model", "messages", "seed"}


def test_stream_asks_for_usage() -> None:
    sent = body(RequestBuilder(spec(stream=True), prompt_column="text"), row({"text": "hi"}))
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}


def test_tools_and_params_pass_through() -> None:
    request_spec = spec(
        tools=[WEATHER],
        tool_choice="required",
        params={
            "n": 2,
            "top_p": 0.9,
            "stop": ["END"],
            "logit_bias": {"50256": -100},
            "user": "u1",
            "logprobs": True,
        },
    )
    sent = body(RequestBuilder(request_spec, prompt_column="text"), row({"text": "hi"}))
    assert sent["tools"] == [WEATHER]
    assert sent["tool_choice"] == "required"
    assert sent["n"] == 2
    assert sent["logit_bias"] == {"50256": -100}
    assert sent["user"] == "u1"


def test_models_share_the_seed_and_differ_in_hash() -> None:
    builder = RequestBuilder(spec(models=["a/x", "b/y"], seed=5), prompt_column="text")
    first, second = (builder.build(row({"text": "hi"}), model) for model in ("a/x", "b/y"))
    assert first.seed == second.seed == derive_seed(5, "r1")
    assert first.request_hash != second.request_hash
    assert orjson.loads(second.body)["model"] == "b/y"
    assert builder.build(row({"text": "hi"})).model == "a/x"


def test_model_column() -> None:
    builder = RequestBuilder(spec(model_column="model"), prompt_column="text")
    assert (
        body(builder, row({"text": "hi", "model": "anthropic/claude-3-opus"}))["model"]
        == "anthropic/claude-3-opus"
    )
    with pytest.raises(BadRowError, match="model column 'model' is null"):
        builder.build(row({"text": "hi", "model": None}))
    with pytest.raises(BadRowError, match="model column 'model' is not a model name"):
        builder.build(row({"text": "hi", "model": "  "}))


def test_seed_column() -> None:
    builder = RequestBuilder(spec(seed_column="s"), prompt_column="text")
    assert builder.build(row({"text": "hi", "s": 42})).seed == 42
    assert body(builder, row({"text": "hi", "s": -1}))["seed"] == -1


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (None, "seed column 's' is null"),
        ("42", "seed column 's' must hold 64-bit integers, got '42'"),
        (True, "seed column 's' must hold 64-bit integers, got True"),
        (2**63, f"seed column 's' must hold 64-bit integers, got {2**63}"),
    ],
)
def test_seed_column_value_that_is_not_a_seed_is_bad_input(value: Any, says: str) -> None:
    builder = RequestBuilder(spec(seed_column="s"), prompt_column="text")
    with pytest.raises(BadRowError) as info:
        builder.build(row({"text": "hi", "s": value}))
    assert str(info.value) == says


def test_header_templates_split_and_render() -> None:
    static, templates = split_headers(
        {
            "x-portkey-virtual-key": "vk-1",
            "x-portkey-config": '{"retry": {"attempts": 3}}',
            "x-portkey-trace-id": "{id}",
            "x-portkey-metadata": "{meta}",
        }
    )
    assert static == {
        "x-portkey-virtual-key": "vk-1",
        "x-portkey-config": '{"retry": {"attempts": 3}}',
    }
    assert templates is not None
    assert templates.columns() == ["meta"]
    builder = RequestBuilder(spec(), prompt_column="text", headers=templates)
    request = builder.build(row({"text": "hi", "meta": '{"_user": "ann"}'}, row_id="r7"))
    assert request.headers == {"x-portkey-trace-id": "r7", "x-portkey-metadata": '{"_user": "ann"}'}
    assert split_headers({"a": "b"}) == ({"a": "b"}, None)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (None, "[endpoint] headers.x-meta: template placeholder {meta} has no value in this row"),
        ("   ", "[endpoint] headers.x-meta: renders empty for this row"),
        ("a\nb", "not a valid header value"),
        ("café", "not a valid header value"),
    ],
)
def test_header_value_that_cannot_be_sent_is_bad_input(value: Any, says: str) -> None:
    builder = RequestBuilder(
        spec(), prompt_column="text", headers=HeaderTemplates({"x-meta": "{meta}"})
    )
    with pytest.raises(BadRowError) as info:
        builder.build(row({"text": "hi", "meta": value}))
    assert says in str(info.value)


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 8


def test_image_from_url_and_from_file(tmp_path: Path) -> None:
    builder = RequestBuilder(
        spec(image_column="image", system="Look.", image_dir=str(tmp_path)), prompt_column="text"
    )
    assert builder.reads_files
    sent = body(builder, row({"text": "What is it?", "image": "https://example.com/cat.jpg"}))
    assert sent["messages"][0] == {"role": "system", "content": "Look."}
    assert sent["messages"][1]["content"] == [
        {"type": "text", "text": "What is it?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]
    (tmp_path / "cat.jpg").write_bytes(PNG)  # the bytes name the type, not the extension
    for value in ["cat.jpg", str(tmp_path / "cat.jpg"), "./sub/../cat.jpg"]:
        (tmp_path / "sub").mkdir(exist_ok=True)
        url = body(builder, row({"text": "hi", "image": value}))["messages"][1]["content"][1][
            "image_url"
        ]["url"]
        assert url == "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert not RequestBuilder(spec(), prompt_column="text").reads_files


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (None, "image column 'image' is null"),
        (3, "image column 'image' must hold a URL or a file path, got 3"),
        ("missing/cat.png", "image file not found: missing/cat.png"),
        ("notes.png", "image file notes.png: not a PNG, JPEG, GIF or WebP image"),
        ("innocent.png", "image file innocent.png: outside [request] image_dir"),
        ("../secret.png", "image file ../secret.png: outside [request] image_dir"),
        ("huge.png", "image file huge.png: over the 20,971,520-byte limit"),
    ],
)
def test_image_that_cannot_be_sent_is_bad_input(tmp_path: Path, value: Any, says: str) -> None:
    images = tmp_path / "img"
    images.mkdir()
    (images / "notes.png").write_text("not an image")
    (tmp_path / "secret.png").write_bytes(PNG)
    (images / "innocent.png").symlink_to(tmp_path / "secret.png")
    with (images / "huge.png").open("wb") as huge:
        huge.write(PNG)
        huge.truncate(20 * 1024 * 1024 + 1)
    with pytest.raises(BadRowError) as info:
        image_url(value, "image", images)
    assert str(info.value).startswith(says)


def test_local_images_are_opt_in(tmp_path: Path) -> None:
    (tmp_path / "cat.png").write_bytes(PNG)
    with pytest.raises(BadRowError, match=r"read only inside \[request\] image_dir \(not set\)"):
        image_url(str(tmp_path / "cat.png"), "image")
    assert image_url("https://example.com/a.png", "image") == "https://example.com/a.png"


@pytest.mark.parametrize(
    ("head", "mime"),
    [
        (PNG, "image/png"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 8, "image/jpeg"),
        (b"GIF89a" + b"\x00" * 6, "image/gif"),
        (b"RIFF\x00\x00\x00\x00WEBP", "image/webp"),
        (b"root:x:0:0:root:/root", None),
    ],
)
def test_image_type_comes_from_magic_bytes(head: bytes, mime: str | None) -> None:
    assert image_type(head) == mime


def test_n_choices_multiply_the_completion_bound_the_limits_count() -> None:
    from pipeline.records import PromptRow
    from pipeline.requests import RequestBuilder
    from pipeline.spec import RequestSpec

    row = PromptRow(seq=0, id="a", values={"text": "hello"})
    one = RequestBuilder(RequestSpec(model="m", max_tokens=50), prompt_column="text").build(row)
    three = RequestBuilder(
        RequestSpec(model="m", max_tokens=50, params={"n": 3}), prompt_column="text"
    ).build(row)
    assert one.max_tokens == 50
    assert three.max_tokens == 150
    assert b'"max_tokens":50' in three.body


def test_max_completion_tokens_in_params_bounds_the_completion_too() -> None:
    from pipeline.records import PromptRow
    from pipeline.requests import RequestBuilder
    from pipeline.spec import RequestSpec

    row = PromptRow(seq=0, id="a", values={"text": "hello"})
    spec = RequestSpec(model="o4-mini", params={"max_completion_tokens": 400, "n": 2})
    assert RequestBuilder(spec, prompt_column="text").build(row).max_tokens == 800

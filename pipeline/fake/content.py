"""What the fake says: request parsing, its own tokenizer, completion and error bodies.

Content depends only on (messages, seed, choice index), so it is the same across runs
and processes. With ``response_format`` the content is JSON (see ``structured.py``),
cut at ``max_tokens`` tokens with ``finish_reason = "length"`` like any other answer.
Tokens are counted as matches of ``\\w+|[^\\w\\s]`` (deliberately not chars/4);
an image part counts ``IMAGE_TOKENS``. With ``tools`` (and ``tool_choice`` not "none")
every choice is a call of the first tool, or of the one ``tool_choice`` names, with
arguments shaped by its parameters schema, ``content`` null and finish reason "tool_calls".

Usage carries OpenAI's details: ``prompt_tokens_details.cached_tokens`` is
``floor(prompt_tokens * cached_share)``, and models named ``o...`` (``o3-mini``,
``openai/o4-mini``) "reason": ``completion_tokens_details.reasoning_tokens`` is twice
the visible tokens, and counts in ``completion_tokens``, as OpenAI counts it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import random
import re
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.fake.config import ContentFault
from pipeline.fake.structured import (
    SchemaValues,
    break_json,
    break_schema,
    json_object_answer,
    strict_problem,
)

# Token cost charged for the completion when the request sets no max_tokens.
DEFAULT_MAX_TOKENS = 16
MAX_CHOICES = 128
# Prompt tokens charged per image part (OpenAI's low-detail price).
IMAGE_TOKENS = 85
IMAGE_FORMATS = ("png", "jpeg", "gif", "webp")
SYSTEM_FINGERPRINT = "fp_fake0001"

_DATA_URL = re.compile(rf"data:image/({'|'.join(IMAGE_FORMATS)});base64,([A-Za-z0-9+/]+={{0,2}})")

_TOKEN = re.compile(r"\w+|[^\w\s]")
_SCHEMA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_VOCABULARY = (
    "the", "a", "model", "answer", "data", "batch", "request", "token", "value", "result",
    "simple", "quick", "careful", "large", "small", "every", "some", "many", "few", "each",
    "is", "was", "seems", "becomes", "remains", "returns", "keeps", "makes", "finds", "shows",
    "river", "mountain", "signal", "window", "garden", "engine", "letter", "market", "bridge",
    "forest", "number", "pattern", "question", "system", "record", "table", "column", "row",
    "and", "but", "or", "so", "because", "while", "with", "without", "under", "over",
    "today", "again", "here", "there",
)  # fmt: skip


class InvalidRequestError(Exception):
    """The body is not a chat completion request this server understands (HTTP 400)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """What ``response_format`` asked for: any JSON object, or a value of ``schema``."""

    kind: str  # "json_object" or "json_schema"
    schema: Any = None
    name: str = ""


JSON_OBJECT = ResponseFormat("json_object")


@dataclass(frozen=True, slots=True)
class IncomingChat:
    """A chat completion request as the server received it: the parts of the body that shape
    the answer. (The client builds its own, ``pipeline.records.ChatRequest``.)"""

    model: str
    messages_key: bytes  # canonical JSON of the messages
    prompt_tokens: int
    seed: int | None
    max_tokens: int | None
    n: int
    response_format: ResponseFormat | None = None
    fields: frozenset[str] = frozenset()
    stream: bool = False
    include_usage: bool = False
    tool: dict[str, Any] | None = None  # the function to call instead of answering in text

    @property
    def cost_tokens(self) -> int:
        """Tokens charged against a tokens-per-minute limit, as providers count them."""
        return self.prompt_tokens + (
            DEFAULT_MAX_TOKENS if self.max_tokens is None else self.max_tokens
        )


def count_tokens(text: str) -> int:
    """The fake's token count of a text."""
    return len(_TOKEN.findall(text))


def parse_request(body: bytes) -> IncomingChat:
    """Read a chat completion request body; raise ``InvalidRequestError`` if it is unusable."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequestError(
            "We could not parse the JSON body of your request. Please send valid JSON."
        ) from None
    if not isinstance(payload, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("you must provide a model parameter", "model")
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("'messages' must be a non-empty array", "messages")
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequestError("'stream' must be a boolean", "stream")
    max_tokens = _optional_int(payload, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _optional_int(payload, "max_tokens", 1)
    n = _optional_int(payload, "n", 1)
    if n is not None and n > MAX_CHOICES:
        raise InvalidRequestError(f"'n' must be at most {MAX_CHOICES}", "n")
    prompt_tokens = 3
    for index, message in enumerate(messages):
        text, images = _message_parts(message, index)
        prompt_tokens += count_tokens(text) + 4 + IMAGE_TOKENS * images
    return IncomingChat(
        model=model,
        messages_key=orjson.dumps(messages, option=orjson.OPT_SORT_KEYS),
        prompt_tokens=prompt_tokens,
        seed=_optional_int(payload, "seed", None),
        max_tokens=max_tokens,
        n=1 if n is None else n,
        response_format=_response_format(payload.get("response_format")),
        fields=frozenset(payload),
        stream=stream,
        include_usage=stream and _include_usage(payload),
        tool=_chosen_tool(payload),
    )


def _response_format(value: Any) -> ResponseFormat | None:
    """The ``response_format`` field, checked the way OpenAI checks it (400 otherwise)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequestError(
            "Invalid type for 'response_format': expected an object.", "response_format"
        )
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return JSON_OBJECT
    if kind != "json_schema":
        raise InvalidRequestError(
            f"Invalid value: {kind!r}. Supported values are: 'text', 'json_object' and 'json_schema'.",
            "response_format.type",
        )
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        raise InvalidRequestError(
            "Missing required parameter: 'response_format.json_schema'.",
            "response_format.json_schema",
        )
    name = spec.get("name")
    if not isinstance(name, str) or not _SCHEMA_NAME.fullmatch(name):
        raise InvalidRequestError(
            "Invalid 'response_format.json_schema.name': expected 1 to 64 letters, digits, '_' or '-'.",
            "response_format.json_schema.name",
        )
    schema = spec.get("schema", {})
    strict = spec.get("strict")
    if not isinstance(schema, dict) or not isinstance(strict, bool | None):
        bad = "schema" if not isinstance(schema, dict) else "strict"
        raise InvalidRequestError(
            f"Invalid type for 'response_format.json_schema.{bad}'.",
            f"response_format.json_schema.{bad}",
        )
    if strict:
        problem = strict_problem(schema, name)
        if problem is not None:
            raise InvalidRequestError(problem, "response_format")
    return ResponseFormat("json_schema", schema, name)


def completion(
    chat: IncomingChat,
    completion_id: str,
    created: int,
    fault: ContentFault | None = None,
    cached_share: float = 0.0,
    prose: bool = False,
) -> dict[str, Any]:
    """The answer to ``chat`` as a ``chat.completion`` object; ``fault`` spoils the content
    of a JSON-mode answer; ``prose``: text answers of 100 to 300 tokens (``generate_prose``)."""
    choices = []
    completion_tokens = 0
    for index in range(chat.n):
        message: dict[str, Any]
        if chat.tool is not None:
            call, tokens = generate_tool_call(chat.messages_key, chat.seed, index, chat.tool)
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
            finish_reason = "tool_calls"
        elif chat.response_format is None:
            generate = generate_prose if prose else generate_content
            content, tokens, finish_reason = generate(
                chat.messages_key, chat.seed, index, chat.max_tokens
            )
            message = {"role": "assistant", "content": content}
        else:
            content, tokens, finish_reason = generate_json_content(
                chat.messages_key, chat.seed, index, chat.max_tokens, chat.response_format, fault
            )
            message = {"role": "assistant", "content": content}
        completion_tokens += tokens
        choices.append(
            {"index": index, "message": message, "logprobs": None, "finish_reason": finish_reason}
        )
    reasoning_tokens = 2 * completion_tokens if is_reasoning_model(chat.model) else 0
    completion_tokens += reasoning_tokens
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": chat.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": choices,
        "usage": {
            "prompt_tokens": chat.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": chat.prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": int(chat.prompt_tokens * cached_share)},
            "completion_tokens_details": {"reasoning_tokens": reasoning_tokens},
        },
    }


def _rng(messages_key: bytes, seed: int | None, index: int) -> random.Random:
    digest = hashlib.sha256(b"%b\x00%r\x00%d" % (messages_key, seed, index)).digest()
    return random.Random(int.from_bytes(digest[:8]))


def generate_tool_call(
    messages_key: bytes, seed: int | None, index: int, tool: dict[str, Any]
) -> tuple[dict[str, Any], int]:
    """Return (tool call, completion tokens): a call of ``tool`` with arguments that fit its
    ``parameters`` schema's property types (strings, numbers, booleans; others null)."""
    rng = _rng(messages_key, seed, index)
    function = tool["function"]
    parameters = function.get("parameters")
    properties = parameters.get("properties") if isinstance(parameters, dict) else None
    arguments: dict[str, Any] = {}
    for name, schema in sorted((properties or {}).items()):
        kind = schema.get("type") if isinstance(schema, dict) else None
        if kind == "string":
            arguments[name] = " ".join(rng.choices(_VOCABULARY, k=rng.randint(1, 3)))
        elif kind == "integer":
            arguments[name] = rng.randint(0, 100)
        elif kind == "number":
            arguments[name] = round(rng.uniform(0, 100), 2)
        elif kind == "boolean":
            arguments[name] = rng.random() < 0.5
        else:
            arguments[name] = None
    text = orjson.dumps(arguments).decode()
    call = {
        "id": f"call_{rng.getrandbits(64):016x}",
        "type": "function",
        "function": {"name": function["name"], "arguments": text},
    }
    return call, count_tokens(function["name"]) + count_tokens(text)


def is_reasoning_model(model: str) -> bool:
    """Whether the fake reports reasoning tokens for this model (its name starts with "o")."""
    return model.rsplit("/", 1)[-1].startswith("o")


def generate_content(
    messages_key: bytes, seed: int | None, index: int, max_tokens: int | None
) -> tuple[str, int, str]:
    """Return (content, completion tokens, finish reason) for one choice.

    8 to 60 words ending with a period, cut to ``max_tokens`` tokens ("length") if longer.
    """
    rng = _rng(messages_key, seed, index)
    words = rng.choices(_VOCABULARY, k=rng.randint(8, 60))
    words[0] = words[0].capitalize()
    if max_tokens is not None and max_tokens <= len(words):  # the period is one more token
        return " ".join(words[:max_tokens]), max_tokens, "length"
    return " ".join(words) + ".", len(words) + 1, "stop"


PROSE_TOKENS = (100, 300)
"""How many tokens a prose answer has before ``max_tokens`` cuts it."""


def generate_prose(
    messages_key: bytes, seed: int | None, index: int, max_tokens: int | None
) -> tuple[str, int, str]:
    """Return (content, completion tokens, finish reason) for one choice of a realistic
    answer: sentences of 6 to 20 words, ``PROSE_TOKENS`` tokens in all (each word and each
    period is one), cut to ``max_tokens`` tokens ("length") if longer."""
    rng = _rng(messages_key, seed, index)
    total = rng.randint(*PROSE_TOKENS)
    tokens: list[str] = []
    while len(tokens) < total:
        left, words = total - len(tokens), rng.randint(6, 20)
        if left - words - 1 < 7:  # the last sentence takes what is left
            words = left - 1
        sentence = rng.choices(_VOCABULARY, k=words)
        sentence[0] = sentence[0].capitalize()
        tokens += [*sentence, "."]
    finish = "stop"
    if max_tokens is not None and max_tokens < total:
        tokens, finish = tokens[:max_tokens], "length"
    return " ".join(tokens).replace(" .", "."), len(tokens), finish


def generate_json_content(
    messages_key: bytes,
    seed: int | None,
    index: int,
    max_tokens: int | None,
    response_format: ResponseFormat,
    fault: ContentFault | None = None,
) -> tuple[str, int, str]:
    """Return (content, completion tokens, finish reason) for one JSON-mode choice."""
    rng = _rng(messages_key, seed, index)
    schema = response_format.schema
    if schema is None:
        value: Any = json_object_answer(rng, _VOCABULARY)
    else:
        value = SchemaValues(schema, rng, _VOCABULARY).value(schema)
        if fault is ContentFault.SCHEMA_MISMATCH:
            value = break_schema(schema, value)
    text = orjson.dumps(value).decode()
    if fault is ContentFault.INVALID_JSON:
        text = break_json(text, rng)
    if max_tokens is None:
        return text, count_tokens(text), "stop"
    ends = [match.end() for match in _TOKEN.finditer(text)]
    if len(ends) > max_tokens:
        return text[: ends[max_tokens - 1]], max_tokens, "length"
    return text, len(ends), "stop"


def error_body(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> bytes:
    """An OpenAI-shaped error body."""
    return orjson.dumps(
        {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    )


def _optional_int(payload: dict[str, Any], key: str, minimum: int | None) -> int | None:
    value = payload.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequestError(f"'{key}' must be an integer", key)
    if minimum is not None and value < minimum:
        raise InvalidRequestError(f"'{key}' must be at least {minimum}", key)
    return value


def _message_parts(message: object, index: int) -> tuple[str, int]:
    """The text of one message (its string content, or its text parts joined) and how many
    images it holds; a malformed image part is a 400."""
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise InvalidRequestError(
            f"messages[{index}] must be an object with a 'role'", f"messages[{index}]"
        )
    content = message.get("content")
    if content is None or isinstance(content, str):
        return content or "", 0
    if isinstance(content, list):
        texts: list[str] = []
        images = 0
        for number, part in enumerate(content):
            if not isinstance(part, dict):
                continue
            if part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif part.get("type") == "image_url":
                _check_image(
                    part.get("image_url"), f"messages[{index}].content[{number}].image_url"
                )
                images += 1
        return " ".join(texts), images
    raise InvalidRequestError(
        f"messages[{index}].content must be a string or an array of parts",
        f"messages[{index}].content",
    )


def _check_image(image: object, param: str) -> None:
    """An ``image_url`` part names an http(s) URL or carries a base64 data URL of an image."""
    url = image.get("url") if isinstance(image, dict) else None
    if not isinstance(url, str):
        raise InvalidRequestError("image_url must be an object with a 'url' string", param)
    if url.startswith(("http://", "https://")):
        return
    match = _DATA_URL.fullmatch(url)
    if match is None:
        raise InvalidRequestError(
            "Invalid image_url: expected an http(s) URL or a data URL "
            f"(data:image/{{{'|'.join(IMAGE_FORMATS)}}};base64,...)",
            param,
        )
    try:
        base64.b64decode(match.group(2), validate=True)
    except binascii.Error:
        raise InvalidRequestError("Invalid base64 image_url.", param) from None


def _include_usage(payload: dict[str, Any]) -> bool:
    options = payload.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise InvalidRequestError(
            "'stream_options.include_usage' must be a boolean", "stream_options"
        )
    return bool(options.get("include_usage", False))


def _chosen_tool(payload: dict[str, Any]) -> dict[str, Any] | None:
    """The tool the answer calls: the named one, else the first; None when tools are off."""
    tools = payload.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list) or not tools:
        raise InvalidRequestError("'tools' must be a non-empty array", "tools")
    for number, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            tool.get("type") != "function"
            or not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
            or not function["name"]
        ):
            raise InvalidRequestError(
                f"tools[{number}] must be {{'type': 'function', 'function': {{'name': ...}}}}",
                f"tools[{number}]",
            )
    choice = payload.get("tool_choice", "auto")
    if choice == "none":
        return None
    if choice in ("auto", "required"):
        return dict(tools[0])
    wanted = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    for tool in tools:
        if tool["function"]["name"] == wanted:
            return dict(tool)
    raise InvalidRequestError(
        "'tool_choice' must be none, auto, required or name one of the tools", "tool_choice"
    )

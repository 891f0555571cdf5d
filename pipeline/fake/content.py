"""What the fake says: request parsing, its own tokenizer, completion and error bodies.

Content depends only on (messages, seed, choice index), so it is the same across runs
and processes. Tokens are counted as matches of ``\\w+|[^\\w\\s]`` (deliberately not chars/4).

Usage carries OpenAI's details: ``prompt_tokens_details.cached_tokens`` is
``floor(prompt_tokens * cached_share)``, and models named ``o...`` (``o3-mini``,
``openai/o4-mini``) "reason": ``completion_tokens_details.reasoning_tokens`` is twice
the visible tokens, and counts in ``completion_tokens``, as OpenAI counts it.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from typing import Any

import orjson

# Token cost charged for the completion when the request sets no max_tokens.
DEFAULT_MAX_TOKENS = 16
MAX_CHOICES = 128

_TOKEN = re.compile(r"\w+|[^\w\s]")
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
class ChatRequest:
    """The parts of a request body that shape the answer."""

    model: str
    messages_key: bytes  # canonical JSON of the messages
    prompt_tokens: int
    seed: int | None
    max_tokens: int | None
    n: int

    @property
    def cost_tokens(self) -> int:
        """Tokens charged against a tokens-per-minute limit, as providers count them."""
        return self.prompt_tokens + (
            DEFAULT_MAX_TOKENS if self.max_tokens is None else self.max_tokens
        )


def count_tokens(text: str) -> int:
    """The fake's token count of a text."""
    return len(_TOKEN.findall(text))


def parse_request(body: bytes) -> ChatRequest:
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
    if payload.get("stream"):
        raise InvalidRequestError("streaming is not supported by the fake server", "stream")
    max_tokens = _optional_int(payload, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _optional_int(payload, "max_tokens", 1)
    n = _optional_int(payload, "n", 1)
    if n is not None and n > MAX_CHOICES:
        raise InvalidRequestError(f"'n' must be at most {MAX_CHOICES}", "n")
    return ChatRequest(
        model=model,
        messages_key=orjson.dumps(messages, option=orjson.OPT_SORT_KEYS),
        prompt_tokens=sum(count_tokens(_message_text(m, i)) + 4 for i, m in enumerate(messages))
        + 3,
        seed=_optional_int(payload, "seed", None),
        max_tokens=max_tokens,
        n=1 if n is None else n,
    )


def completion_body(
    chat: ChatRequest, completion_id: str, created: int, cached_share: float = 0.0
) -> bytes:
    """The 200 body answering ``chat``."""
    choices = []
    completion_tokens = 0
    for index in range(chat.n):
        content, tokens, finish_reason = generate_content(
            chat.messages_key, chat.seed, index, chat.max_tokens
        )
        completion_tokens += tokens
        choices.append(
            {
                "index": index,
                "message": {"role": "assistant", "content": content},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        )
    reasoning_tokens = 2 * completion_tokens if is_reasoning_model(chat.model) else 0
    completion_tokens += reasoning_tokens
    return orjson.dumps(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": chat.model,
            "system_fingerprint": "fp_fake0001",
            "choices": choices,
            "usage": {
                "prompt_tokens": chat.prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": chat.prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": int(chat.prompt_tokens * cached_share)},
                "completion_tokens_details": {"reasoning_tokens": reasoning_tokens},
            },
        }
    )


def is_reasoning_model(model: str) -> bool:
    """Whether the fake reports reasoning tokens for this model (its name starts with "o")."""
    return model.rsplit("/", 1)[-1].startswith("o")


def generate_content(
    messages_key: bytes, seed: int | None, index: int, max_tokens: int | None
) -> tuple[str, int, str]:
    """Return (content, completion tokens, finish reason) for one choice.

    8 to 60 words ending with a period, cut to ``max_tokens`` tokens ("length") if longer.
    """
    digest = hashlib.sha256(b"%b\x00%r\x00%d" % (messages_key, seed, index)).digest()
    rng = random.Random(int.from_bytes(digest[:8]))
    words = rng.choices(_VOCABULARY, k=rng.randint(8, 60))
    words[0] = words[0].capitalize()
    if max_tokens is not None and max_tokens <= len(words):  # the period is one more token
        return " ".join(words[:max_tokens]), max_tokens, "length"
    return " ".join(words) + ".", len(words) + 1, "stop"


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


def _message_text(message: object, index: int) -> str:
    """The text of one message: its string content, or its text parts joined."""
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise InvalidRequestError(
            f"messages[{index}] must be an object with a 'role'", f"messages[{index}]"
        )
    content = message.get("content")
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        texts = [
            part["text"]
            for part in content
            if isinstance(part, dict)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
        ]
        return " ".join(texts)
    raise InvalidRequestError(
        f"messages[{index}].content must be a string or an array of parts",
        f"messages[{index}].content",
    )

"""Row + request spec -> one canonical chat-completions request (per model)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson

from pipeline.errors import BadRowError
from pipeline.records import ChatRequest, Message, PromptRow
from pipeline.requests.headers import HeaderTemplates, split_headers
from pipeline.requests.images import image_url
from pipeline.requests.template import render_template, value_text
from pipeline.spec import JobSpec, RequestSpec

_CHARS_PER_TOKEN = 4
_TOKENS_PER_MESSAGE = 4
_TOKENS_PER_REPLY = 3
_TOKENS_PER_IMAGE = 85
_ORDERED_KEY = "response_format"
_ROLES = frozenset({"system", "user", "assistant", "tool", "developer", "function"})
_SEED_RANGE = range(-(2**63), 2**63)


def derive_seed(base_seed: int, row_id: str) -> int:
    """The per-row seed: see the package docstring."""
    digest = hashlib.sha256(f"{base_seed}:{row_id}".encode()).hexdigest()
    return int(digest[:8], 16) & 0x7FFFFFFF


def reask_seed(base_seed: int, row_id: str, reask: int) -> int:
    """The seed of a row's ``reask``-th JSON re-ask (0 is the first ask: ``derive_seed``)."""
    return derive_seed(base_seed, row_id if reask == 0 else f"{row_id}#json{reask}")


def request_hash(body: bytes) -> str:
    """SHA-256 hex of the canonical body bytes."""
    return hashlib.sha256(body).hexdigest()


def encode_body(body: dict[str, Any]) -> bytes:
    """Canonical JSON: sorted keys, compact, UTF-8; ``response_format`` keeps its own key order."""
    if _ORDERED_KEY not in body:
        # orjson's result keeps its growth buffer (16 KB held for a 2 KB body); a request
        # waits for a slot and then for its answer, so hold only its bytes
        return memoryview(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).tobytes()
    parts = [
        orjson.dumps(key)
        + b":"
        + orjson.dumps(body[key], option=0 if key == _ORDERED_KEY else orjson.OPT_SORT_KEYS)
        for key in sorted(body)
    ]
    return b"{" + b",".join(parts) + b"}"


def estimate_prompt_tokens(messages: list[Message]) -> int:
    """A cheap offline estimate: about four characters a token, a flat count per image,
    plus per-message overhead."""
    chars = 0
    images = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict):
                    chars += len(str(part.get("text", "")))
                    images += part.get("type") == "image_url"
    return (
        chars // _CHARS_PER_TOKEN
        + _TOKENS_PER_IMAGE * images
        + _TOKENS_PER_MESSAGE * len(messages)
        + _TOKENS_PER_REPLY
    )


def _check_messages(value: Any) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise BadRowError("messages must be a non-empty list of {role, content} objects")
    for index, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise BadRowError(f"messages[{index}] has no valid role")
        if "content" not in message:
            raise BadRowError(f"messages[{index}] has no content")
    return value


class RequestBuilder:
    """Turns prompt rows into canonical chat-completions requests for one job.

    The parts that are the same for every row (sampling settings, ``params``, tools,
    streaming) are assembled once; per row come the messages, the seed, the model (with
    ``model_column``, or given by the runner for each of ``models``) and, when the
    endpoint has templated headers, the headers.
    """

    def __init__(
        self,
        spec: RequestSpec,
        *,
        prompt_column: str | None = None,
        messages_column: str | None = None,
        headers: HeaderTemplates | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> None:
        self._spec = spec
        self._prompt_column = prompt_column
        self._messages_column = messages_column
        self._headers = headers
        self._default_model = spec.model or (spec.models[0] if spec.models else None)
        self._image_dir = Path(spec.image_dir) if spec.image_dir is not None else None
        self._fixed: dict[str, Any] = {}
        if spec.temperature is not None:
            self._fixed["temperature"] = spec.temperature
        if spec.max_tokens is not None:
            self._fixed["max_tokens"] = spec.max_tokens
        # each of the n choices may use max_tokens (or params.max_completion_tokens, which
        # reasoning models take instead): that is what a provider charges against limits
        bound = (
            spec.max_tokens
            if spec.max_tokens is not None
            else spec.params.get("max_completion_tokens")
        )
        self._completion_bound = (
            bound * spec.choices if isinstance(bound, int) and bound > 0 else None
        )
        if spec.tools is not None:
            self._fixed["tools"] = spec.tools
        if spec.tool_choice is not None:
            self._fixed["tool_choice"] = spec.tool_choice
        if spec.stream:
            self._fixed["stream"] = True
            self._fixed["stream_options"] = {"include_usage": True}
        self._fixed.update(spec.params)
        if response_format is not None:
            self._fixed["response_format"] = response_format

    @classmethod
    def for_job(
        cls, job: JobSpec, *, response_format: dict[str, Any] | None = None
    ) -> RequestBuilder:
        """The builder of a job: its request, its input's prompt or messages column, and the
        endpoint's templated headers (the static ones go on the client: ``split_headers``)."""
        _, templates = split_headers(job.endpoint.headers)
        return cls(
            job.request,
            prompt_column=job.input.prompt_column,
            messages_column=job.input.messages_column,
            headers=templates,
            response_format=response_format,
        )

    @property
    def reads_files(self) -> bool:
        """True when building a request may read a local file (blocking: not on the event loop)."""
        return self._spec.image_column is not None

    def messages(self, row: PromptRow) -> list[Message]:
        """The message list for a row: from its messages column, or system + rendered prompt
        (with the row's image as a second content part when the job has ``image_column``)."""
        if self._messages_column is not None:
            return _check_messages(row.values.get(self._messages_column))
        prompt = row.values.get(self._prompt_column) if self._prompt_column else None
        if prompt is None:
            raise BadRowError(f"prompt column {self._prompt_column!r} is null")
        prompt = value_text(prompt, f"prompt column {self._prompt_column!r}")
        if not prompt.strip():
            raise BadRowError(f"prompt column {self._prompt_column!r} is empty")
        if self._spec.template is None:
            text = prompt
        else:
            text = render_template(self._spec.template, row.values)
            if not text.strip():
                raise BadRowError("the template renders an empty prompt for this row")
        messages: list[Message] = []
        if self._spec.system:
            messages.append({"role": "system", "content": self._spec.system})
        column = self._spec.image_column
        if column is None:
            messages.append({"role": "user", "content": text})
        else:
            url = image_url(row.values.get(column), column, self._image_dir)
            content = [
                {"type": "text", "text": text},
                {"type": "image_url", "image_url": {"url": url}},
            ]
            messages.append({"role": "user", "content": content})
        return messages

    def model(self, row: PromptRow) -> str:
        """The model for a row: ``model``, or the row's ``model_column`` value."""
        column = self._spec.model_column
        if column is None:
            assert self._default_model is not None
            return self._default_model
        value = row.values.get(column)
        if not isinstance(value, str) or not value.strip():
            raise BadRowError(
                f"model column {column!r} is {'null' if value is None else 'not a model name'}"
            )
        return value

    def seed(self, row: PromptRow, reask: int = 0) -> int:
        """The row's seed: its ``seed_column`` value, else derived from the row id (and re-ask)."""
        column = self._spec.seed_column
        if column is None:
            return reask_seed(self._spec.seed, row.id, reask)
        value = row.values.get(column)
        if value is None:
            raise BadRowError(f"seed column {column!r} is null")
        if not isinstance(value, int) or isinstance(value, bool) or value not in _SEED_RANGE:
            raise BadRowError(f"seed column {column!r} must hold 64-bit integers, got {value!r}")
        return value if reask == 0 else reask_seed(value, row.id, reask)

    def build(self, row: PromptRow, model: str | None = None, reask: int = 0) -> ChatRequest:
        """The request for a row (to ``model`` when given; its ``reask``-th JSON re-ask when
        > 0); raises ``BadRowError`` when the row cannot make one."""
        if row.problem is not None:
            raise BadRowError(row.problem)
        model = model or self.model(row)
        messages = self.messages(row)
        seed = self.seed(row, reask)
        body = {
            **self._fixed,
            "model": model,
            "messages": messages,
            "seed": seed,
            **self._spec.extra_body,
        }
        encoded = encode_body(body)
        return ChatRequest(
            body=encoded,
            seed=seed,
            request_hash=request_hash(encoded),
            estimated_prompt_tokens=estimate_prompt_tokens(messages),
            max_tokens=self._completion_bound,
            model=model,
            headers=self._headers.render(row) if self._headers is not None else None,
        )

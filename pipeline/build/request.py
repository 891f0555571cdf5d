"""Row + request spec -> chat-completions body; the derived seed; the request hash.

Seed derivation (stable across runs, processes and machines)::

    seed = int(sha256(f"{base_seed}:{row_id}".encode("utf-8")).hexdigest()[:8], 16) & 0x7FFFFFFF

i.e. the first 32 bits of the SHA-256 of ``"<base seed>:<row id>"``, masked to a
non-negative 31-bit integer, which every OpenAI-compatible server accepts.

The body is encoded canonically (keys sorted, compact, UTF-8) and that exact byte
string is both what is sent and what ``request_hash`` (SHA-256 hex) is taken of, so
the same job on the same row always sends the same bytes and the same hash.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson

from pipeline.errors import BadRowError
from pipeline.records import ChatRequest, Message, PromptRow
from pipeline.spec import RequestSpec

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
_CHARS_PER_TOKEN = 4
_TOKENS_PER_MESSAGE = 4
_TOKENS_PER_REPLY = 3
_ROLES = frozenset({"system", "user", "assistant", "tool", "developer", "function"})


def derive_seed(base_seed: int, row_id: str) -> int:
    """The per-row seed: see the module docstring."""
    digest = hashlib.sha256(f"{base_seed}:{row_id}".encode()).hexdigest()
    return int(digest[:8], 16) & 0x7FFFFFFF


def request_hash(body: bytes) -> str:
    """SHA-256 hex of the canonical body bytes."""
    return hashlib.sha256(body).hexdigest()


def encode_body(body: dict[str, Any]) -> bytes:
    """Canonical JSON: sorted keys, compact, UTF-8."""
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def template_fields(template: str) -> list[str]:
    """Column names a template refers to, in order of first use."""
    names: dict[str, None] = {}
    for match in _PLACEHOLDER.finditer(template):
        if match.group(1):
            names[match.group(1)] = None
    return list(names)


def render_template(template: str, values: dict[str, Any]) -> str:
    """Fill ``{column}`` placeholders; ``{{`` and ``}}`` are literal braces, other braces stay."""

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return match.group(0)[0]
        value = values.get(name)
        if value is None:
            raise BadRowError(f"template placeholder {{{name}}} has no value in this row")
        return str(value)

    return _PLACEHOLDER.sub(fill, template)


def estimate_prompt_tokens(messages: list[Message]) -> int:
    """A cheap offline estimate: about four characters a token, plus per-message overhead."""
    chars = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(str(part.get("text", ""))) for part in content if isinstance(part, dict))
    return chars // _CHARS_PER_TOKEN + _TOKENS_PER_MESSAGE * len(messages) + _TOKENS_PER_REPLY


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
    """Turns prompt rows into canonical chat-completions requests for one job."""

    def __init__(
        self,
        spec: RequestSpec,
        *,
        prompt_column: str | None = None,
        messages_column: str | None = None,
    ) -> None:
        self._spec = spec
        self._prompt_column = prompt_column
        self._messages_column = messages_column
        self._fixed: dict[str, Any] = {"model": spec.model}
        if spec.temperature is not None:
            self._fixed["temperature"] = spec.temperature
        if spec.max_tokens is not None:
            self._fixed["max_tokens"] = spec.max_tokens
        self._fixed.update(spec.params)

    def messages(self, row: PromptRow) -> list[Message]:
        """The message list for a row: from its messages column, or system + rendered prompt."""
        if self._messages_column is not None:
            return _check_messages(row.values.get(self._messages_column))
        prompt = row.values.get(self._prompt_column) if self._prompt_column else None
        if prompt is None:
            raise BadRowError(f"prompt column {self._prompt_column!r} is null")
        if not str(prompt).strip():
            raise BadRowError(f"prompt column {self._prompt_column!r} is empty")
        if self._spec.template is None:
            text = str(prompt)
        else:
            text = render_template(self._spec.template, row.values)
            if not text.strip():
                raise BadRowError("the template renders an empty prompt for this row")
        messages: list[Message] = []
        if self._spec.system:
            messages.append({"role": "system", "content": self._spec.system})
        messages.append({"role": "user", "content": text})
        return messages

    def build(self, row: PromptRow) -> ChatRequest:
        """The request for a row; raises ``BadRowError`` when the row cannot make one."""
        if row.problem is not None:
            raise BadRowError(row.problem)
        messages = self.messages(row)
        seed = derive_seed(self._spec.seed, row.id)
        body = {**self._fixed, "messages": messages, "seed": seed, **self._spec.extra_body}
        encoded = encode_body(body)
        return ChatRequest(
            body=encoded,
            seed=seed,
            request_hash=request_hash(encoded),
            estimated_prompt_tokens=estimate_prompt_tokens(messages),
            max_tokens=self._spec.max_tokens,
        )

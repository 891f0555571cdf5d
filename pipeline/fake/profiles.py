"""Server profiles: how a particular OpenAI-compatible server differs from plain OpenAI.

A :class:`Profile` says where the chat-completions endpoint lives, which query
parameters, auth styles, headers and body fields it insists on, and which models it
serves. The fake server enforces it, so a test passes only when the request is right:

    wrong path or query        404  (like Azure's "Resource not found")
    wrong or missing key       401  (in none of the accepted auth styles)
    missing gateway header     400  (Portkey's provider / virtual key / config)
    missing body field         400
    unknown model              404  ``model_not_found``

``PROFILES`` holds one preset per server the project documents; ``profile(name)``
looks one up and ``dataclasses.replace`` adjusts it (another deployment, other models).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

AUTH_STYLES = ("bearer", "x-api-key", "api-key", "x-portkey-api-key")
"""How a key may be presented: ``Authorization: Bearer`` or the header of that name."""


@dataclass(frozen=True)
class HeaderRule:
    """A required header: one of ``names`` must be present (non-empty), with a value in
    ``values`` when that is given."""

    names: tuple[str, ...]
    values: tuple[str, ...] | None = None
    per_request: bool = False
    """Checked on chat requests only (a per-row header that Batch API calls cannot carry)."""

    def __post_init__(self) -> None:
        """Header names are matched lower-case."""
        if not self.names:
            raise ValueError("a header rule needs at least one header name")
        object.__setattr__(self, "names", tuple(name.lower() for name in self.names))

    def missing(self, headers: Mapping[str, str]) -> str | None:
        """Why ``headers`` fail this rule, or None when they pass."""
        present = [name for name in self.names if headers.get(name)]
        if not present:
            if len(self.names) == 1:
                return f"the {self.names[0]} header is required"
            return f"one of the {', '.join(self.names)} headers is required"
        if self.values is not None and headers[present[0]] not in self.values:
            return f"the {present[0]} header must be one of {', '.join(self.values)}"
        return None


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a profile refuses a request: the status and an OpenAI-style error's fields."""

    status: int
    message: str
    code: str | None = None
    param: str | None = None


@dataclass(frozen=True)
class Profile:
    """What one server requires of a request, beyond a valid chat-completions body."""

    name: str = "openai-compatible"
    chat_path: str | None = None
    """The exact path of the endpoint; None accepts any path ending in ``/chat/completions``."""
    query: Mapping[str, str] = field(default_factory=dict)
    """Required query parameters and their values."""
    auth_styles: tuple[str, ...] = ("bearer", "x-api-key")
    """Accepted ways to present the key (only checked when the server has an ``api_key``)."""
    headers: tuple[HeaderRule, ...] = ()
    """Required headers, answered with 400 when missing."""
    body_fields: tuple[str, ...] = ()
    """Body fields that must be present (a test's proof that ``extra_body`` went through)."""
    models: tuple[str, ...] | None = None
    """Served models; any other is 404 ``model_not_found``. None serves every model."""
    batch_path: str | None = None
    """Where the files and batches routes live; None: beside the chat endpoint (``base_path``)."""
    batch_endpoint: str = "/v1/chat/completions"
    """The ``endpoint`` a batch must name and the ``url`` of each of its lines."""

    def __post_init__(self) -> None:
        """Reject profiles the server cannot enforce."""
        unknown = sorted(set(self.auth_styles) - set(AUTH_STYLES))
        if unknown:
            raise ValueError(f"unknown auth style {unknown[0]!r} (use {', '.join(AUTH_STYLES)})")
        if self.chat_path is not None and not (
            self.chat_path.startswith("/") and self.chat_path.endswith("/chat/completions")
        ):
            raise ValueError(
                f"chat_path must start with / and end with /chat/completions, got {self.chat_path!r}"
            )
        object.__setattr__(self, "query", MappingProxyType(dict(self.query)))

    def check_route(
        self, method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str]
    ) -> Refusal | None:
        """404 for a wrong method, path or query; 400 for a missing required header."""
        if method != "POST" or not (
            path == self.chat_path
            if self.chat_path is not None
            else path.endswith("/chat/completions")
        ):
            return Refusal(404, f"Invalid URL ({method} {path})")
        for name, value in self.query.items():
            if query.get(name) != value:
                return Refusal(
                    404, f"Resource not found: query parameter {name}={value} is required", "404"
                )
        for rule in self.headers:
            problem = rule.missing(headers)
            if problem is not None:
                return Refusal(400, problem, "missing_header")
        return None

    def check_batch_route(
        self, query: Mapping[str, str], headers: Mapping[str, str]
    ) -> Refusal | None:
        """404 for a wrong query; 400 for a missing header (per-request ones aside)."""
        for name, value in self.query.items():
            if query.get(name) != value:
                return Refusal(
                    404, f"Resource not found: query parameter {name}={value} is required", "404"
                )
        for rule in self.headers:
            problem = None if rule.per_request else rule.missing(headers)
            if problem is not None:
                return Refusal(400, problem, "missing_header")
        return None

    @property
    def batch_root(self) -> str:
        """The path prefix of the files and batches routes."""
        return self.base_path if self.batch_path is None else self.batch_path

    @property
    def deployment(self) -> str | None:
        """Azure: the deployment the chat path names (batch lines must name it in ``model``)."""
        parts = (self.chat_path or "").split("/")
        if "deployments" in parts:
            return parts[parts.index("deployments") + 1]
        return None

    def check_body(self, fields: Collection[str], model: str) -> Refusal | None:
        """400 for a missing required body field; 404 for a model this server does not serve."""
        for name in self.body_fields:
            if name not in fields:
                return Refusal(400, f"Missing required parameter: '{name}'.", param=name)
        if self.models is not None and model not in self.models:
            return Refusal(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                "model_not_found",
                "model",
            )
        return None

    @property
    def base_path(self) -> str:
        """The path part of the base URL a client is configured with."""
        if self.chat_path is None:
            return "/v1"
        return self.chat_path.removesuffix("/chat/completions")


PROFILES: Mapping[str, Profile] = MappingProxyType(
    {
        "openai-compatible": Profile(),
        "openai": Profile(
            name="openai",
            chat_path="/v1/chat/completions",
            auth_styles=("bearer",),
            models=("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "o4-mini"),
        ),
        "azure": Profile(
            name="azure",
            chat_path="/openai/deployments/gpt-4o-mini/chat/completions",
            query={"api-version": "2024-10-21"},
            auth_styles=("api-key",),
            batch_path="/openai/v1",
            batch_endpoint="/chat/completions",
        ),
        "vectara": Profile(
            name="vectara",
            chat_path="/v2/llms/chat/completions",
            auth_styles=("x-api-key", "bearer"),
        ),
        "ovms": Profile(
            name="ovms",
            chat_path="/v3/chat/completions",
            body_fields=("top_k",),
            models=("OpenVINO/Qwen2.5-7B-Instruct-int4-ov",),
        ),
        "vllm": Profile(
            name="vllm",
            chat_path="/v1/chat/completions",
            models=("meta-llama/Llama-3.1-8B-Instruct",),
        ),
        "ollama": Profile(
            name="ollama",
            chat_path="/v1/chat/completions",
            models=("llama3.2", "qwen2.5:7b"),
        ),
        "portkey": Profile(
            name="portkey",
            chat_path="/v1/chat/completions",
            auth_styles=("x-portkey-api-key",),
            headers=(
                HeaderRule(("x-portkey-provider", "x-portkey-virtual-key", "x-portkey-config")),
                # optional at Portkey; required here so a test proves per-row headers arrive
                HeaderRule(("x-portkey-trace-id",), per_request=True),
            ),
        ),
        "router": Profile(
            name="router",
            chat_path="/api/v1/chat/completions",
            auth_styles=("bearer",),
            models=(
                "openai/gpt-4o-mini",
                "anthropic/claude-3-opus",
                "meta-llama/llama-3.1-70b-instruct",
            ),
        ),
    }
)
"""One preset per documented server (see the README's "Servers" table)."""


def profile(name: str) -> Profile:
    """The preset called ``name``; a ``ValueError`` lists the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r} (known: {', '.join(PROFILES)})") from None

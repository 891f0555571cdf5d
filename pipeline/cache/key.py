"""Where the cache lives, whether a job's answers may be cached, and the key of an entry."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

from pipeline.spec import CacheSpec, EndpointSpec, RequestSpec

_DEFAULT_PORTS = {"http": 80, "https": 443}


def default_path() -> Path:
    """``$XDG_CACHE_HOME/llm-batch-pipeline/responses.sqlite`` (``~/.cache`` without the variable)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "llm-batch-pipeline" / "responses.sqlite"


def cache_path(spec: CacheSpec, *, path: Path | None = None, off: bool = False) -> Path | None:
    """The cache file a run uses: ``--no-cache`` (``off``) > ``--cache PATH`` > ``[cache]``."""
    if off:
        return None
    if path is not None:
        return path.expanduser()
    if not spec.active:
        return None
    return Path(spec.path).expanduser() if spec.path is not None else default_path()


def uncached_reason(request: RequestSpec, spec: CacheSpec) -> str | None:
    """Why a job's answers are not cached (None: they are).

    Answers sampled at ``temperature`` > 0 (or unset: servers default to 1) with no seed
    the job chose are meant to differ from run to run; caching them needs
    ``[cache] nondeterministic = true``.
    """
    if spec.nondeterministic or request.temperature == 0:
        return None
    if "seed" in request.model_fields_set or request.seed_column is not None:
        return None
    return (
        "temperature above 0 (or unset) and no seed in the job: answers are samples;"
        " set [cache] nondeterministic = true to cache them"
    )


def endpoint_identity(endpoint: EndpointSpec) -> str:
    """Scheme, host, port, path and sorted query of the chat-completions URL (no key, no headers)."""
    if endpoint.is_fake:
        return "fake"
    url = urlsplit(endpoint.base_url)
    scheme = url.scheme.lower()
    port = url.port or _DEFAULT_PORTS.get(scheme)
    path = url.path.rstrip("/") + "/chat/completions"
    query = sorted([*parse_qsl(url.query, keep_blank_values=True), *endpoint.query.items()])
    return f"{scheme}://{(url.hostname or '').lower()}:{port}{path}?{urlencode(query)}"


def cache_key(identity: str, request_hash: str) -> bytes:
    """The entry's key: SHA-256 of the endpoint identity and the request hash."""
    return hashlib.sha256(f"{identity}\n{request_hash}".encode()).digest()

"""The Batch API (OpenAI's contract): files and batches, one HTTP call each.

    upload(name, bytes)       POST {root}/files (multipart, purpose=batch) -> file id
    create(file, metadata)    POST {root}/batches -> the batch object
    get / cancel / list       GET {root}/batches/{id}, POST .../cancel, GET {root}/batches
    content / delete_file     GET {root}/files/{id}/content, DELETE {root}/files/{id}
    files                     GET {root}/files?purpose=batch

Like ``ChatClient``, this is an error-translation boundary: httpx and aiohttp failures
and non-2xx answers become the ``AttemptError`` subclasses of ``pipeline.errors``, the
API key scrubbed from every message. ``BatchRoutes`` says where the routes live: beside
the chat endpoint (``{base_url}/files``), or on Azure, whose chat base URL names a
deployment (``.../openai/deployments/DEP``), at ``.../openai/v1`` with ``endpoint``
``/chat/completions`` and the deployment as every line's ``model``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import anyio
import httpx
import orjson
from httpx_aiohttp import AiohttpTransport

from pipeline.client import WIRE_ERRORS, _transport_error, auth_headers
from pipeline.client.parse import (
    MAX_MESSAGE,
    error_for_status,
    parse_rate_limits,
    parse_retry_after,
    server_message,
)
from pipeline.errors import BadResponse
from pipeline.spec import EndpointSpec

_AZURE_DEPLOYMENT = re.compile(r"^(?P<root>.*)/openai/deployments/(?P<deployment>[^/]+)/?$")
_UPLOAD_TIMEOUT_S = 600.0


@dataclass(frozen=True, slots=True)
class BatchRoutes:
    """Where a server's files and batches live and what its batch lines say."""

    root: str
    """Files are at ``{root}/files``, batches at ``{root}/batches``."""
    endpoint: str
    """The ``endpoint`` of a batch and the ``url`` of each of its lines."""
    deployment: str | None = None
    """Azure: the deployment a line must name in its body's ``model``."""

    @classmethod
    def of(cls, base_url: str) -> BatchRoutes:
        """The routes of the server whose chat base URL is ``base_url``."""
        base = base_url.rstrip("/")
        azure = _AZURE_DEPLOYMENT.match(base)
        if azure is not None:
            return cls(f"{azure['root']}/openai/v1", "/chat/completions", azure["deployment"])
        return cls(base, "/v1/chat/completions")


class BatchClient:
    """Calls one server's Batch API; ``base_url`` replaces ``endpoint.base_url`` (the fake)."""

    def __init__(
        self,
        endpoint: EndpointSpec,
        *,
        api_key: str | None,
        headers: Mapping[str, str],
        base_url: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.routes = BatchRoutes.of(base_url or endpoint.base_url)
        self._api_key = api_key
        self._timeout_s = endpoint.timeout_s
        default_headers = {**headers, **auth_headers(endpoint.auth, api_key)}
        self._http = httpx.AsyncClient(
            transport=transport or AiohttpTransport(),
            headers=default_headers,
            params=endpoint.query or None,
            timeout=httpx.Timeout(max(endpoint.timeout_s, _UPLOAD_TIMEOUT_S)),
            follow_redirects=False,
        )

    async def __aenter__(self) -> BatchClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._http.aclose()

    async def upload(self, name: str, content: bytes) -> str:
        """Upload a batch input file; its id."""
        files = {"file": (name, content, "application/jsonl")}
        found = await self._call("POST", "/files", files=files, data={"purpose": "batch"})
        return _string(found, "id")

    async def create(
        self, input_file_id: str, completion_window: str, metadata: dict[str, str]
    ) -> dict[str, Any]:
        """Create a batch of the uploaded file; the batch object."""
        payload = {
            "input_file_id": input_file_id,
            "endpoint": self.routes.endpoint,
            "completion_window": completion_window,
            "metadata": metadata,
        }
        return await self._call("POST", "/batches", json=payload)

    async def get(self, batch_id: str) -> dict[str, Any]:
        """The batch object now."""
        return await self._call("GET", f"/batches/{batch_id}")

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        """Ask the server to cancel a batch; the batch object (``cancelling``)."""
        return await self._call("POST", f"/batches/{batch_id}/cancel")

    async def page(self, after: str | None = None, limit: int = 100) -> dict[str, Any]:
        """One page of batches, newest first (``data``, ``has_more``, ``last_id``)."""
        params: dict[str, str | int] = {"limit": limit}
        if after is not None:
            params["after"] = after
        return await self._call("GET", "/batches", params=params)

    async def files(self) -> list[dict[str, Any]]:
        """The batch input files the server holds."""
        found = await self._call("GET", "/files", params={"purpose": "batch"})
        data = found.get("data")
        return [f for f in data if isinstance(f, dict)] if isinstance(data, list) else []

    async def delete_file(self, file_id: str) -> None:
        """Delete a file (an input no batch used)."""
        await self._call("DELETE", f"/files/{file_id}")

    async def content(self, file_id: str) -> bytes:
        """The bytes of an output or error file."""
        response = await self._request("GET", f"/files/{file_id}/content")
        return response.content

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str | int] | None = None,
        json: dict[str, Any] | None = None,
        files: dict[str, tuple[str, bytes, str]] | None = None,
        data: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """One call answered with a JSON object."""
        response = await self._request(
            method, path, params=params, json=json, files=files, data=data
        )
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise BadResponse(
                f"{method} {path}: answer is not JSON", http_status=response.status_code
            ) from None
        if not isinstance(data, dict):
            raise BadResponse(
                f"{method} {path}: answer is not an object", http_status=response.status_code
            )
        return data

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str | int] | None = None,
        json: dict[str, Any] | None = None,
        files: dict[str, tuple[str, bytes, str]] | None = None,
        data: dict[str, str] | None = None,
    ) -> httpx.Response:
        """One call; any failure as an ``AttemptError``, the key scrubbed."""
        url = f"{self.routes.root}{path}"
        try:
            with anyio.fail_after(max(self._timeout_s, _UPLOAD_TIMEOUT_S)):
                response = await self._http.request(
                    method, url, params=params, json=json, files=files, data=data
                )
        except WIRE_ERRORS as exc:
            error = _transport_error(exc)
            raise type(error)(self._scrub(f"{method} {path}: {error.message}")) from None
        if not 200 <= response.status_code < 300:
            raise error_for_status(
                response.status_code,
                self._scrub(f"{method} {path}: {server_message(response.content)}")[:MAX_MESSAGE],
                parse_retry_after(response.headers),
                parse_rate_limits(response.headers),
            )
        return response

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text


def _string(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise BadResponse(f"answer has no {key!r}")
    return value

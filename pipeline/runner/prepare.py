"""Build a row's request for the run: off the event loop when it reads files, with a
locally checked schema folded into its hash."""

from __future__ import annotations

import dataclasses
import hashlib

import anyio
import orjson

from pipeline.errors import BadRowError
from pipeline.limits import request_tokens, too_large
from pipeline.records import ChatRequest, PromptRow
from pipeline.requests import RequestBuilder
from pipeline.structured import Extraction


class RequestPreparer:
    """The row's request (JSON re-ask ``reask`` > 0 gets its own seed).

    When answers are validated against a schema that is not sent (``json_object`` with
    ``json_schema``), the request hash also covers that schema, so a resumed run does
    not reuse answers checked against another schema.
    """

    def __init__(
        self,
        builder: RequestBuilder,
        extraction: Extraction | None,
        tokens_per_minute: int | None = None,
    ) -> None:
        self._builder = builder
        self._tokens_per_minute = tokens_per_minute
        local_schema = extraction is not None and extraction.mode == "json_object"
        schema = extraction.schema if extraction is not None and local_schema else None
        self._salt = (
            orjson.dumps(schema, option=orjson.OPT_SORT_KEYS) if schema is not None else None
        )

    async def build(self, row: PromptRow, model: str | None, reask: int = 0) -> ChatRequest:
        """Raises ``BadRowError`` when the row cannot become a request, or one too large for
        ``limits.tokens_per_minute`` (it would hold the token bucket for minutes, then fail)."""
        if self._builder.reads_files:
            request = await anyio.to_thread.run_sync(self._builder.build, row, model, reask)
        else:
            request = self._builder.build(row, model, reask)
        oversize = too_large(request_tokens(request), self._tokens_per_minute)
        if oversize is not None:
            raise BadRowError(oversize)
        if self._salt is None:
            return request
        salted = hashlib.sha256(request.request_hash.encode() + self._salt).hexdigest()
        return dataclasses.replace(request, request_hash=salted)

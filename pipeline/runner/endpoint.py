"""The endpoint a run talks to: the job's, or the built-in fake server started for it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog

from pipeline import fake
from pipeline.spec import JobSpec

log = structlog.get_logger("pipeline")


@asynccontextmanager
async def endpoint_url(job: JobSpec) -> AsyncIterator[str | None]:
    """Start the built-in fake server when the job asks for it; yield the URL to use."""
    if not job.endpoint.is_fake:
        yield None
        return
    config = fake.FakeConfig.from_options(**job.fake.model_dump())
    async with fake.serve(config) as server:
        log.info("fake_server.started", base_url=server.base_url)
        yield server.base_url

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
    spec = job.fake
    config = fake.FakeConfig(
        latency_s=spec.latency_ms / 1000.0,
        latency_jitter_s=spec.jitter_ms / 1000.0,
        requests_per_minute=spec.requests_per_minute,
        tokens_per_minute=spec.tokens_per_minute,
        error_500_rate=spec.error_500_rate,
        error_502_rate=spec.error_502_rate,
        error_503_rate=spec.error_503_rate,
        rate_limit_rate=spec.rate_limit_rate,
        retry_after_s=spec.retry_after_s,
        drop_rate=spec.drop_rate,
        hang_rate=spec.hang_rate,
        bad_request_rate=spec.bad_request_rate,
        malformed_rate=spec.malformed_rate,
        invalid_json_rate=spec.invalid_json_rate,
        schema_mismatch_rate=spec.schema_mismatch_rate,
        fault_seed=spec.fault_seed,
        cached_share=spec.cached_share,
    )
    async with fake.serve(config) as server:
        log.info("fake_server.started", base_url=server.base_url)
        yield server.base_url

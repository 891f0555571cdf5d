"""``pipeline run --engine ray``: a job's shards as Ray tasks, one global rate limit, one merge.

The driver checks the job (exit 2 before anything starts), starts one limiter actor
holding the job's buckets (``leases.GlobalBuckets``) and one task per shard. Each task
is the project's own run of shard ``I`` of ``N`` (lifecycle and Runner, its results in
``<output>.shards/I-of-N/``) whose limiter leases capacity from the actor. A task whose
worker dies is retried by Ray and resumes its shard from its own results. When every
shard is complete the driver merges them (``merge.merge_shards``) and reports like a
local run: the same summary, manifest and exit codes.

Ray is an optional extra (``pip install 'llm-batch-pipeline[ray]'``), imported here only
when this engine runs. Locally, Ray starts with the machine's CPUs, no dashboard and a
small object store; each task takes a fraction of a CPU (they wait on the network).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from pipeline.engines.leases import GlobalBuckets, Grant, LeasedLimiter
from pipeline.engines.merge import MergeResult, merge_shards
from pipeline.errors import JobError
from pipeline.log import configure_logging
from pipeline.records import RateLimitInfo
from pipeline.runner import (
    EndpointOpener,
    RunOptions,
    RunResult,
    execute_run,
    prepare_run,
    resolve_output,
)
from pipeline.sources import Shard
from pipeline.spec import JobSpec, load_job

OBJECT_STORE_BYTES = 200 * 1024 * 1024
TASK_RETRIES = 3
"""Times Ray runs a shard again after its worker died (each run resumes the shard)."""


def import_ray() -> ModuleType:
    """The ``ray`` module, or a user error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise JobError("--engine ray needs Ray: pip install 'llm-batch-pipeline[ray]'") from None
    return ray


class LimiterActor:
    """The job's buckets in one Ray actor (async: calls never block one another)."""

    def __init__(
        self, requests_per_minute: int | None, tokens_per_minute: int | None, workers: int
    ) -> None:
        self.buckets = GlobalBuckets(requests_per_minute, tokens_per_minute, workers=workers)

    async def lease(self, tokens_each: int, tokens_back: int, info: RateLimitInfo | None) -> Grant:
        """A worker's next grant, after folding in what it reports."""
        self.buckets.report(tokens_back, info)
        return self.buckets.lease(tokens_each)

    async def cooldown(self, seconds: float) -> None:
        """A worker got a 429: pause everyone."""
        self.buckets.cooldown(seconds)

    async def granted(self) -> int:
        """Requests granted so far (for tests and benchmarks)."""
        return self.buckets.granted


@dataclass(frozen=True, slots=True)
class RayRun:
    """What the driver got back: each shard's result and, when all were complete, the merge."""

    shards: list[RunResult]
    merged: MergeResult | None
    exit_code: int
    reason: str


def _endpoint(url: str | None) -> EndpointOpener:
    """An ``EndpointOpener`` that yields ``url`` (the driver's fake server, or None)."""

    @contextlib.asynccontextmanager
    async def opener(job: JobSpec) -> AsyncIterator[str | None]:
        yield url

    return opener


def run_shard(
    job: str, options: RunOptions, shard: Shard, actor: Any, base_url: str | None, key: str | None
) -> RunResult:
    """One Ray task: the shard's own run, its limiter leasing from ``actor``."""
    spec_env = load_job(Path(job)).endpoint.api_key_env if key is not None else None
    if spec_env is not None and key is not None and not os.environ.get(spec_env):
        os.environ[spec_env] = key  # a worker on another machine: the driver's key

    async def lease(tokens_each: int, tokens_back: int, info: RateLimitInfo | None) -> Grant:
        grant: Grant = await actor.lease.remote(tokens_each, tokens_back, info)
        return grant

    def broadcast(seconds: float) -> None:
        actor.cooldown.remote(seconds)

    prepared = prepare_run(job, dataclasses.replace(options, shard=shard))
    configure_logging(secrets=prepared.secrets, level=logging.WARNING)
    return execute_run(
        prepared,
        open_endpoint=_endpoint(base_url),
        limiter=lambda: LeasedLimiter(lease, broadcast),
    )


def base_output(job: JobSpec, options: RunOptions) -> Path:
    """The job's output path, fixed once by the driver so every shard agrees."""
    if options.output is not None:
        return options.output
    return resolve_output(job.output.path, job.name, run_id="", day=options.date)


def start_ray(ray: ModuleType, address: str | None) -> bool:
    """Connect to ``address``, or start a small local Ray; True when this call started it."""
    if ray.is_initialized():
        return False
    if address is not None:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(
            num_cpus=os.cpu_count() or 2,
            include_dashboard=False,
            object_store_memory=OBJECT_STORE_BYTES,
            log_to_driver=True,
        )
    return True


def run_on_ray(
    job: str | Path,
    options: RunOptions | None = None,
    *,
    workers: int | None = None,
    address: str | None = None,
    base_url: str | None = None,
    dataset: Any = None,
) -> RayRun:
    """Run ``job`` as ``workers`` shards on Ray (local, or the cluster at ``address``), then merge.

    ``base_url`` replaces the job's (the caller's fake server for ``base_url = "fake"``).
    ``dataset`` (a Ray Dataset) is the input instead of the job's: written as Parquet to
    ``<output>.input/`` first, so shards read it like any directory. Raises ``UserError``
    for a bad job (nothing started), and a shard's ``UserError`` or ``LockedError`` as it is.
    """
    ray = import_ray()
    options = options or RunOptions()
    if options.shard is not None:
        raise JobError("--shard and --engine ray do not combine (Ray runs every shard)")
    started = start_ray(ray, address)
    try:
        if dataset is not None:
            options = _dataset_input(dataset, load_job(Path(job)), options)
        count = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        first = prepare_run(str(job), dataclasses.replace(options, shard=Shard(0, count)))
        options = dataclasses.replace(options, output=base_output(first.job, options))
        cpus = min(1.0, max(0.05, float(ray.cluster_resources().get("CPU", 1)) / count))
        task = ray.remote(num_cpus=cpus, max_retries=TASK_RETRIES)(run_shard)
        spec = load_job(Path(job))  # the job's own limits, not a shard's share
        actor = ray.remote(num_cpus=0)(LimiterActor).remote(
            spec.limits.requests_per_minute, spec.limits.tokens_per_minute, count
        )
        refs = [
            task.remote(str(job), options, Shard(i, count), actor, base_url, first.api_key)
            for i in range(count)
        ]
        results = [_result(ray, ref) for ref in refs]
    finally:
        if started:
            ray.shutdown()
    return _finish(Path(job), spec, options, results, count)


def _dataset_input(dataset: Any, job: JobSpec, options: RunOptions) -> RunOptions:
    """Write a Ray Dataset as Parquet beside the output; the options that read it."""
    if job.input.id_column is None:
        raise JobError(
            "[input] id_column: a Ray Dataset input needs one (its file names differ every write)"
        )
    output = base_output(job, options)
    folder = output.with_name(output.name + ".input")
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    dataset.write_parquet(str(folder.absolute()))
    return dataclasses.replace(options, input=folder, output=output)


def _result(ray: ModuleType, ref: Any) -> RunResult:
    """A shard's result; a pipeline error inside the task is raised here as it is."""
    try:
        result: RunResult = ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, Exception) and type(cause).__module__.startswith("pipeline"):
            raise cause from None
        raise
    return result


def _finish(
    job: Path, spec: JobSpec, options: RunOptions, results: list[RunResult], count: int
) -> RayRun:
    """Merge when every shard is complete; else the worst shard's code and reason."""
    unfinished = [
        r
        for r in results
        if not r.already_complete and (r.summary is None or not r.summary.complete)
    ]
    if unfinished:
        worst = max(unfinished, key=lambda r: r.exit_code)
        return RayRun(results, None, worst.exit_code, worst.reason)
    assert options.output is not None
    merged = merge_shards(job, options.output, count=count, job=spec)
    return RayRun(results, merged, merged.exit_code, merged.reason)

"""A run's lifecycle, owned here alone: job -> plan -> lock -> skip-if-complete -> run ->
exit code -> manifest and the closing ``job.finished`` event.

Exit codes (stable, documented in the README):
    0   success: the output is complete (or already was)
    1   an internal error (a bug): the traceback is printed
    2   a user error (bad job, bad input, unwritable output) before anything was sent
    3   the run finished, but more rows failed than ``limits.max_error_rate`` allows
    4   aborted: the endpoint refused every request (bad key, unknown model or path), or
        the first rows all failed with the same fatal error (a parameter it rejects)
    5   results could not be written mid-run (disk full?); what was written is kept
    6   budget reached: ``limits.max_cost_usd`` would be passed; checkpointed, resume with a higher one
    7   pending (batch mode, ``--no-wait``): batches are still running; run the same command later
    8   a part of the input could not be read once sending had started (a corrupt row group);
        everything answered is checkpointed (2 when nothing had been sent yet)
    9   ``pipeline merge``: a shard has no complete output yet; nothing was written
    75  another run is writing the same output (locked)
    130 interrupted by SIGINT (143: by SIGTERM); run the same command again to resume

Two steps, so the caller can set up logging (with the key to redact) in between:
``prepare_run`` checks everything and sends nothing; ``execute_run`` takes the lock and
runs. ``run_job`` is both. Codes 1, 2, 75 and 130-by-KeyboardInterrupt are exceptions
here (``UserError``, ``LockedError``, ...), mapped by the CLI; the others are returned.

The built-in fake server is not started here (nothing under ``pipeline.runner`` imports
the fake server's package): the caller passes ``open_endpoint``, an async context manager factory
that yields the URL to use instead of the job's (the CLI's starts the fake for
``base_url = "fake"`` on the run's own event loop).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import structlog

from pipeline.cache import cache_path
from pipeline.client.batches import BatchRoutes
from pipeline.errors import JobError, OutputError, UserError
from pipeline.exits import (
    EXIT_BUG,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TOO_MANY_ERRORS,
    EXIT_USER_ERROR,
    EXIT_WRITE_FAILED,
)
from pipeline.lock import OutputLock
from pipeline.manifest import (
    Manifest,
    file_sha256,
    input_fingerprint,
    manifest_path,
    read_manifest,
    write_manifest,
)
from pipeline.prices import PriceTable
from pipeline.progress import ProgressLine
from pipeline.records import RunSummary
from pipeline.redact import Scrubber
from pipeline.results import NOT_DONE_ERRORS
from pipeline.runner.plan import (
    RunPlan,
    api_key_for,
    job_prices,
    models_of,
    plan_run,
    shared_limits,
)
from pipeline.runner.run import DEFAULT_GRACE_S, LimiterFactory, Runner
from pipeline.runner.verdict import error_rate_code, exit_code
from pipeline.sources import Shard
from pipeline.spec import JobSpec, check_batch_mode, load_job
from pipeline.version import __version__

EndpointOpener = Callable[[JobSpec], AbstractAsyncContextManager[str | None]]
"""Given the job, an async context manager yielding the URL to send to instead of the
job's ``base_url`` (None: the job's own); entered on the run's event loop."""

log = structlog.get_logger("pipeline")


@dataclass(frozen=True, slots=True)
class RunOptions:
    """What ``pipeline run``'s flags change; the defaults are the flags left out."""

    input: Path | None = None
    """Read this input instead of ``[input] path``."""
    output: Path | None = None
    """Write here instead of ``[output] path``."""
    limit: int | None = None
    """Only the first N rows."""
    date: dt.date | None = None
    """Fill ``{date}`` in the output path with this day (backfill)."""
    fresh: bool = False
    """Ignore earlier results: send every row again."""
    retry_errors: bool = False
    """Send again the rows whose last result was an error."""
    force: bool = False
    """Run even when the output is already complete."""
    grace_s: float = DEFAULT_GRACE_S
    """On stopping, how long in-flight requests may finish."""
    prices: Path | None = None
    """A price file (JSON or TOML) over the job's and the packaged prices."""
    cache: Path | None = None
    """Use this response cache file (``--cache``), whatever ``[cache]`` says."""
    no_cache: bool = False
    """Use no response cache (``--no-cache``)."""
    shard: Shard | None = None
    """Run only this shard of the input, into its own output beside the job's."""
    rate_share: float | None = None
    """A shard's part of the job's requests/min, tokens/min and budget (default 1/N)."""
    batch: bool = False
    """Run in batch mode (the provider's Batch API) as if ``[batch] enabled = true``."""
    no_wait: bool = False
    """Batch mode: submit and collect what is ready, then exit 7 while batches still run."""


@dataclass(frozen=True, slots=True)
class PreparedRun:
    """A run checked and planned, nothing sent and no lock taken yet."""

    job: JobSpec
    job_file: str
    job_sha256: str
    plan: RunPlan
    prices: PriceTable
    fingerprint: dict[str, Any]
    options: RunOptions
    api_key: str | None = field(repr=False)

    @property
    def secrets(self) -> list[str]:
        """The values a log must never show."""
        return [self.api_key] if self.api_key else []


@dataclass(frozen=True, slots=True)
class RunResult:
    """How a run ended, for the CLI to print and a notebook to inspect.

    ``summary`` is None when nothing ran (``already_complete``: ``run_id`` and ``reason``
    are the earlier run's) or when the results could not be written (``EXIT_WRITE_FAILED``,
    ``reason`` the error; no manifest is written then).
    """

    exit_code: int
    reason: str
    output_path: Path
    manifest_path: Path
    run_id: str
    rows_planned: int
    """Output rows this run had to produce: input rows x models."""
    summary: RunSummary | None = None
    already_complete: bool = False

    @property
    def ok(self) -> bool:
        """Whether the exit code is 0."""
        return self.exit_code == EXIT_OK


def prepare_run(job: str | Path | JobSpec, options: RunOptions | None = None) -> PreparedRun:
    """Load (a path) and check the job, its key, prices and input; plan the output.

    Sends nothing and takes no lock; raises ``UserError`` on any mistake. A ``JobSpec``
    given as is has no file: the manifest names it ``<JobSpec NAME>`` and hashes its JSON.
    """
    options = options or RunOptions()
    if isinstance(job, JobSpec):
        spec, job_file = job, f"<JobSpec {job.name}>"
        job_sha256 = hashlib.sha256(job.model_dump_json().encode()).hexdigest()
    else:
        spec, job_file = load_job(job), str(Path(job))
        job_sha256 = file_sha256(Path(job))
    if options.batch and not spec.batch.enabled:
        spec = _in_batch_mode(spec, job_file)
    if options.no_wait and not spec.batch.enabled:
        raise JobError("--no-wait: needs batch mode ([batch] enabled = true or --batch)")
    if spec.batch.enabled and not spec.endpoint.is_fake:
        deployment = BatchRoutes.of(spec.endpoint.base_url).deployment
        if deployment is not None and spec.request.model != deployment:
            raise JobError(
                f"{job_file}: [request] model: batch lines must name the Azure deployment {deployment!r}"
            )
    api_key = api_key_for(spec)
    prices = job_prices(spec, options.prices)
    if options.shard is not None:
        share = options.rate_share if options.rate_share is not None else 1 / options.shard.count
        spec = shared_limits(spec, share)
    plan = plan_run(
        spec,
        input_path=options.input,
        output_path=options.output,
        limit=options.limit,
        day=options.date,
        shard=options.shard,
    )
    return PreparedRun(
        job=spec,
        job_file=job_file,
        job_sha256=job_sha256,
        plan=plan,
        prices=prices,
        fingerprint=input_fingerprint(plan.input_path, plan.input_files),
        options=options,
        api_key=api_key,
    )


def _in_batch_mode(spec: JobSpec, job_file: str) -> JobSpec:
    """The job with ``[batch] enabled`` (``--batch``); a job that cannot run so is a user error."""
    try:
        check_batch_mode(spec)
    except ValueError as exc:
        raise JobError(f"{job_file}: {exc} (--batch)") from None
    batch = spec.batch.model_copy(update={"enabled": True})
    return spec.model_copy(update={"batch": batch})


def execute_run(
    prepared: PreparedRun,
    *,
    open_endpoint: EndpointOpener | None = None,
    progress: ProgressLine | None = None,
    handle_signals: bool = False,
    limiter: LimiterFactory | None = None,
) -> RunResult:
    """Take the output's lock, skip an already complete output, run, write the manifest.

    Raises ``LockedError`` when another run holds the output, ``UserError`` when the
    output cannot be locked or a fake job comes without ``open_endpoint``.
    """
    plan = prepared.plan
    rows_planned = plan.rows * len(models_of(plan.job))
    with contextlib.ExitStack() as stack:
        try:
            lock = stack.enter_context(OutputLock(plan.output_path))
        except OSError as exc:
            raise OutputError(f"{plan.output_path}: cannot write output: {exc.strerror}") from None
        if lock.previous is not None:
            log.warning("lock.taken_over", previous=lock.previous)
        done = _already_complete(prepared, rows_planned)
        if done is not None:
            return done
        started = dt.datetime.now(dt.UTC)
        try:
            summary = anyio.run(
                _run, prepared, open_endpoint, progress, handle_signals, limiter, backend="asyncio"
            )
        except OutputError as exc:
            return RunResult(
                exit_code=EXIT_WRITE_FAILED,
                reason=str(exc),
                output_path=plan.output_path,
                manifest_path=record_failure(prepared, EXIT_WRITE_FAILED, str(exc), started),
                run_id=plan.run_id,
                rows_planned=rows_planned,
            )
        except BaseException as exc:  # recorded, then raised on: a bug (1), Ctrl-C (130)...
            code, reason = _failure(exc, prepared.secrets)
            record_failure(prepared, code, reason, started)
            raise
        log_finished(prepared, summary)
        code, reason = exit_code(prepared.job, summary)
        written = write_manifest(
            plan.output_path, build_manifest(prepared, summary, code, reason, started)
        )
    return RunResult(
        exit_code=code,
        reason=reason,
        output_path=plan.output_path,
        manifest_path=written,
        run_id=plan.run_id,
        rows_planned=rows_planned,
        summary=summary,
    )


def run_job(
    job: str | Path | JobSpec,
    options: RunOptions | None = None,
    *,
    open_endpoint: EndpointOpener | None = None,
    progress: ProgressLine | None = None,
    handle_signals: bool = False,
) -> RunResult:
    """``prepare_run`` then ``execute_run``: one run of a job, lock and manifest included."""
    return execute_run(
        prepare_run(job, options),
        open_endpoint=open_endpoint,
        progress=progress,
        handle_signals=handle_signals,
    )


async def _run(
    prepared: PreparedRun,
    open_endpoint: EndpointOpener | None,
    progress: ProgressLine | None,
    handle_signals: bool,
    limiter: LimiterFactory | None = None,
) -> RunSummary:
    job, options = prepared.job, prepared.options
    opened = open_endpoint(job) if open_endpoint is not None else contextlib.nullcontext(None)
    async with opened as base_url:
        runner = Runner(
            prepared.plan,
            api_key=prepared.api_key,
            base_url=base_url,
            progress=progress,
            fresh=options.fresh,
            retry_errors=options.retry_errors,
            grace_s=options.grace_s,
            handle_signals=handle_signals,
            prices=prepared.prices,
            cache_path=run_cache_path(prepared),
            limiter=limiter,
            batch_wait=not options.no_wait,
        )
        return await runner.run()


def run_cache_path(prepared: PreparedRun) -> Path | None:
    """The response cache file of the run: ``--no-cache`` > ``--cache`` > ``[cache]``."""
    options = prepared.options
    return cache_path(prepared.job.cache, path=options.cache, off=options.no_cache)


def _already_complete(prepared: PreparedRun, rows_planned: int) -> RunResult | None:
    """The result of not running: the output is complete for this very job and input."""
    plan, options = prepared.plan, prepared.options
    if options.force or options.fresh or options.retry_errors:
        return None
    earlier = read_manifest(plan.output_path)
    if (
        earlier is None
        or not plan.output_path.exists()
        or not earlier.same_work(prepared.job_sha256, prepared.fingerprint, options.limit)
    ):
        return None
    if NOT_DONE_ERRORS & {kind for kind, n in earlier.rows_by_error_type.items() if n}:
        return None  # rows that failed transiently (or on auth) are sent again
    # a finished run with too many errors stays a failure when run again
    rows = sum(earlier.rows_by_status.values())
    code, reason = error_rate_code(prepared.job, earlier.rows_by_status.get("error", 0), rows)
    if code == EXIT_OK and earlier.exit_code == EXIT_TOO_MANY_ERRORS:
        code, reason = EXIT_TOO_MANY_ERRORS, earlier.exit_reason
    log.info(
        "job.already_complete", run_id=earlier.run_id, output=str(plan.output_path), exit_code=code
    )
    return RunResult(
        exit_code=code,
        reason=reason if code != EXIT_OK else earlier.exit_reason,
        output_path=plan.output_path,
        manifest_path=manifest_path(plan.output_path),
        run_id=earlier.run_id,
        rows_planned=rows_planned,
        already_complete=True,
    )


def build_manifest(
    prepared: PreparedRun, summary: RunSummary, code: int, reason: str, started: dt.datetime
) -> Manifest:
    """The record of a run that got to its end (complete or not)."""
    plan, job = prepared.plan, prepared.job
    return Manifest(
        run_id=plan.run_id,
        job_name=job.name,
        job_file=prepared.job_file,
        job_sha256=prepared.job_sha256,
        input=prepared.fingerprint,
        input_rows=plan.rows,
        limit=prepared.options.limit,
        output=str(plan.output_path),
        complete=summary.complete,
        exit_code=code,
        exit_reason=reason,
        rows_by_status={"ok": summary.rows_ok, "error": summary.rows_error},
        rows_by_error_type=summary.errors_by_type,
        rows_sent=summary.rows_sent,
        rows_reused=summary.rows_reused,
        requests_sent=summary.requests_sent,
        prompt_tokens=summary.prompt_tokens,
        completion_tokens=summary.completion_tokens,
        duration_s=round(summary.elapsed_s, 3),
        started_at=started.isoformat(),
        finished_at=dt.datetime.now(dt.UTC).isoformat(),
        pipeline_version=__version__,
        cost_usd=round(summary.cost_usd, 6),
        earlier_cost_usd=round(summary.earlier_cost_usd, 6),
        unpriced_rows=summary.unpriced_rows,
        possibly_billed_attempts=summary.possibly_billed_attempts,
        max_cost_usd=job.limits.max_cost_usd,
        cache_path=str(path) if (path := run_cache_path(prepared)) is not None else None,
        cache_hits=summary.cache_hits,
        cache_saved_usd=round(summary.cache_saved_usd, 6),
        concurrency=concurrency_record(summary),
        extra={"shard": plan.shard.name} if plan.shard is not None else {},
    )


def concurrency_record(summary: RunSummary) -> dict[str, Any] | None:
    """The manifest's account of an auto concurrency limit (None: the limit was fixed)."""
    if summary.concurrency is None:
        return None
    limits = [limit for _, limit in summary.concurrency_history] or [summary.concurrency]
    return {
        "limit": summary.concurrency,
        "low": min(limits),
        "high": max(limits),
        "changes": max(0, len(summary.concurrency_history) - 1),
        "history": [list(point) for point in summary.concurrency_history],
    }


def _failure(exc: BaseException, secrets: list[str]) -> tuple[int, str]:
    """The exit code and reason of a run that ended by an exception."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted (KeyboardInterrupt)"
    if isinstance(exc, UserError):
        return EXIT_USER_ERROR, Scrubber(secrets)(str(exc))
    return EXIT_BUG, Scrubber(secrets)(f"internal error: {type(exc).__name__}: {exc}")[:500]


def record_failure(prepared: PreparedRun, code: int, reason: str, started: dt.datetime) -> Path:
    """Record a run that ended without a summary (exit 1, 5, an exception): its counts are
    unknown (``extra.counts``); what it wrote is in the part files. A manifest that cannot be
    written either (the disk is full) is logged, not raised."""
    plan, job = prepared.plan, prepared.job
    record = Manifest(
        run_id=plan.run_id,
        job_name=job.name,
        job_file=prepared.job_file,
        job_sha256=prepared.job_sha256,
        input=prepared.fingerprint,
        input_rows=plan.rows,
        limit=prepared.options.limit,
        output=str(plan.output_path),
        complete=False,
        exit_code=code,
        exit_reason=reason,
        rows_by_status={},
        rows_by_error_type={},
        rows_sent=0,
        rows_reused=0,
        requests_sent=0,
        prompt_tokens=0,
        completion_tokens=0,
        duration_s=round((dt.datetime.now(dt.UTC) - started).total_seconds(), 3),
        started_at=started.isoformat(),
        finished_at=dt.datetime.now(dt.UTC).isoformat(),
        pipeline_version=__version__,
        extra={"counts": "unknown: the run ended before its summary; see the part files"},
        max_cost_usd=job.limits.max_cost_usd,
    )
    try:
        return write_manifest(plan.output_path, record)
    except OSError as exc:
        log.warning("manifest.not_written", error=str(exc), exit_code=code)
        return manifest_path(plan.output_path)


def log_finished(prepared: PreparedRun, summary: RunSummary) -> None:
    """The closing ``job.finished`` event of a run that got to its end."""
    log.info(
        "job.finished",
        job=prepared.job.name,
        run_id=prepared.plan.run_id,
        ended=summary.ended,
        reason=summary.reason,
        output=summary.output_path,
        rows=summary.rows_total,
        ok=summary.rows_ok,
        error=summary.rows_error,
        reused=summary.rows_reused,
        errors_by_type=summary.errors_by_type,
        prompt_tokens=summary.prompt_tokens,
        completion_tokens=summary.completion_tokens,
        requests=summary.requests_sent,
        json_reasks=summary.json_reasks,
        elapsed_s=round(summary.elapsed_s, 3),
        cost_usd=round(summary.cost_usd, 6),
        possibly_billed_attempts=summary.possibly_billed_attempts,
        cache_hits=summary.cache_hits,
        cache_saved_usd=round(summary.cache_saved_usd, 6),
        concurrency=summary.concurrency,
    )

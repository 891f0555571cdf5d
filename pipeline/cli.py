"""argv -> command; prints, exits; starts the fake server for ``base_url = "fake"``.

``run`` is ``pipeline.runner.lifecycle`` (lock, skip-if-complete, exit code, manifest) with
the progress line, logging and the fake server added; the exit codes are documented
there and in the README, and re-exported here. ``run_job`` is the same, as a function.

Imports: at module level only the standard library and the light vocabulary (errors,
exit codes, the lock's error, records, the progress line, the version), so building the
parser (``pipeline --help``) loads no third-party package. Everything else (polars,
pyarrow, pydantic, the HTTP stack, the fake server, Ray) is imported in the first lines
of the function that uses it: a command loads only its own machinery.
``tests/test_cli_startup.py`` holds this.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, date, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeAlias, cast

from pipeline.errors import JobError, OutputError, UserError
from pipeline.exits import (
    EXIT_ABORTED,
    EXIT_BUDGET,
    EXIT_BUG,
    EXIT_INTERRUPTED,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_PENDING,
    EXIT_SHARDS_MISSING,
    EXIT_TERMINATED,
    EXIT_TOO_MANY_ERRORS,
    EXIT_USER_ERROR,
    EXIT_WRITE_FAILED,
)
from pipeline.lock import LockedError
from pipeline.progress import ProgressLine, usd
from pipeline.records import Ended, RunSummary
from pipeline.version import __version__

if TYPE_CHECKING:
    from pipeline.cache import CacheStats
    from pipeline.engines.ray import RayRun
    from pipeline.estimate import Sample
    from pipeline.prices import PriceTable
    from pipeline.runner import RunOptions, RunPlan, RunResult
    from pipeline.sources import Shard
    from pipeline.spec import JobSpec

__all__ = [
    "EXIT_ABORTED",
    "EXIT_BUDGET",
    "EXIT_BUG",
    "EXIT_INTERRUPTED",
    "EXIT_LOCKED",
    "EXIT_OK",
    "EXIT_PENDING",
    "EXIT_SHARDS_MISSING",
    "EXIT_TERMINATED",
    "EXIT_TOO_MANY_ERRORS",
    "EXIT_USER_ERROR",
    "EXIT_WRITE_FAILED",
    "build_parser",
    "main",
    "open_endpoint",
    "run_job",
    "run_on_ray",
]


@contextlib.asynccontextmanager
async def open_endpoint(job: JobSpec) -> AsyncIterator[str | None]:
    """Start the built-in fake server when the job asks for it (on the running event loop);
    yield its URL, or None: the job's own endpoint."""
    if not job.endpoint.is_fake:
        yield None
        return
    import structlog

    from pipeline import fake

    config = fake.FakeConfig.from_options(**job.fake.model_dump())
    async with fake.serve(config) as server:
        structlog.get_logger("pipeline").info("fake_server.started", base_url=server.base_url)
        yield server.base_url


def run_job(job: str | Path | JobSpec, options: RunOptions | None = None) -> RunResult:
    """Run a job as ``pipeline run`` does, from Python (a notebook, a scheduler's task).

    The same lock, skip-if-complete, manifest and exit code as the command; the built-in
    fake server is started for ``base_url = "fake"``. Logging stays as the caller set it
    up (``pipeline.log.configure_logging`` is the command's). Raises ``UserError`` (a bad
    job, input or key: exit code 2) and ``LockedError`` (another run holds the output: 75).
    """
    from pipeline.runner import lifecycle

    return lifecycle.run_job(job, options, open_endpoint=open_endpoint)


def run_on_ray(
    job: str | Path,
    source: str | Path | Any = None,
    options: RunOptions | None = None,
    *,
    workers: int | None = None,
    address: str | None = None,
) -> RayRun:
    """Run a job as ``pipeline run --engine ray`` does, from Python (a notebook).

    ``source`` is the input instead of ``[input] path``: a path (file, directory, glob) or
    a Ray Dataset (it needs ``[input] id_column``). Ray is started locally unless it
    already runs or ``address`` names a cluster; ``workers`` shards (default: its CPUs)
    share one global rate limit; the result holds each shard's ``RunResult`` and, once
    all are complete, the merge (``merged.summary``, the manifest, the exit code). The
    built-in fake server is started for ``base_url = "fake"``.
    """
    from pipeline import fake
    from pipeline.engines import ray as ray_engine
    from pipeline.runner import RunOptions
    from pipeline.spec import load_job

    options = options or RunOptions()
    dataset = None
    if isinstance(source, str | Path):
        options = dataclasses.replace(options, input=Path(source))
    elif source is not None:
        dataset = source
    job_spec = load_job(Path(job))
    with contextlib.ExitStack() as stack:
        base_url = None
        if job_spec.endpoint.is_fake:
            config = fake.FakeConfig.from_options(**job_spec.fake.model_dump())
            base_url = stack.enter_context(fake.serve_in_thread(config)).base_url
        return ray_engine.run_on_ray(
            job, options, workers=workers, address=address, base_url=base_url, dataset=dataset
        )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be zero or more seconds: {text!r}")
    return value


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _shard(text: str) -> Shard:
    from pipeline.sources import Shard

    try:
        return Shard.parse(text)
    except JobError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"--shard {text!r}: ")) from None


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1: {text!r}")
    return value


Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def build_parser() -> argparse.ArgumentParser:
    """The ``pipeline`` command line: one function adds each command."""
    parser = argparse.ArgumentParser(
        prog="pipeline", description="Batch chat completions: Parquet/JSONL in, Parquet out."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_run(commands)
    _add_validate(commands)
    _add_estimate(commands)
    _add_report(commands)
    _add_cache(commands)
    _add_merge(commands)
    _add_batch(commands)
    commands.add_parser(
        "fake-server", help="run the built-in OpenAI-compatible fake server", add_help=False
    )
    return parser


def _job_command(commands: Commands, name: str, help_text: str) -> argparse.ArgumentParser:
    """A command that takes a job file, with the input and row-limit overrides."""
    sub = commands.add_parser(name, help=help_text)
    sub.add_argument("job", type=Path, help="the job file (TOML)")
    sub.add_argument("--input", type=Path, help="read this input instead of [input] path")
    sub.add_argument("--limit", type=_positive_int, help="only the first N rows")
    return sub


def _add_run(commands: Commands) -> None:
    run = _job_command(commands, "run", "run a job (or resume it: run the same command again)")
    run.add_argument("--output", type=Path, help="write here instead of [output] path")
    run.add_argument("--log-file", type=Path, help="write JSON log events to this file")
    run.add_argument(
        "--date", type=_day, help="fill {date} in the output path with this day (YYYY-MM-DD)"
    )
    run.add_argument(
        "--fresh", action="store_true", help="ignore earlier results: send every row again"
    )
    run.add_argument(
        "--retry-errors",
        action="store_true",
        help="send again the rows whose last result was an error",
    )
    run.add_argument(
        "--force", action="store_true", help="run even when the output is already complete"
    )
    run.add_argument(
        "--grace-s",
        type=_seconds,
        help="on SIGINT/SIGTERM, how long in-flight requests may finish",
    )
    run.add_argument(
        "--prices",
        type=Path,
        metavar="FILE",
        help="model prices (JSON or TOML) over the job's and the packaged ones",
    )
    _add_run_cache_flags(run)
    _add_run_shard_flags(run)
    _add_run_batch_flags(run)


def _add_run_cache_flags(run: argparse.ArgumentParser) -> None:
    """``run``: the response cache, and catching up on unfinished nights."""
    cache_flags = run.add_mutually_exclusive_group()
    cache_flags.add_argument(
        "--cache",
        type=Path,
        metavar="PATH",
        help="take answers from / store answers in this response cache file (SQLite)",
    )
    cache_flags.add_argument(
        "--no-cache", action="store_true", help="use no response cache, whatever [cache] says"
    )
    run.add_argument(
        "--catch-up",
        action="store_true",
        help="first resume every earlier {date} output left unfinished, oldest first",
    )


def _add_run_shard_flags(run: argparse.ArgumentParser) -> None:
    """``run``: shards and the Ray engine."""
    run.add_argument(
        "--shard",
        type=_shard,
        metavar="I/N",
        help="run shard I (0-based) of N into <output>.shards/I-of-N/; `pipeline merge` joins them",
    )
    run.add_argument(
        "--rate-share",
        type=_fraction,
        metavar="F",
        help="a shard's part of the job's requests/min, tokens/min and max_cost_usd (default 1/N)",
    )
    run.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="ray: run --workers shards as Ray tasks under one global rate limit, then merge",
    )
    run.add_argument(
        "--workers",
        type=_positive_int,
        metavar="N",
        help="--engine ray: shards to run (default: the cluster's CPUs)",
    )
    run.add_argument(
        "--address",
        metavar="ADDR",
        help="--engine ray: an existing Ray cluster (default: start Ray on this machine)",
    )


def _add_run_batch_flags(run: argparse.ArgumentParser) -> None:
    """``run``: batch mode."""
    run.add_argument(
        "--batch",
        action="store_true",
        help="send through the provider's Batch API (as [batch] enabled = true)",
    )
    run.add_argument(
        "--no-wait",
        action="store_true",
        help="batch mode: submit and collect what is ready, exit 7 while batches still run",
    )


def _add_validate(commands: Commands) -> None:
    sub = _job_command(
        commands, "validate", "check a job and its input, build every request; sends nothing"
    )
    sub.add_argument("--prices", type=Path, metavar="FILE", help="model prices (JSON or TOML)")
    sub.add_argument(
        "--strict", action="store_true", help="exit 2 when any row would be a bad_input row"
    )


def _add_estimate(commands: Commands) -> None:
    estimate = _job_command(
        commands,
        "estimate",
        "rows, tokens, cost and duration of a job; sends nothing unless --sample",
    )
    estimate.add_argument(
        "--sample",
        type=_positive_int,
        metavar="N",
        help="send the first N rows for real and extrapolate",
    )
    estimate.add_argument("--prices", type=Path, metavar="FILE", help="model prices (JSON or TOML)")
    estimate.add_argument(
        "--batch", action="store_true", help="also show the cost in batch mode (Batch API prices)"
    )


def _add_report(commands: Commands) -> None:
    report = commands.add_parser(
        "report", help="summarize an output file; --html writes a page with charts"
    )
    report.add_argument("output", type=Path, help="an output Parquet file")
    report.add_argument(
        "--html", type=Path, metavar="FILE", help="also write a self-contained HTML report here"
    )


def _add_cache(commands: Commands) -> None:
    command = commands.add_parser("cache", help="inspect or prune a response cache file")
    actions = command.add_subparsers(dest="cache_command", required=True)
    stats = actions.add_parser(
        "stats", help="entries, size, per model, oldest and newest entry of a cache file"
    )
    stats.add_argument("path", type=Path, help="the cache file (SQLite)")
    prune = actions.add_parser("prune", help="delete the entries older than an age")
    prune.add_argument("path", type=Path, help="the cache file (SQLite)")
    prune.add_argument(
        "--older-than",
        type=_age,
        required=True,
        metavar="AGE",
        help="an age such as 30d, 12h, 90m, 2w: entries stored before then are deleted",
    )


def _age(text: str) -> float:
    from pipeline.cache import parse_age

    try:
        return parse_age(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cache(args: argparse.Namespace) -> int:
    from pipeline.cache import cache_stats, prune

    if args.cache_command == "prune":
        removed = prune(args.path, args.older_than)
        print(
            f"{args.path}: {removed:,} entries older than {args.older_than / 86400:g} days removed"
        )
    stats = cache_stats(args.path)
    print(render_cache_stats(stats))
    return EXIT_OK


def _add_merge(commands: Commands) -> None:
    merge = commands.add_parser(
        "merge", help="join the complete shards of a sharded run into the one output"
    )
    merge.add_argument("job", type=Path, help="the job file (TOML) the shards ran")
    merge.add_argument("--output", type=Path, help="the output the shards ran with --output")
    merge.add_argument(
        "--date", type=_day, help="fill {date} in the output path with this day (YYYY-MM-DD)"
    )
    merge.add_argument(
        "--shards",
        type=_positive_int,
        metavar="N",
        help="merge the shards of N (when shards of several counts are beside the output)",
    )


def _merge(args: argparse.Namespace) -> int:
    from pipeline.engines import ShardsMissing, merge_shards
    from pipeline.runner import resolve_output
    from pipeline.spec import load_job

    job = load_job(args.job)
    output = args.output or resolve_output(job.output.path, job.name, run_id="", day=args.date)
    try:
        result = merge_shards(args.job, output, count=args.shards, job=job)
    except ShardsMissing as exc:
        return _shards_missing(exc)
    print(f"merged {len(result.shards)} shards")
    _print_summary(result.summary)
    if result.exit_code != EXIT_OK:
        print(f"finished: {result.reason}", file=sys.stderr)
    return result.exit_code


def _add_batch(commands: Commands) -> None:
    batch = commands.add_parser("batch", help="the provider batches of a job's output (batch mode)")
    actions = batch.add_subparsers(dest="action", required=True)
    for action, help_text in (
        ("status", "print each batch: id, status, counts, created, expires"),
        ("cancel", "cancel the running batches; the next run collects what they finished"),
    ):
        sub = actions.add_parser(action, help=help_text)
        sub.add_argument("job", type=Path, help="the job file (TOML)")
        sub.add_argument("--output", type=Path, help="the output, instead of [output] path")
        sub.add_argument("--date", type=_day, help="fill {date} in the output path (YYYY-MM-DD)")


def _batch(args: argparse.Namespace) -> int:
    import anyio

    from pipeline.log import configure_logging
    from pipeline.runner import api_key_for, plan_run
    from pipeline.runner.batch import BatchLine, batch_status
    from pipeline.spec import load_job

    job = load_job(args.job)
    api_key = api_key_for(job)
    plan = plan_run(job, output_path=args.output, day=args.date)
    configure_logging(secrets=[api_key] if api_key else [], level=logging.WARNING)

    async def look() -> list[BatchLine]:
        async with open_endpoint(job) as base_url:
            return await batch_status(
                plan, api_key=api_key, base_url=base_url, cancel=args.action == "cancel"
            )

    lines = anyio.run(look, backend="asyncio")
    if not lines:
        print(f"no batches submitted for {plan.output_path}")
    for line in lines:
        print(line.render())
    return EXIT_OK


def _cost_line(summary: RunSummary) -> str:
    text = f"cost {usd(summary.cost_usd)}"
    if summary.unpriced_rows:
        text += f" + {summary.unpriced_rows} rows without a price"
    if summary.earlier_cost_usd:
        text += f" ({usd(summary.cost_usd + summary.earlier_cost_usd)} with earlier runs)"
    if summary.possibly_billed_attempts:
        text += f"; {summary.possibly_billed_attempts} possibly billed attempts (sent, never answered in full)"
    if summary.cache_hits:
        text += (
            f"; {summary.cache_hits:,} answers from the cache saved {usd(summary.cache_saved_usd)}"
        )
    return text


def render_cache_stats(stats: CacheStats) -> str:
    """What ``pipeline cache stats`` prints."""
    lines = [f"{stats.path}: {stats.entries:,} entries, {stats.size_bytes / 1e6:,.1f} MB"]
    if stats.oldest is not None and stats.newest is not None:
        lines.append(f"oldest {_when(stats.oldest)}, newest {_when(stats.newest)}")
    if stats.by_model:
        width = max(len("model"), *(len(m.model) for m in stats.by_model))
        lines.append(f"  {'model':<{width}}  {'entries':>9}  {'cost then':>10}")
        lines.extend(
            f"  {m.model:<{width}}  {m.entries:>9,}  {usd(m.cost_usd):>10}" for m in stats.by_model
        )
    return "\n".join(lines)


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _concurrency_line(summary: RunSummary) -> str:
    """``concurrency auto: limit 9 at the end (between 4 and 16, 12 changes)``."""
    limits = [limit for _, limit in summary.concurrency_history] or [summary.concurrency or 0]
    changes = max(0, len(summary.concurrency_history) - 1)
    return (
        f"concurrency auto: limit {summary.concurrency} at the end"
        f" (between {min(limits)} and {max(limits)}, {changes} changes)"
    )


def _print_summary(summary: RunSummary) -> None:
    from pipeline.results import resend_hint

    errors = ", ".join(f"{kind} {count}" for kind, count in sorted(summary.errors_by_type.items()))
    reused = f" ({summary.rows_reused} from earlier runs)" if summary.rows_reused else ""
    print(
        f"{summary.rows_total} rows{reused}: {summary.rows_ok} ok, {summary.rows_error} error"
        + (f" ({errors})" if errors else "")
        + f"; {summary.prompt_tokens + summary.completion_tokens:,} tokens;"
        + f" {summary.requests_sent} requests"
        + (f" ({summary.json_reasks} JSON re-asks)" if summary.json_reasks else "")
        + f" in {summary.elapsed_s:.1f}s; {_cost_line(summary)}"
    )
    if summary.concurrency is not None:
        print(_concurrency_line(summary))
    if summary.complete:
        print(f"output: {summary.output_path}")
    hint = resend_hint(summary.errors_by_type, summary.rows_total)
    if hint is not None:
        print(hint, file=sys.stderr)


def _print_warnings(plan: RunPlan) -> None:
    for warning in plan.warnings:
        print(f"warning: {warning}", file=sys.stderr)


def _validate(args: argparse.Namespace) -> int:
    from pipeline import validate
    from pipeline.cache import cache_path, uncached_reason
    from pipeline.requests import RequestBuilder
    from pipeline.runner import job_prices, plan_run
    from pipeline.spec import load_job

    job = load_job(args.job)
    _key_note(job)
    job_prices(job, args.prices)
    plan = plan_run(job, input_path=args.input, limit=args.limit)
    _print_warnings(plan)
    extraction = plan.extraction
    builder = RequestBuilder.for_job(
        job, response_format=extraction.response_format() if extraction else None
    )
    check = validate.check_rows(plan, builder)
    request = job.request
    if request.models:
        models = (
            f"models {', '.join(request.models)} ({plan.rows * len(request.models)} output rows)"
        )
    else:
        models = f"model {request.model or f'from column {request.model_column!r}'}"
    verdict = "ok" if not check.bad.total else f"{check.bad.total:,} bad rows"
    print(
        f"{args.job}: {verdict}: {plan.rows} rows from {plan.input_path}, {models}, output {plan.output_path}"
    )
    cache_file = cache_path(job.cache)
    if cache_file is not None:
        reason = uncached_reason(job.request, job.cache)
        print(f"response cache: {cache_file}" + (f" (not used: {reason})" if reason else ""))
    _warn_oversize(plan)
    if check.bad.total:
        print(f"{check.bad.total:,} rows will be error rows (bad_input), never sent:")
        print("\n".join(check.bad.lines()))
    if check.warnings.total:
        print(f"{check.warnings.total:,} rows will be sent but deserve a look:")
        print("\n".join(check.warnings.lines()))
    return EXIT_USER_ERROR if args.strict and check.bad.total else EXIT_OK


def _key_note(job: JobSpec) -> None:
    """``validate`` sends nothing, so a missing key is a note, not an error."""
    from pipeline.runner import api_key_for

    try:
        api_key_for(job)
    except UserError as exc:
        print(f"note: {exc} (run will need it)", file=sys.stderr)


def _warn_oversize(plan: RunPlan) -> None:
    """Warn (stderr) about rows too large for ``limits.tokens_per_minute``."""
    from pipeline import validate
    from pipeline.requests import RequestBuilder

    warning = validate.oversize_warning(plan, RequestBuilder.for_job(plan.job))
    if warning is not None:
        print(warning, file=sys.stderr)


def _estimate(args: argparse.Namespace) -> int:
    import anyio

    from pipeline import estimate
    from pipeline.log import configure_logging
    from pipeline.requests import RequestBuilder
    from pipeline.runner import api_key_for, job_prices, plan_run
    from pipeline.spec import load_job

    job = load_job(args.job)
    prices = job_prices(job, args.prices)
    api_key = api_key_for(job) if args.sample else None
    plan = plan_run(job, input_path=args.input, limit=args.limit)
    configure_logging(secrets=[api_key] if api_key else [], level=logging.WARNING)
    count = estimate.count_prompts(plan, RequestBuilder.for_job(job))
    _warn_oversize(plan)
    sample = None
    if args.sample:
        sample = anyio.run(
            partial(_sample, plan, args.sample, api_key=api_key, prices=prices),
            backend="asyncio",
        )
    price = prices.lookup(sample.model if sample else None, job.request.model)
    print(f"{args.job}: {plan.input_path}, model {job.request.model}")
    print(estimate.render(estimate.extrapolate(job, count, price, sample), job))
    if args.batch or job.batch.enabled:
        batch_price = price.for_batch() if price is not None else None
        batched = estimate.extrapolate(job, count, batch_price, sample)
        print(estimate.batch_cost_line(batched, job))
    return EXIT_OK


async def _sample(plan: RunPlan, n: int, *, api_key: str | None, prices: PriceTable) -> Sample:
    from pipeline import estimate

    async with open_endpoint(plan.job) as base_url:
        return await estimate.run_sample(plan, n, api_key=api_key, prices=prices, base_url=base_url)


def _report(args: argparse.Namespace) -> int:
    from pipeline import report

    summary = report.summarize(args.output)
    print(report.render_text(summary))
    if args.html is not None:
        try:
            args.html.parent.mkdir(parents=True, exist_ok=True)
            args.html.write_text(report.render_html(summary), encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"{args.html}: cannot write: {exc.strerror}") from None
        print(f"html report: {args.html}")
    return EXIT_OK


def _run_ray(args: argparse.Namespace, options: RunOptions) -> int:
    from pipeline.engines import ShardsMissing
    from pipeline.log import configure_logging
    from pipeline.runner import api_key_for
    from pipeline.spec import load_job

    key = api_key_for(load_job(args.job))
    configure_logging(secrets=[key] if key else [])
    try:
        run = run_on_ray(args.job, None, options, workers=args.workers, address=args.address)
    except ShardsMissing as exc:
        return _shards_missing(exc)
    if run.merged is None:
        for result in run.shards:
            state = "complete" if result.exit_code == EXIT_OK else result.reason
            print(f"{result.output_path}: exit {result.exit_code}, {state}", file=sys.stderr)
        print(f"stopped: {run.reason}; run the same command again to resume", file=sys.stderr)
        return run.exit_code
    print(f"ray: {len(run.shards)} shards merged")
    _print_summary(run.merged.summary)
    if run.exit_code != EXIT_OK:
        print(f"finished: {run.reason}", file=sys.stderr)
    return run.exit_code


def _run(args: argparse.Namespace) -> int:
    from pipeline.runner import DEFAULT_GRACE_S, RunOptions

    options = RunOptions(
        input=args.input,
        output=args.output,
        limit=args.limit,
        date=args.date,
        fresh=args.fresh,
        retry_errors=args.retry_errors,
        force=args.force,
        grace_s=DEFAULT_GRACE_S if args.grace_s is None else args.grace_s,
        prices=args.prices,
        cache=args.cache,
        no_cache=args.no_cache,
        shard=args.shard,
        rate_share=args.rate_share,
        batch=args.batch,
        no_wait=args.no_wait,
    )
    if args.engine == "ray":
        return _run_ray(args, options)
    if args.workers is not None or args.address is not None:
        raise JobError("--workers and --address go with --engine ray")
    if not args.catch_up:
        return _run_once(args, options)
    return _catch_up(args, options)


def _catch_up(args: argparse.Namespace, options: RunOptions) -> int:
    """Resume every earlier unfinished ``{date}`` output, oldest first, then run today's.

    The exit code is today's when it is not 0, else the first failing earlier night's; a
    night stopped by a signal stops the catch-up there."""
    from pipeline.runner.catchup import unfinished_days
    from pipeline.spec import load_job

    if args.output is not None or args.date is not None:
        raise JobError("--catch-up runs every unfinished night: it takes no --output or --date")
    today = datetime.now(UTC).date()
    first_failure = EXIT_OK
    for day in unfinished_days(load_job(args.job), today):
        print(f"catching up {day.isoformat()}", file=sys.stderr)
        try:
            code = _run_once(args, replace(options, date=day))
        except UserError as exc:
            print(f"error: {day.isoformat()}: {exc}", file=sys.stderr)
            code = EXIT_USER_ERROR
        except LockedError as exc:
            print(f"error: {day.isoformat()}: {exc}", file=sys.stderr)
            code = EXIT_LOCKED
        if code in (EXIT_INTERRUPTED, EXIT_TERMINATED):
            return code
        first_failure = first_failure or code
    print(f"running {today.isoformat()}", file=sys.stderr)
    return _run_once(args, replace(options, date=today)) or first_failure


def _run_once(args: argparse.Namespace, options: RunOptions) -> int:
    from pipeline.log import configure_logging
    from pipeline.runner import execute_run, prepare_run

    prepared = prepare_run(args.job, options)
    _print_warnings(prepared.plan)
    progress = ProgressLine(sys.stderr)
    with contextlib.ExitStack() as stack:
        stream = cast("TextIO", progress.lines_above()) if progress.enabled else sys.stderr
        if args.log_file is not None:
            try:
                args.log_file.parent.mkdir(parents=True, exist_ok=True)
                stream = stack.enter_context(args.log_file.open("a", encoding="utf-8"))
                # before the file closes, log to stderr again (main may be called again)
                stack.callback(configure_logging, secrets=prepared.secrets)
            except (FileExistsError, NotADirectoryError):
                raise JobError(
                    f"--log-file {args.log_file}: cannot write: a part of its folder is a file"
                ) from None
            except OSError as exc:
                raise JobError(
                    f"--log-file {args.log_file}: cannot write: {exc.strerror}"
                ) from None
        configure_logging(secrets=prepared.secrets, stream=stream)
        result = execute_run(
            prepared, open_endpoint=open_endpoint, progress=progress, handle_signals=True
        )
    try:
        return _print_result(result)
    except BrokenPipeError:  # `pipeline run JOB | head`: the run's own code still counts
        _silence_stdout()
        return result.exit_code


def _print_result(result: RunResult) -> int:
    if result.already_complete:
        print(f"already complete (run {result.run_id}): {result.output_path}; --force to run again")
        if result.exit_code != EXIT_OK:
            print(f"finished: {result.reason}", file=sys.stderr)
        return result.exit_code
    summary = result.summary
    if summary is None:  # EXIT_WRITE_FAILED: results could not be written
        print(f"error: {result.reason}", file=sys.stderr)
        print(
            "every row written before this is kept; run the same command again to resume",
            file=sys.stderr,
        )
        return result.exit_code
    _print_summary(summary)
    if result.exit_code != EXIT_OK:
        print(
            f"{'stopped' if not summary.complete else 'finished'}: {result.reason}",
            file=sys.stderr,
        )
    if not summary.complete:
        again = "raise limits.max_cost_usd and run" if summary.ended is Ended.BUDGET else "run"
        if summary.ended is Ended.INPUT_FAILED:
            again = "repair or replace that part of the input and run"
        if summary.ended is Ended.PENDING:
            again = "batches are still running; later, run"
        print(
            f"{summary.rows_total} of {result.rows_planned} rows done; {again} the same command again to resume",
            file=sys.stderr,
        )
    return result.exit_code


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``pipeline`` and ``python -m pipeline``."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["fake-server"]:
        from pipeline import fake

        return fake.main(args_list[1:])
    args = build_parser().parse_args(args_list)
    if argv is None and _lean(args):
        from pipeline.absent import keep_out

        keep_out()  # this process is the command's own: no numpy, no pandas
    try:
        if args.command == "validate":
            return _validate(args)
        if args.command == "estimate":
            return _estimate(args)
        if args.command == "report":
            return _report(args)
        if args.command == "cache":
            return _cache(args)
        if args.command == "merge":
            return _merge(args)
        if args.command == "batch":
            return _batch(args)
        return _run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except LockedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (`pipeline report OUT | head`): what it read is all it wanted
        _silence_stdout()
        print("error: standard output was closed early (broken pipe)", file=sys.stderr)
        return EXIT_USER_ERROR


def _lean(args: argparse.Namespace) -> bool:
    """Whether the command runs without the modules a run never uses: a local run, a merge."""
    command: str = args.command
    return command == "merge" or (command == "run" and args.engine != "ray")


def _shards_missing(exc: Exception) -> int:
    """``merge`` (or a Ray run's merge) found a shard without a complete output."""
    print(f"error: {exc}", file=sys.stderr)
    return EXIT_SHARDS_MISSING


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)

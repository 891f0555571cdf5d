"""argv -> command; prints, exits; starts the fake server for ``base_url = "fake"``.

``run`` is ``pipeline.runner.lifecycle`` (lock, skip-if-complete, exit code, manifest) with
the progress line, logging and the fake server added; the exit codes are documented
there and in the README, and re-exported here. ``run_job`` is the same, as a function.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from datetime import date
from functools import partial
from pathlib import Path
from typing import TextIO, TypeAlias, cast

import anyio
import structlog

from pipeline import estimate, fake
from pipeline.errors import JobError, OutputError, UserError
from pipeline.lock import LockedError
from pipeline.log import configure_logging
from pipeline.prices import PriceTable
from pipeline.progress import ProgressLine, usd
from pipeline.records import Ended, RunSummary
from pipeline.requests import RequestBuilder
from pipeline.runner import (
    DEFAULT_GRACE_S,
    EXIT_ABORTED,
    EXIT_BUDGET,
    EXIT_BUG,
    EXIT_INTERRUPTED,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_PENDING,
    EXIT_TERMINATED,
    EXIT_TOO_MANY_ERRORS,
    EXIT_USER_ERROR,
    EXIT_WRITE_FAILED,
    RunOptions,
    RunPlan,
    RunResult,
    api_key_for,
    execute_run,
    job_prices,
    lifecycle,
    plan_run,
    prepare_run,
)
from pipeline.runner.batch import BatchLine, batch_status
from pipeline.spec import JobSpec, load_job

__all__ = [
    "EXIT_ABORTED",
    "EXIT_BUDGET",
    "EXIT_BUG",
    "EXIT_INTERRUPTED",
    "EXIT_LOCKED",
    "EXIT_OK",
    "EXIT_PENDING",
    "EXIT_TERMINATED",
    "EXIT_TOO_MANY_ERRORS",
    "EXIT_USER_ERROR",
    "EXIT_WRITE_FAILED",
    "build_parser",
    "main",
    "open_endpoint",
    "run_job",
]

log = structlog.get_logger("pipeline")


@contextlib.asynccontextmanager
async def open_endpoint(job: JobSpec) -> AsyncIterator[str | None]:
    """Start the built-in fake server when the job asks for it (on the running event loop);
    yield its URL, or None: the job's own endpoint."""
    if not job.endpoint.is_fake:
        yield None
        return
    config = fake.FakeConfig.from_options(**job.fake.model_dump())
    async with fake.serve(config) as server:
        log.info("fake_server.started", base_url=server.base_url)
        yield server.base_url


def run_job(job: str | Path | JobSpec, options: RunOptions | None = None) -> RunResult:
    """Run a job as ``pipeline run`` does, from Python (a notebook, a scheduler's task).

    The same lock, skip-if-complete, manifest and exit code as the command; the built-in
    fake server is started for ``base_url = "fake"``. Logging stays as the caller set it
    up (``pipeline.log.configure_logging`` is the command's). Raises ``UserError`` (a bad
    job, input or key: exit code 2) and ``LockedError`` (another run holds the output: 75).
    """
    return lifecycle.run_job(job, options, open_endpoint=open_endpoint)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def build_parser() -> argparse.ArgumentParser:
    """The ``pipeline`` command line: one function adds each command."""
    parser = argparse.ArgumentParser(
        prog="pipeline", description="Batch chat completions: Parquet/JSONL in, Parquet out."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_run(commands)
    _add_validate(commands)
    _add_estimate(commands)
    _add_report(commands)
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
        type=float,
        default=DEFAULT_GRACE_S,
        help="on SIGINT/SIGTERM, how long in-flight requests may finish",
    )
    run.add_argument(
        "--prices",
        type=Path,
        metavar="FILE",
        help="model prices (JSON or TOML) over the job's and the packaged ones",
    )
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
    validate = _job_command(
        commands, "validate", "check a job and its input without sending anything"
    )
    validate.add_argument("--prices", type=Path, metavar="FILE", help="model prices (JSON or TOML)")


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
    return text


def _print_summary(summary: RunSummary) -> None:
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
    if summary.complete:
        print(f"output: {summary.output_path}")


def _validate(args: argparse.Namespace) -> int:
    job = load_job(args.job)
    api_key_for(job)
    job_prices(job, args.prices)
    plan = plan_run(job, input_path=args.input, limit=args.limit)
    request = job.request
    if request.models:
        models = (
            f"models {', '.join(request.models)} ({plan.rows * len(request.models)} output rows)"
        )
    else:
        models = f"model {request.model or f'from column {request.model_column!r}'}"
    print(
        f"{args.job}: ok: {plan.rows} rows from {plan.input_path}, {models}, output {plan.output_path}"
    )
    return EXIT_OK


def _estimate(args: argparse.Namespace) -> int:
    job = load_job(args.job)
    prices = job_prices(job, args.prices)
    api_key = api_key_for(job) if args.sample else None
    plan = plan_run(job, input_path=args.input, limit=args.limit)
    configure_logging(secrets=[api_key] if api_key else [], level=logging.WARNING)
    count = estimate.count_prompts(plan, RequestBuilder.for_job(job))
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


async def _sample(
    plan: RunPlan, n: int, *, api_key: str | None, prices: PriceTable
) -> estimate.Sample:
    async with open_endpoint(plan.job) as base_url:
        return await estimate.run_sample(plan, n, api_key=api_key, prices=prices, base_url=base_url)


def _report(args: argparse.Namespace) -> int:
    from pipeline import report  # polars-heavy: only for this command

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


def _run(args: argparse.Namespace) -> int:
    options = RunOptions(
        input=args.input,
        output=args.output,
        limit=args.limit,
        date=args.date,
        fresh=args.fresh,
        retry_errors=args.retry_errors,
        force=args.force,
        grace_s=args.grace_s,
        prices=args.prices,
        batch=args.batch,
        no_wait=args.no_wait,
    )
    prepared = prepare_run(args.job, options)
    progress = ProgressLine(sys.stderr)
    with contextlib.ExitStack() as stack:
        stream = cast("TextIO", progress.lines_above()) if progress.enabled else sys.stderr
        if args.log_file is not None:
            try:
                args.log_file.parent.mkdir(parents=True, exist_ok=True)
                stream = stack.enter_context(args.log_file.open("a", encoding="utf-8"))
            except OSError as exc:
                raise JobError(
                    f"--log-file {args.log_file}: cannot write: {exc.strerror}"
                ) from None
        configure_logging(secrets=prepared.secrets, stream=stream)
        result = execute_run(
            prepared, open_endpoint=open_endpoint, progress=progress, handle_signals=True
        )
    return _print_result(result)


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
        return fake.main(args_list[1:])
    args = build_parser().parse_args(args_list)
    try:
        if args.command == "validate":
            return _validate(args)
        if args.command == "estimate":
            return _estimate(args)
        if args.command == "report":
            return _report(args)
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

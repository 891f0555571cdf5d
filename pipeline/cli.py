"""argv -> load job -> configure logging -> run; maps errors to exit codes.

Exit codes (stable, documented in the README):
    0   success: the output is complete (or already was)
    1   an internal error (a bug): the traceback is printed
    2   a user error (bad job, bad input, unwritable output) before anything was sent
    3   the run finished, but more rows failed than ``limits.max_error_rate`` allows
    4   aborted: the endpoint refused every request (bad key, unknown model or path)
    5   results could not be written mid-run (disk full?); what was written is kept
    6   budget reached: ``limits.max_cost_usd`` would be passed; checkpointed, resume with a higher one
    75  another run is writing the same output (locked)
    130 interrupted by SIGINT (143: by SIGTERM); run the same command again to resume
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from datetime import UTC, date, datetime
from functools import partial
from pathlib import Path
from typing import Any, TextIO, cast

import anyio
import structlog

from pipeline import __version__, estimate, fake
from pipeline.budget import budget_price
from pipeline.errors import JobError, OutputError, UserError
from pipeline.lock import LockedError, OutputLock
from pipeline.log import configure_logging
from pipeline.manifest import (
    Manifest,
    file_sha256,
    input_fingerprint,
    read_manifest,
    write_manifest,
)
from pipeline.prices import PriceTable
from pipeline.progress import ProgressLine, usd
from pipeline.records import Ended, RunSummary
from pipeline.requests import RequestBuilder
from pipeline.runner import DEFAULT_GRACE_S, Runner, RunPlan, plan_run
from pipeline.spec import JobSpec, load_job

EXIT_OK = 0
EXIT_BUG = 1
EXIT_USER_ERROR = 2
EXIT_TOO_MANY_ERRORS = 3
EXIT_ABORTED = 4
EXIT_WRITE_FAILED = 5
EXIT_BUDGET = 6
EXIT_LOCKED = 75
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


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


def build_parser() -> argparse.ArgumentParser:
    """The ``pipeline`` command line."""
    parser = argparse.ArgumentParser(
        prog="pipeline", description="Batch chat completions: Parquet/JSONL in, Parquet out."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def job_command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("job", type=Path, help="the job file (TOML)")
        sub.add_argument("--input", type=Path, help="read this input instead of [input] path")
        sub.add_argument("--limit", type=_positive_int, help="only the first N rows")
        return sub

    run = job_command("run", "run a job (or resume it: run the same command again)")
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
    validate = job_command("validate", "check a job and its input without sending anything")
    validate.add_argument("--prices", type=Path, metavar="FILE", help="model prices (JSON or TOML)")
    estimate = job_command(
        "estimate", "rows, tokens, cost and duration of a job; sends nothing unless --sample"
    )
    estimate.add_argument(
        "--sample",
        type=_positive_int,
        metavar="N",
        help="send the first N rows for real and extrapolate",
    )
    estimate.add_argument("--prices", type=Path, metavar="FILE", help="model prices (JSON or TOML)")
    report = commands.add_parser(
        "report", help="summarize an output file; --html writes a page with charts"
    )
    report.add_argument("output", type=Path, help="an output Parquet file")
    report.add_argument(
        "--html", type=Path, metavar="FILE", help="also write a self-contained HTML report here"
    )
    commands.add_parser(
        "fake-server", help="run the built-in OpenAI-compatible fake server", add_help=False
    )
    return parser


def api_key_for(job: JobSpec) -> str | None:
    """The API key from the variable the job names; a missing variable is a user error."""
    name = job.endpoint.api_key_env
    if name is None:
        return None
    value = os.environ.get(name)
    if not value:
        raise JobError(f"environment variable {name} (named by [endpoint] api_key_env) is not set")
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise JobError(
            f"environment variable {name} holds a control character (a line ending from an env file?)"
        )
    return value


def job_prices(job: JobSpec, price_file: Path | None) -> PriceTable:
    """The run's price table; a budget for a model without a price is a user error."""
    prices = PriceTable.for_job(job.prices, price_file)
    for model in [job.request.model] if job.request.model else job.request.models or []:
        budget_price(job.limits.max_cost_usd, model, prices)
    return prices


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


def _exit_code(job: JobSpec, summary: RunSummary) -> tuple[int, str]:
    """The exit code of a run that got to its end, and the reason in words."""
    codes = {
        Ended.INTERRUPTED: EXIT_INTERRUPTED,
        Ended.TERMINATED: EXIT_TERMINATED,
        Ended.ABORTED: EXIT_ABORTED,
        Ended.BUDGET: EXIT_BUDGET,
    }
    if summary.ended in codes:
        return codes[summary.ended], summary.reason or summary.ended.value
    limit = job.limits.max_error_rate
    if limit is not None and summary.rows_total and summary.rows_error / summary.rows_total > limit:
        rate = summary.rows_error / summary.rows_total
        return (
            EXIT_TOO_MANY_ERRORS,
            f"{rate:.1%} of rows failed, above limits.max_error_rate {limit:.1%}",
        )
    return EXIT_OK, "complete"


def _manifest(
    args: argparse.Namespace,
    job: JobSpec,
    plan: RunPlan,
    summary: RunSummary,
    code: int,
    reason: str,
    job_sha256: str,
    fingerprint: dict[str, Any],
    started: datetime,
) -> Manifest:
    """The record of a run that got to its end (complete or not)."""
    return Manifest(
        run_id=plan.run_id,
        job_name=job.name,
        job_file=str(args.job),
        job_sha256=job_sha256,
        input=fingerprint,
        input_rows=plan.rows,
        limit=args.limit,
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
        finished_at=datetime.now(UTC).isoformat(),
        pipeline_version=__version__,
        cost_usd=round(summary.cost_usd, 6),
        earlier_cost_usd=round(summary.earlier_cost_usd, 6),
        unpriced_rows=summary.unpriced_rows,
        possibly_billed_attempts=summary.possibly_billed_attempts,
        max_cost_usd=job.limits.max_cost_usd,
    )


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
            partial(estimate.run_sample, plan, args.sample, api_key=api_key, prices=prices),
            backend="asyncio",
        )
    price = prices.lookup(sample.model if sample else None, job.request.model)
    print(f"{args.job}: {plan.input_path}, model {job.request.model}")
    print(estimate.render(estimate.extrapolate(job, count, price, sample), job))
    return EXIT_OK


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
    job = load_job(args.job)
    api_key = api_key_for(job)
    prices = job_prices(job, args.prices)
    plan = plan_run(
        job, input_path=args.input, output_path=args.output, limit=args.limit, day=args.date
    )
    job_sha256 = file_sha256(args.job)
    fingerprint = input_fingerprint(plan.input_path)
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
        configure_logging(secrets=[api_key] if api_key else [], stream=stream)
        try:
            lock = stack.enter_context(OutputLock(plan.output_path))
        except OSError as exc:
            raise OutputError(f"{plan.output_path}: cannot write output: {exc.strerror}") from None
        if lock.previous is not None:
            structlog.get_logger("pipeline").warning("lock.taken_over", previous=lock.previous)
        earlier = read_manifest(plan.output_path)
        if (
            not (args.force or args.fresh or args.retry_errors)
            and earlier is not None
            and plan.output_path.exists()
            and earlier.same_work(job_sha256, fingerprint, args.limit)
        ):
            # a finished run with too many errors stays a failure when run again
            code = EXIT_TOO_MANY_ERRORS if earlier.exit_code == EXIT_TOO_MANY_ERRORS else EXIT_OK
            structlog.get_logger("pipeline").info(
                "job.already_complete",
                run_id=earlier.run_id,
                output=str(plan.output_path),
                exit_code=code,
            )
            print(
                f"already complete (run {earlier.run_id}): {plan.output_path}; --force to run again"
            )
            if code != EXIT_OK:
                print(f"finished: {earlier.exit_reason}", file=sys.stderr)
            return code
        runner = Runner(
            plan,
            api_key=api_key,
            progress=progress,
            fresh=args.fresh,
            retry_errors=args.retry_errors,
            grace_s=args.grace_s,
            handle_signals=True,
            prices=prices,
        )
        started = datetime.now(UTC)
        try:
            summary = anyio.run(runner.run, backend="asyncio")
        except OutputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            print(
                "every row written before this is kept; run the same command again to resume",
                file=sys.stderr,
            )
            return EXIT_WRITE_FAILED
        code, reason = _exit_code(job, summary)
        write_manifest(
            plan.output_path,
            _manifest(args, job, plan, summary, code, reason, job_sha256, fingerprint, started),
        )
    _print_summary(summary)
    if code != EXIT_OK:
        print(f"{'stopped' if not summary.complete else 'finished'}: {reason}", file=sys.stderr)
    if not summary.complete:
        again = "raise limits.max_cost_usd and run" if summary.ended is Ended.BUDGET else "run"
        print(
            f"{summary.rows_total} of {runner.stats.total} rows done; {again} the same command again to resume",
            file=sys.stderr,
        )
    return code


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

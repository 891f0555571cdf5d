"""argv -> load job -> configure logging -> run; maps errors to exit codes.

Exit codes (stable, documented in the README):
    0   success
    1   an internal error (a bug): the traceback is printed
    2   a user error (bad job, bad input, unwritable output) before anything was sent
    130 interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

import anyio

from pipeline import fake
from pipeline.errors import JobError, UserError
from pipeline.log import configure_logging
from pipeline.progress import ProgressLine
from pipeline.records import RunSummary
from pipeline.runner import Runner, plan_run
from pipeline.spec import JobSpec, load_job

EXIT_OK = 0
EXIT_BUG = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``pipeline`` command line."""
    parser = argparse.ArgumentParser(prog="pipeline", description="Batch chat completions: Parquet/JSONL in, Parquet out.")
    commands = parser.add_subparsers(dest="command", required=True)

    def job_command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("job", type=Path, help="the job file (TOML)")
        sub.add_argument("--input", type=Path, help="read this input instead of [input] path")
        sub.add_argument("--limit", type=_positive_int, help="only the first N rows")
        return sub

    run = job_command("run", "run a job")
    run.add_argument("--output", type=Path, help="write here instead of [output] path")
    run.add_argument("--log-file", type=Path, help="write JSON log events to this file")
    job_command("validate", "check a job and its input without sending anything")
    commands.add_parser("fake-server", help="run the built-in OpenAI-compatible fake server", add_help=False)
    return parser


def api_key_for(job: JobSpec) -> str | None:
    """The API key from the variable the job names; a missing variable is a user error."""
    name = job.endpoint.api_key_env
    if name is None:
        return None
    value = os.environ.get(name)
    if not value:
        raise JobError(f"environment variable {name} (named by [endpoint] api_key_env) is not set")
    return value


def _print_summary(summary: RunSummary) -> None:
    errors = ", ".join(f"{kind} {count}" for kind, count in sorted(summary.errors_by_type.items()))
    print(
        f"{summary.rows_total} rows: {summary.rows_ok} ok, {summary.rows_error} error"
        + (f" ({errors})" if errors else "")
        + f"; {summary.prompt_tokens + summary.completion_tokens:,} tokens;"
        + f" {summary.requests_sent} requests in {summary.elapsed_s:.1f}s"
    )
    print(f"output: {summary.output_path}")


def _validate(args: argparse.Namespace) -> int:
    job = load_job(args.job)
    api_key_for(job)
    plan = plan_run(job, input_path=args.input, limit=args.limit)
    request = job.request
    if request.models:
        models = f"models {', '.join(request.models)} ({plan.rows * len(request.models)} output rows)"
    else:
        models = f"model {request.model or f'from column {request.model_column!r}'}"
    print(f"{args.job}: ok: {plan.rows} rows from {plan.input_path}, {models}, output {plan.output_path}")
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    job = load_job(args.job)
    api_key = api_key_for(job)
    plan = plan_run(job, input_path=args.input, output_path=args.output, limit=args.limit)
    with contextlib.ExitStack() as stack:
        stream = sys.stderr
        if args.log_file is not None:
            try:
                args.log_file.parent.mkdir(parents=True, exist_ok=True)
                stream = stack.enter_context(args.log_file.open("a", encoding="utf-8"))
            except OSError as exc:
                raise JobError(f"--log-file {args.log_file}: cannot write: {exc.strerror}") from None
        configure_logging(secrets=[api_key] if api_key else [], stream=stream)
        runner = Runner(plan, api_key=api_key, progress=ProgressLine(sys.stderr))
        summary = anyio.run(runner.run, backend="asyncio")
    _print_summary(summary)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``pipeline`` and ``python -m pipeline``."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["fake-server"]:
        return fake.main(args_list[1:])
    args = build_parser().parse_args(args_list)
    try:
        if args.command == "validate":
            return _validate(args)
        return _run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED

"""The only composer (a package since it outgrew one module): reader -> N workers -> writer.

    source ──rows──▶ workers (2 x concurrency, at most `concurrency` in flight)
                         │ for each model: build ▸ reuse? ▸ retry( slot ▸ budget ▸ limiter ▸ client ) [▸ parse, re-ask]
                         ▼
                      outcomes ──▶ writer (part files every second / 500 rows) ──▶ finalize

Rows that fail are data: every input row produces exactly one outcome per model
(one model unless the job lists ``models``); outcome ``seq`` is
``row.seq * len(models) + model index``, so the output is in input order, then in
the order the models are listed. In JSON mode each answer is parsed
(``pipeline.structured``); an unusable one is asked again, with the next re-ask seed,
up to ``json_retries`` times, each re-ask a new request through the same retry and
limiter path.

    lifecycle.py  run_job: the job loaded, the lock, skip-if-complete, the run, the exit
                  code, the manifest and the closing job.finished event (the URL of the
                  fake server, for base_url = "fake", is handed in by the caller)
    plan.py       RunPlan, plan_run: the input checked, the output path filled in
    rows.py       RowProcessor: one row -> its outcomes (build, reuse, send, parse, price)
    run.py        Runner: the task group, stopping, signals, the writer, the summary
"""

from pipeline.runner.lifecycle import (
    EXIT_ABORTED,
    EXIT_BUDGET,
    EXIT_BUG,
    EXIT_INTERRUPTED,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_TOO_MANY_ERRORS,
    EXIT_USER_ERROR,
    EXIT_WRITE_FAILED,
    EndpointOpener,
    PreparedRun,
    RunOptions,
    RunResult,
    api_key_for,
    execute_run,
    job_prices,
    prepare_run,
    run_job,
)
from pipeline.runner.plan import RunPlan, new_run_id, plan_run, resolve_output
from pipeline.runner.run import DEFAULT_GRACE_S, Runner

__all__ = [
    "DEFAULT_GRACE_S",
    "EXIT_ABORTED",
    "EXIT_BUDGET",
    "EXIT_BUG",
    "EXIT_INTERRUPTED",
    "EXIT_LOCKED",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "EXIT_TOO_MANY_ERRORS",
    "EXIT_USER_ERROR",
    "EXIT_WRITE_FAILED",
    "EndpointOpener",
    "PreparedRun",
    "RunOptions",
    "RunPlan",
    "RunResult",
    "Runner",
    "api_key_for",
    "execute_run",
    "job_prices",
    "new_run_id",
    "plan_run",
    "prepare_run",
    "resolve_output",
    "run_job",
]

"""The only composer: a run's lifecycle, the task group, a row's journey, the senders.

    source ──rows──▶ workers (2 x concurrency)
                         │ per model: build ▸ reuse? ▸ cached? ▸ send ▸ [parse ▸ re-ask] ▸ outcome
                         ▼
                      outcomes ──▶ writer (part files every second / 500 rows) ──▶ finalize

Rows that fail are data: every input row produces exactly one outcome per model
(one model unless the job lists ``models``); outcome ``seq`` is
``row.seq * len(models) + model index``, so the output is in input order, then in
the order the models are listed.

    lifecycle.py  run_job: the job loaded, the lock, skip-if-complete, the run, the exit
                  code, the manifest and the closing job.finished event (the URL of the
                  fake server, for base_url = "fake", is handed in by the caller)
    plan.py       RunPlan, plan_run: the input checked, the output path filled in
    run.py        Runner: the task group (reader -> workers -> writer), signals, the summary
    control.py    RunControl (the stop flag, how the run ended), RefusalWatch, Stopped
    journey.py    RowJourney: the per-row script, top to bottom
    prepare.py    RequestPreparer: a row's request, off the loop when it reads files
    reuse.py      Reuse: results an earlier run of the same output already has
    send.py       Sender protocol; LiveSender: slot, budget, limiter, client, retries, settle
    outcome.py    the only place a reply, a ledger or an error becomes an output row
    batch/        batch mode: the same rows (RequestPreparer, Reuse, outcome.py, PartWriter)
                  through a provider's Batch API: journal, lines, row state, the
                  submit/poll/collect loop, ``pipeline batch status|cancel``
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.lazy import lazy_exports

if TYPE_CHECKING:
    from pipeline.exits import (
        EXIT_ABORTED,
        EXIT_BUDGET,
        EXIT_BUG,
        EXIT_INPUT_FAILED,
        EXIT_INTERRUPTED,
        EXIT_LOCKED,
        EXIT_OK,
        EXIT_PENDING,
        EXIT_TERMINATED,
        EXIT_TOO_MANY_ERRORS,
        EXIT_USER_ERROR,
        EXIT_WRITE_FAILED,
    )
    from pipeline.runner.lifecycle import (
        EndpointOpener,
        PreparedRun,
        RunOptions,
        RunResult,
        execute_run,
        prepare_run,
        run_job,
    )
    from pipeline.runner.plan import (
        RunPlan,
        api_key_for,
        job_prices,
        new_run_id,
        plan_run,
        resolve_output,
    )
    from pipeline.runner.run import DEFAULT_GRACE_S, Runner

# imported on first use: ``pipeline.runner.plan`` (validate) must not load the HTTP stack
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "pipeline.exits": (
            "EXIT_ABORTED",
            "EXIT_BUDGET",
            "EXIT_BUG",
            "EXIT_INPUT_FAILED",
            "EXIT_INTERRUPTED",
            "EXIT_LOCKED",
            "EXIT_OK",
            "EXIT_PENDING",
            "EXIT_TERMINATED",
            "EXIT_TOO_MANY_ERRORS",
            "EXIT_USER_ERROR",
            "EXIT_WRITE_FAILED",
        ),
        "pipeline.runner.lifecycle": (
            "EndpointOpener",
            "PreparedRun",
            "RunOptions",
            "RunResult",
            "execute_run",
            "prepare_run",
            "run_job",
        ),
        "pipeline.runner.plan": (
            "RunPlan",
            "api_key_for",
            "job_prices",
            "new_run_id",
            "plan_run",
            "resolve_output",
        ),
        "pipeline.runner.run": ("DEFAULT_GRACE_S", "Runner"),
    },
)

__all__ = [
    "DEFAULT_GRACE_S",
    "EXIT_ABORTED",
    "EXIT_BUDGET",
    "EXIT_BUG",
    "EXIT_INPUT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_LOCKED",
    "EXIT_OK",
    "EXIT_PENDING",
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

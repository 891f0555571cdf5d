"""The only composer: a run's lifecycle, the task group, a row's journey, the senders.

    source ──rows──▶ workers (2 x concurrency)
                         │ per model: build ▸ reuse? ▸ send ▸ [parse ▸ re-ask] ▸ outcome
                         ▼
                      outcomes ──▶ writer (part files every second / 500 rows) ──▶ finalize

Rows that fail are data: every input row produces exactly one outcome per model
(one model unless the job lists ``models``); outcome ``seq`` is
``row.seq * len(models) + model index``, so the output is in input order, then in
the order the models are listed.

    plan.py       RunPlan, plan_run: the input checked, the output path filled in
    run.py        Runner: the task group (reader -> workers -> writer), signals, the summary
    control.py    RunControl (the stop flag, how the run ended), RefusalWatch, Stopped
    journey.py    RowJourney: the per-row script, top to bottom
    prepare.py    RequestPreparer: a row's request, off the loop when it reads files
    reuse.py      Reuse: results an earlier run of the same output already has
    send.py       Sender protocol; LiveSender: slot, budget, limiter, client, retries, settle
    outcome.py    the only place a reply, a ledger or an error becomes an output row
    endpoint.py   the job's endpoint, or the built-in fake server started for it
"""

from pipeline.runner.plan import RunPlan, new_run_id, plan_run, resolve_output
from pipeline.runner.run import DEFAULT_GRACE_S, Runner

__all__ = ["DEFAULT_GRACE_S", "RunPlan", "Runner", "new_run_id", "plan_run", "resolve_output"]

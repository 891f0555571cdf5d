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

    plan.py       RunPlan, plan_run: the input checked, the output path filled in
    endpoint.py   the job's endpoint, or the built-in fake server started for it
    rows.py       RowProcessor: one row -> its outcomes (build, reuse, send, parse, price)
    run.py        Runner: the task group, stopping, signals, the writer, the summary
"""

from pipeline.runner.plan import RunPlan, new_run_id, plan_run, resolve_output
from pipeline.runner.run import DEFAULT_GRACE_S, Runner

__all__ = ["DEFAULT_GRACE_S", "RunPlan", "Runner", "new_run_id", "plan_run", "resolve_output"]

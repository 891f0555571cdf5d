"""The exit code of a run that got to its end, and its reason in words (apart from the
lifecycle, so ``pipeline merge`` can sum shards without loading the HTTP stack)."""

from __future__ import annotations

from pipeline.exits import (
    EXIT_ABORTED,
    EXIT_BUDGET,
    EXIT_INPUT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PENDING,
    EXIT_TERMINATED,
    EXIT_TOO_MANY_ERRORS,
    EXIT_USER_ERROR,
)
from pipeline.records import Ended, RunSummary
from pipeline.spec import JobSpec

_ENDED_CODES = {
    Ended.INTERRUPTED: EXIT_INTERRUPTED,
    Ended.TERMINATED: EXIT_TERMINATED,
    Ended.ABORTED: EXIT_ABORTED,
    Ended.BUDGET: EXIT_BUDGET,
    Ended.INPUT_FAILED: EXIT_INPUT_FAILED,
    Ended.PENDING: EXIT_PENDING,
}


def exit_code(job: JobSpec, summary: RunSummary) -> tuple[int, str]:
    """The exit code of a run that got to its end, and the reason in words."""
    if summary.ended is Ended.INPUT_FAILED and summary.requests_sent == 0:
        return EXIT_USER_ERROR, summary.reason or summary.ended.value
    if summary.ended in _ENDED_CODES:
        return _ENDED_CODES[summary.ended], summary.reason or summary.ended.value
    return error_rate_code(job, summary.rows_error, summary.rows_total)


def error_rate_code(job: JobSpec, errors: int, rows: int) -> tuple[int, str]:
    """Exit 3 when more than ``limits.max_error_rate`` of ``rows`` failed, else 0."""
    limit = job.limits.max_error_rate
    if limit is not None and rows and errors / rows > limit:
        return (
            EXIT_TOO_MANY_ERRORS,
            f"{errors / rows:.1%} of rows failed, above limits.max_error_rate {limit:.1%}",
        )
    return EXIT_OK, "complete"

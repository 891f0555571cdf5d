"""Stopping a run: the one stop flag every stage checks, and the watch for refusals."""

from __future__ import annotations

import anyio
import structlog

from pipeline.errors import AttemptError, AuthFailed, FatalError, NotFound, QuotaExhausted
from pipeline.records import Ended

log = structlog.get_logger("pipeline")

FATAL_STREAK = 5
"""Consecutive 401/403/404 answers after which the run stops sending."""
FIRST_ROWS = 20
"""Rows that, when all of the run's first ones fail alike with a fatal error (a 400 for a
parameter the server rejects), stop the run before it pays for the whole input."""


class Stopped(Exception):
    """Raised inside a row when the run is stopping: the row is left for the next run."""


class RunControl:
    """Whether the run is stopping, how it ended and why (one event loop: no locks)."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.stopping = anyio.Event()
        self.ended = Ended.COMPLETE
        self.reason: str | None = None

    def stop(self, ended: Ended, reason: str) -> None:
        """Stop taking rows; in-flight requests get ``grace_s`` to finish. The first stop wins."""
        if self.stopping.is_set():
            return
        self.ended, self.reason = ended, reason
        self.stopping.set()
        log.warning("job.stopping", reason=reason, grace_s=self.grace_s)

    @property
    def is_stopping(self) -> bool:
        """Whether a stop was asked for."""
        return self.stopping.is_set()

    def check(self) -> None:
        """No new attempt once the run is stopping: raise ``Stopped``."""
        if self.stopping.is_set():
            raise Stopped


class RefusalWatch:
    """Stops the run when the endpoint refuses everything (bad key, unknown model or path).

    A 404 naming the model, or a 429 ``insufficient_quota`` (no credit left), stops at
    once; otherwise ``FATAL_STREAK`` rows in a row
    failing with 401/403/404 do. Any answer, or any other failure, resets the streak.
    And when the run's first ``FIRST_ROWS`` rows all fail with the same fatal error
    (same class, same HTTP status) before any answer arrived, the job itself is wrong
    (a parameter the server rejects): the run stops too.
    """

    def __init__(self, control: RunControl, first_rows: int = FIRST_ROWS) -> None:
        self._control = control
        self._streak = 0
        self._first_rows = first_rows
        self._alike = 0
        self._first: tuple[str, int | None] | None = None
        self._watching_first = True

    def answered(self) -> None:
        """An attempt got an answer."""
        self._streak = 0
        self._watching_first = False

    def failed(self, exc: AttemptError) -> None:
        """A request failed for good (after its retries)."""
        if isinstance(exc, QuotaExhausted):
            self._control.stop(
                Ended.ABORTED,
                f"the account has no credit left (insufficient_quota): {exc.message}",
            )
            return
        self._watch_first(exc)
        if not isinstance(exc, AuthFailed | NotFound):
            self._streak = 0
            return
        self._streak += 1
        model_missing = isinstance(exc, NotFound) and "model" in exc.message.lower()
        if model_missing or self._streak >= FATAL_STREAK:
            self._control.stop(Ended.ABORTED, f"the endpoint refuses every request: {exc.message}")

    def _watch_first(self, exc: AttemptError) -> None:
        """Stop when the first rows all failed with one fatal error and nothing succeeded."""
        if not self._watching_first:
            return
        kind = (exc.error_type, exc.http_status)
        if not isinstance(exc, FatalError) or (self._first is not None and kind != self._first):
            self._watching_first = False
            return
        self._first = kind
        self._alike += 1
        if self._alike >= self._first_rows:
            status = f"HTTP {exc.http_status} " if exc.http_status is not None else ""
            self._control.stop(
                Ended.ABORTED,
                f"the first {self._alike} rows all failed with {status}{exc.error_type}: "
                f"{exc.message}",
            )

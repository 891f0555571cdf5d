"""Stopping a run: the one stop flag every stage checks, and the watch for refusals."""

from __future__ import annotations

import anyio
import structlog

from pipeline.errors import AttemptError, AuthFailed, NotFound
from pipeline.records import Ended

log = structlog.get_logger("pipeline")

FATAL_STREAK = 5
"""Consecutive 401/403/404 answers after which the run stops sending."""


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

    A 404 naming the model stops at once; otherwise ``FATAL_STREAK`` rows in a row
    failing with 401/403/404 do. Any answer, or any other failure, resets the streak.
    """

    def __init__(self, control: RunControl) -> None:
        self._control = control
        self._streak = 0

    def answered(self) -> None:
        """An attempt got an answer."""
        self._streak = 0

    def failed(self, exc: AttemptError) -> None:
        """A request failed for good (after its retries)."""
        if not isinstance(exc, AuthFailed | NotFound):
            self._streak = 0
            return
        self._streak += 1
        model_missing = isinstance(exc, NotFound) and "model" in exc.message.lower()
        if model_missing or self._streak >= FATAL_STREAK:
            self._control.stop(Ended.ABORTED, f"the endpoint refuses every request: {exc.message}")

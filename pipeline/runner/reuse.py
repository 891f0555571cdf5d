"""Reuse: a result an earlier run of the same output already has is taken, not sent."""

from __future__ import annotations

from pipeline.records import RunStats
from pipeline.results import DoneIndex, completion_key


class Reuse:
    """Earlier results looked up by (row id, request hash); taken ones are carried into
    this run's output at their new position."""

    def __init__(self, index: DoneIndex, *, retry_errors: bool, stats: RunStats) -> None:
        self.index = index
        self._retry_errors = retry_errors
        self._stats = stats

    def take(self, row_id: str, seq: int, request_hash: str) -> bool:
        """Whether an earlier run already finished this row with this exact request."""
        found = self.index.find(
            completion_key(row_id, request_hash), retry_errors=self._retry_errors
        )
        if found is None:
            return False
        self.index.carry(found, seq)
        self._stats.count_reused(ok=self.index.ok(found), error_type=self.index.error_type(found))
        return True

"""``pipeline batch status|cancel JOB``: the journaled batches of a job's output, as the
provider sees them now; cancel the running ones (what they finished is collected by the
next run)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import anyio

from pipeline.client.batches import BatchClient
from pipeline.errors import AttemptError
from pipeline.requests import split_headers
from pipeline.runner.batch.drive import ACTIVE
from pipeline.runner.batch.journal import BatchJournal, Shard
from pipeline.runner.plan import RunPlan


@dataclass(frozen=True, slots=True)
class BatchLine:
    """One journaled batch as ``pipeline batch status`` prints it."""

    shard: int
    batch_id: str | None
    status: str
    lines: int
    completed: int | None = None
    failed: int | None = None
    created: str | None = None
    expires: str | None = None

    def render(self) -> str:
        """One line: id, status, counts, created, expires."""
        counts = f"{self.lines} lines"
        if self.completed is not None:
            counts += f", {self.completed} completed, {self.failed or 0} failed"
        when = f"  created {self.created}  expires {self.expires}" if self.created else ""
        return f"{self.batch_id or f'(shard {self.shard})'}  {self.status}  {counts}{when}"


async def batch_status(
    plan: RunPlan, *, api_key: str | None, base_url: str | None, cancel: bool = False
) -> list[BatchLine]:
    """Every journaled batch of the plan's output, now (after cancelling the running ones)."""
    shards = await anyio.to_thread.run_sync(BatchJournal(plan.output_path).load)
    job = plan.job
    async with BatchClient(
        job.endpoint,
        api_key=api_key,
        headers=split_headers(job.endpoint.headers)[0],
        base_url=base_url,
    ) as client:
        return [await _line(client, shard, cancel) for shard in shards]


async def _line(client: BatchClient, shard: Shard, cancel: bool) -> BatchLine:
    if shard.batch_id is None:
        status = "never created" if shard.abandoned else "not known to be created"
        return BatchLine(shard.shard, None, status, len(shard.custom_ids))
    try:
        batch = await client.get(shard.batch_id)
        if cancel and batch.get("status") in ACTIVE - {"cancelling"}:
            batch = await client.cancel(shard.batch_id)
    except AttemptError as exc:
        return BatchLine(
            shard.shard, shard.batch_id, f"unknown ({exc.message})", len(shard.custom_ids)
        )
    counts = batch.get("request_counts") or {}
    return BatchLine(
        shard.shard,
        shard.batch_id,
        str(batch.get("status")),
        len(shard.custom_ids),
        _int(counts.get("completed")),
        _int(counts.get("failed")),
        _time(batch.get("created_at")),
        _time(batch.get("expires_at")),
    )


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) else None


def _time(value: Any) -> str | None:
    if not isinstance(value, int | float):
        return None
    return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")

"""A batch run, top to bottom::

    build every row's request ▸ re-attach journaled batches ▸ loop:
        refresh statuses ▸ collect ended batches ▸ submit what no batch covers ▸ wait

Submitting one file: journal the intent (lines, digest) ▸ upload ▸ journal the file ▸
create the batch (metadata: job, run id, shard, digest) ▸ journal the batch. A crash at
any point leaves a journal from which the next run finds the batch again (``GET
/batches``, newest first, back to the intent's time) or deletes the unused file; lines are
submitted again only when no batch holds them. With a response cache, a row the cache
answers is written as a cache hit instead of going into a file (``BatchRows.take_cached``);
answers a collection stores are flushed to the cache file once it is written.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import structlog
from tenacity import AsyncRetrying

from pipeline.client.batches import BatchClient
from pipeline.errors import AttemptError, FatalError
from pipeline.records import Ended, Outcome
from pipeline.retry import make_retrying
from pipeline.runner.batch.journal import BatchJournal, Shard
from pipeline.runner.batch.lines import (
    LineResult,
    Unfinished,
    encode_line,
    read_results,
    seq_of,
    split_lines,
)
from pipeline.runner.batch.rows import BatchRows
from pipeline.runner.control import RunControl
from pipeline.spec import BatchSpec, RetrySpec

log = structlog.get_logger("pipeline")

ACTIVE = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
ENDED = frozenset({"completed", "expired", "cancelled", "failed"})
_LIST_SLACK_S = 300.0
CACHE_FLUSH_ANSWERS = 10_000
"""While collecting a batch, the response cache's buffered answers are written once this
many are waiting (it buffers at most ``pipeline.cache.MAX_PENDING``), and at the end."""
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BatchSettings:
    """What a batch run needs of the job, besides its rows."""

    job_name: str
    run_id: str
    output: str
    """Which output the batches are for (a digest of its path): two outputs of one job with
    the same input (another ``{date}``) submit identical files, told apart by this."""
    batch: BatchSpec
    retry: RetrySpec
    wait: bool


class BatchRun:
    """Drives the pending rows through provider batches until each is done (or the run stops)."""

    def __init__(
        self,
        settings: BatchSettings,
        *,
        client: BatchClient,
        rows: BatchRows,
        journal: BatchJournal,
        control: RunControl,
        write: Callable[[list[Outcome]], Awaitable[None]],
        on_poll: Callable[[str], None],
    ) -> None:
        self._settings = settings
        self._spec = settings.batch
        self._client = client
        self._rows = rows
        self._journal = journal
        self._control = control
        self._write = write
        self._on_poll = on_poll
        self._retrying: AsyncRetrying = make_retrying(settings.retry)
        self._shards: list[Shard] = []
        self._max_lines = self._spec.max_requests_per_file
        self._failure: str | None = None
        self._token_wait = False
        self._seen: dict[int, dict[str, Any]] = {}
        """The batch objects read by the last refresh, by shard number."""

    async def run(self) -> None:
        """Until every row is done, the run stops, or (``--no-wait``) batches are still running.

        A Batch API call that fails for good (after its retries) stops the run (exit 4);
        the journal has what was done, so the next run goes on from there.
        """
        try:
            await self._run()
        except AttemptError as exc:
            self._control.stop(Ended.ABORTED, f"the Batch API failed: {exc.message}")

    async def _run(self) -> None:
        self._shards = await anyio.to_thread.run_sync(self._journal.load)
        await self._reattach([s for s in self._shards if not s.settled and s.batch_id is None])
        interval = self._spec.poll_interval_s
        while not self._control.is_stopping:
            changed = await self._refresh()
            changed = await self._collect() or changed
            if self._may_submit():
                changed = await self._submit() or changed
            active = [s for s in self._shards if s.status in ACTIVE]
            self._report(active)
            if not active and (not self._rows.pending or self._failure is not None):
                if self._failure is not None:
                    self._control.stop(Ended.ABORTED, self._failure)
                return
            if active and not self._settings.wait:
                self._control.stop(
                    Ended.PENDING,
                    f"{len(active)} batches still running: run the same command again later",
                )
                return
            interval = self._spec.poll_interval_s if changed else interval
            with anyio.move_on_after(interval):
                await self._control.stopping.wait()
            interval = min(interval * 1.5, self._spec.max_poll_interval_s)

    def _may_submit(self) -> bool:
        if self._failure is not None or self._control.is_stopping:
            return False
        if self._token_wait and any(s.status in ACTIVE for s in self._shards):
            return False
        self._token_wait = False
        return True

    async def _call(self, call: Callable[..., Awaitable[T]], *args: Any) -> T:
        """One Batch API call, retried like a live request."""
        result: T = await self._retrying.copy()(call, *args)
        return result

    async def _reattach(self, orphans: list[Shard]) -> None:
        """Intents without a journaled batch: find their batch, else delete their file."""
        if not orphans:
            return
        found = await self._find_batches(min(s.at for s in orphans) - _LIST_SLACK_S)
        used_files = {b.get("input_file_id") for b in found.values()}
        for shard in orphans:
            batch = found.get((str(shard.shard), shard.digest))
            if batch is not None:
                shard.batch_id, shard.status = str(batch["id"]), str(batch.get("status"))
                await self._journaled("created", shard, batch_id=shard.batch_id)
                log.info("batch.reattached", shard=shard.shard, batch_id=shard.batch_id)
                continue
            await self._delete_unused(shard, used_files)
            shard.abandoned = True
            await self._journaled("abandoned", shard)

    async def _find_batches(self, since: float) -> dict[tuple[str, str], dict[str, Any]]:
        """This job's batches created since ``since``, by (shard, digest) from their metadata."""
        found: dict[tuple[str, str], dict[str, Any]] = {}
        after: str | None = None
        while True:
            page = await self._call(self._client.page, after, 100)
            data = [b for b in page.get("data") or [] if isinstance(b, dict)]
            for batch in data:
                meta = batch.get("metadata") or {}
                ours = (meta.get("job"), meta.get("output"))
                if ours == (self._settings.job_name, self._settings.output):
                    found.setdefault((str(meta.get("shard")), str(meta.get("digest"))), batch)
            oldest = min((b.get("created_at") or 0 for b in data), default=0)
            if not page.get("has_more") or not data or oldest < since:
                return found
            after = str(data[-1]["id"])

    async def _delete_unused(self, shard: Shard, used: set[Any]) -> None:
        """Delete the shard's uploaded file (by id, or found by name) unless a batch uses it."""
        ids = {shard.file_id} if shard.file_id else set()
        files = await self._call(self._client.files)
        ids |= {str(f["id"]) for f in files if f.get("filename") == shard.file_name}
        for file_id in ids - used:
            try:
                await self._call(self._client.delete_file, file_id)
            except AttemptError as exc:
                log.warning("batch.file_not_deleted", file_id=file_id, error=exc.message)
            else:
                log.info("batch.file_deleted", file_id=file_id, shard=shard.shard)

    async def _journaled(self, event: str, shard: Shard, **values: str) -> None:
        await anyio.to_thread.run_sync(lambda: self._journal.event(event, shard.shard, **values))

    async def _refresh(self) -> bool:
        """Read the status of every batch not yet collected; whether any changed."""
        changed = False
        for shard in self._shards:
            if shard.settled or shard.batch_id is None or shard.status in ENDED:
                continue
            batch = await self._call(self._client.get, shard.batch_id)
            status = str(batch.get("status"))
            changed = changed or status != shard.status
            shard.status = status
            self._seen[shard.shard] = batch
        return changed

    async def _collect(self) -> bool:
        """Collect every ended batch, in submission order; whether any was."""
        collected = False
        for shard in self._shards:
            if shard.settled or shard.status not in ENDED:
                continue
            assert shard.batch_id is not None
            batch = self._seen.pop(shard.shard, None)
            if batch is None:
                batch = await self._call(self._client.get, shard.batch_id)
            if shard.status == "failed":
                self._failed(shard, batch)
            else:
                await self._collect_lines(shard, batch)
            if shard.status == "cancelled":  # by ``pipeline batch cancel``: submit no more
                self._failure = self._failure or (
                    f"batch {shard.batch_id} was cancelled; run again to resubmit what it did not finish"
                )
            # journaled once nothing of it is needed again: a failed batch answered nothing,
            # a cancelled one was stopped on purpose (its lines go into a new batch next run);
            # others once every row they answered is written (a re-run replays the rest)
            shard.collected = True
            if shard.status in ("failed", "cancelled") or not any(
                seq_of(c) in self._rows.pending for c in shard.custom_ids
            ):
                await self._journaled("collected", shard)
                await self._delete_files(shard, batch)
            collected = True
        return collected

    async def _delete_files(self, shard: Shard, batch: dict[str, Any]) -> None:
        """A collected batch's input, output and error files are deleted (best effort):
        providers cap the files an account holds (Azure: 500)."""
        ids = [shard.file_id, batch.get("output_file_id"), batch.get("error_file_id")]
        for file_id in ids:
            if not file_id:
                continue
            try:
                await self._client.delete_file(str(file_id))
            except AttemptError as exc:
                log.warning("batch.file_not_deleted", file_id=file_id, error=exc.message)

    def _failed(self, shard: Shard, batch: dict[str, Any]) -> None:
        """A failed batch: its lines are not done; the enqueued-token limit waits and splits."""
        errors = (batch.get("errors") or {}).get("data") or [{}]
        first = errors[0] if isinstance(errors[0], dict) else {}
        code, message = str(first.get("code") or "unknown"), str(first.get("message") or "")
        log.warning("batch.failed", batch_id=shard.batch_id, code=code, error=message)
        if code == "token_limit_exceeded" and len(shard.custom_ids) > 1:
            self._token_wait = True
            self._max_lines = max(1, min(self._max_lines, len(shard.custom_ids) // 2))
            return
        self._failure = self._failure or f"batch {shard.batch_id} failed: {code}: {message}"

    async def _collect_lines(self, shard: Shard, batch: dict[str, Any]) -> None:
        """Every line of an ended batch, joined on custom_id; missing lines are unfinished."""
        results: dict[str, LineResult] = {}
        for key in ("output_file_id", "error_file_id"):
            if batch.get(key):
                content = await self._call(self._client.content, str(batch[key]))
                read_results(content, results)
        done: list[Outcome] = []
        missing = Unfinished("missing", f"not in the output of batch {shard.batch_id}")
        for line_id in shard.custom_ids:
            seq = seq_of(line_id)
            row = self._rows.row_of(line_id, seq) if seq is not None else None
            if row is None:
                continue
            made = await self._rows.settle(row, results.get(line_id, missing), str(shard.batch_id))
            if made is not None:
                done.append(made)
            await self._rows.flush_cache(CACHE_FLUSH_ANSWERS)
        if done:
            await self._write(done)
        await self._rows.flush_cache()
        log.info("batch.collected", batch_id=shard.batch_id, status=shard.status, rows=len(done))

    async def _submit(self) -> bool:
        """Submit every pending row no batch holds, one file per model, split to fit."""
        covered = {c for s in self._shards if not s.settled for c in s.custom_ids}
        cached = await self._rows.take_cached(
            [row for row in self._rows.pending.values() if row.line_id not in covered]
        )
        if cached:
            await self._write(cached)
        by_model: dict[str, list[tuple[str, bytes]]] = {}
        url = self._client.routes.endpoint
        for row in self._rows.pending.values():
            if row.line_id not in covered:
                line = encode_line(row.line_id, url, row.request.body)
                by_model.setdefault(row.request.model or "", []).append((row.line_id, line))
        submitted = False
        for model, lines in by_model.items():
            for chunk in split_lines(lines, self._max_lines, self._spec.max_bytes_per_file):
                if self._control.is_stopping:
                    return submitted
                await self._submit_file(model, chunk)
                submitted = True
        return submitted

    async def _submit_file(self, model: str, chunk: list[tuple[str, bytes]]) -> None:
        content = b"".join(line for _, line in chunk)
        digest = hashlib.sha256(content).hexdigest()[:32]
        number = max((s.shard for s in self._shards), default=0) + 1
        name = f"{self._settings.job_name}-{number:05d}-{digest[:16]}.jsonl"
        shard = Shard(number, digest, model, name, [c for c, _ in chunk], time.time())
        await anyio.to_thread.run_sync(self._journal.intent, shard)
        self._shards.append(shard)
        shard.file_id = await self._call(self._client.upload, name, content)
        await self._journaled("uploaded", shard, file_id=shard.file_id)
        metadata = {
            "job": self._settings.job_name,
            "run_id": self._settings.run_id,
            "output": self._settings.output,
            "shard": str(number),
            "digest": digest,
        }
        try:
            batch = await self._call(
                self._client.create, shard.file_id, self._spec.completion_window, metadata
            )
        except AttemptError as exc:
            await self._reattach([shard])  # it may exist even so: find it, else drop the file
            if shard.batch_id is None and isinstance(exc, FatalError):
                self._failure = f"creating a batch failed: {exc.message}"
            return
        shard.batch_id, shard.status = str(batch["id"]), str(batch.get("status"))
        await self._journaled("created", shard, batch_id=shard.batch_id)
        log.info("batch.submitted", batch_id=shard.batch_id, shard=number, lines=len(chunk))

    def _report(self, active: list[Shard]) -> None:
        statuses = Counter(s.status or "unknown" for s in self._shards if s.batch_id)
        log.info(
            "batch.poll",
            batches=dict(statuses),
            running=len(active),
            rows_pending=len(self._rows.pending),
        )
        self._on_poll(
            "batches " + ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
        )

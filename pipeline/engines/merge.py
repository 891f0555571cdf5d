"""``pipeline merge``: the complete shards of a job -> its one output file.

Every shard ``I-of-N`` must have finished (its manifest says complete) for the same
job file and the same input; then their outputs (each sorted by input position, the
``_seq`` column kept) are merged in input order, a window at a time (memory stays
flat), into a temp file renamed over the output, with a manifest naming the shards.
A position seen twice (overlapping shards) or a row count that differs from the
shards' manifests stops the merge before the rename: nothing is written.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import OutputError, PipelineError
from pipeline.lock import OutputLock
from pipeline.manifest import Manifest, file_sha256, read_manifest, write_manifest
from pipeline.records import Ended, RunSummary
from pipeline.results import SEQ, Piece, merge_pieces, shard_counts, shard_output, shards_dir
from pipeline.runner.plan import new_run_id
from pipeline.runner.verdict import exit_code
from pipeline.spec import JobSpec, load_job
from pipeline.version import __version__


class ShardsMissing(PipelineError):
    """Some shards have no complete output yet: the merge writes nothing (exit code 9)."""


@dataclass(frozen=True, slots=True)
class MergeResult:
    """A merged output: its exit code, manifest, the shards in it and the summed summary."""

    exit_code: int
    reason: str
    output_path: Path
    manifest_path: Path
    shards: list[str]
    summary: RunSummary


@dataclass(frozen=True, slots=True)
class _Done:
    name: str
    output: Path
    manifest: Manifest


def shard_count(output: Path, count: int | None) -> int:
    """The N of the shards beside ``output`` (``count`` when given)."""
    found = shard_counts(output)
    if count is not None:
        return count
    if not found:
        raise ShardsMissing(f"{output}: no shards found in {shards_dir(output)}/ (run them first)")
    if len(found) > 1:
        counts = ", ".join(str(n) for n in found)
        raise ShardsMissing(
            f"{shards_dir(output)}: shards of several counts ({counts}); pass --shards N"
        )
    return next(iter(found))


def _complete_shards(output: Path, count: int, job_sha256: str) -> list[_Done]:
    """Each shard's manifest, or ``ShardsMissing`` naming every shard not done."""
    done, missing = [], []
    for index in range(count):
        name = f"{index}-of-{count}"
        path = shard_output(output, name)
        manifest = read_manifest(path)
        if manifest is None or not path.exists():
            missing.append(f"{name} (no results)")
        elif not manifest.complete:
            missing.append(f"{name} (stopped: {manifest.exit_reason})")
        elif manifest.job_sha256 != job_sha256:
            missing.append(f"{name} (ran another version of the job file)")
        else:
            done.append(_Done(name, path, manifest))
    if missing:
        raise ShardsMissing(
            f"{output}: {len(missing)} of {count} shards not complete: {', '.join(missing)};"
            " run them (--shard I/N), then merge again"
        )
    inputs = {str(sorted(d.manifest.input.items())) for d in done}
    if len(inputs) > 1:
        raise ShardsMissing(f"{output}: the shards read different inputs; run them again")
    return done


def _write(done: list[_Done], output: Path) -> int:
    """Merge the shards' outputs into ``output`` by rename; the rows written."""
    schema = pq.read_schema(done[0].output)
    pieces = [
        Piece(d.output, row_group=group)
        for d in done
        for group in range(pq.ParquetFile(d.output).metadata.num_row_groups)
    ]
    temp = output.with_name(f".{output.name}.tmp")
    written, last = 0, -1
    try:
        with pq.ParquetWriter(temp, schema.remove(schema.get_field_index(SEQ))) as writer:
            for window in merge_pieces(pieces, schema):
                seqs = window[SEQ]
                if window.num_rows and (
                    pc.min(seqs).as_py() <= last or pc.count_distinct(seqs).as_py() < len(seqs)
                ):
                    raise ShardsMissing(f"{output}: shards overlap (a row is in two of them)")
                if window.num_rows:
                    last = pc.max(seqs).as_py()
                writer.write_table(window.drop_columns([SEQ]))
                written += window.num_rows
        expected = sum(sum(d.manifest.rows_by_status.values()) for d in done)
        if written != expected:
            raise ShardsMissing(f"{output}: shards hold {written} rows, manifests say {expected}")
        temp.replace(output)
    except OSError as exc:
        raise OutputError(f"{output}: cannot write output: {exc.strerror or exc}") from None
    finally:
        temp.unlink(missing_ok=True)
    return written


def _summary(done: list[_Done], output: Path) -> RunSummary:
    """The shards' counts added up; the time is the longest shard's."""
    manifests = [d.manifest for d in done]
    errors: Counter[str] = Counter()
    for m in manifests:
        errors.update(m.rows_by_error_type)
    ok = sum(m.rows_by_status.get("ok", 0) for m in manifests)
    error = sum(m.rows_by_status.get("error", 0) for m in manifests)
    return RunSummary(
        output_path=str(output),
        rows_total=ok + error,
        rows_ok=ok,
        rows_error=error,
        errors_by_type=dict(errors),
        prompt_tokens=sum(m.prompt_tokens for m in manifests),
        completion_tokens=sum(m.completion_tokens for m in manifests),
        requests_sent=sum(m.requests_sent for m in manifests),
        elapsed_s=max((m.duration_s for m in manifests), default=0.0),
        rows_reused=sum(m.rows_reused for m in manifests),
        rows_sent=sum(m.rows_sent for m in manifests),
        ended=Ended.COMPLETE,
        cost_usd=sum(m.cost_usd or 0.0 for m in manifests),
        unpriced_rows=sum(m.unpriced_rows for m in manifests),
        earlier_cost_usd=sum(m.earlier_cost_usd for m in manifests),
        possibly_billed_attempts=sum(m.possibly_billed_attempts for m in manifests),
    )


def merge_shards(
    job_file: Path, output: Path, *, count: int | None = None, job: JobSpec | None = None
) -> MergeResult:
    """Merge the complete shards of ``job_file``'s run into ``output``; raises
    ``ShardsMissing`` (writing nothing) unless every shard is complete."""
    job = job or load_job(job_file)
    job_sha256 = file_sha256(job_file)
    count = shard_count(output, count)
    done = _complete_shards(output, count, job_sha256)
    clock = time.monotonic()
    with OutputLock(output):
        _write(done, output)
    summary = _summary(done, output)
    code, reason = exit_code(job, summary)
    manifest = _manifest(job, job_file, job_sha256, done, summary, code, reason)
    manifest.extra["merge_s"] = round(time.monotonic() - clock, 3)
    written = write_manifest(output, manifest)
    return MergeResult(code, reason, output, written, [d.name for d in done], summary)


def _manifest(
    job: JobSpec,
    job_file: Path,
    job_sha256: str,
    done: list[_Done],
    summary: RunSummary,
    code: int,
    reason: str,
) -> Manifest:
    """The merged output's record: the shards' counts added up, and the shards named."""
    return Manifest(
        run_id=new_run_id(),
        job_name=job.name,
        job_file=str(job_file),
        job_sha256=job_sha256,
        input=done[0].manifest.input,
        input_rows=sum(d.manifest.input_rows for d in done),
        limit=None,
        output=summary.output_path,
        complete=True,
        exit_code=code,
        exit_reason=reason,
        rows_by_status={"ok": summary.rows_ok, "error": summary.rows_error},
        rows_by_error_type=summary.errors_by_type,
        rows_sent=summary.rows_sent,
        rows_reused=summary.rows_reused,
        requests_sent=summary.requests_sent,
        prompt_tokens=summary.prompt_tokens,
        completion_tokens=summary.completion_tokens,
        duration_s=round(summary.elapsed_s, 3),
        started_at=min(d.manifest.started_at for d in done),
        finished_at=dt.datetime.now(dt.UTC).isoformat(),
        pipeline_version=__version__,
        extra={
            "shards": [
                {
                    "shard": d.name,
                    "run_id": d.manifest.run_id,
                    "output": str(d.output),
                    "rows": sum(d.manifest.rows_by_status.values()),
                    "exit_code": d.manifest.exit_code,
                }
                for d in done
            ],
        },
        cost_usd=round(summary.cost_usd, 6),
        earlier_cost_usd=round(summary.earlier_cost_usd, 6),
        unpriced_rows=summary.unpriced_rows,
        possibly_billed_attempts=summary.possibly_billed_attempts,
        max_cost_usd=job.limits.max_cost_usd,
    )

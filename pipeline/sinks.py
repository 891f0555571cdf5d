"""Parquet writing with the fixed output schema.

Results are written as they arrive: the runner hands batches of outcomes to
``PartWriter.write_part``, which writes each batch, sorted by input position, as a
part file (temp name, fsync, rename) in ``<output>.parts/``. ``finalize`` merges the
parts in input order, a window of positions at a time (memory stays flat), into
the output file, which appears by rename, complete.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import OutputError
from pipeline.records import Outcome

_SEQ = "_seq"
_MERGE_WINDOW = 20_000
_UTC = pa.timestamp("us", tz="UTC")

OUTPUT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("content", pa.string()),
        pa.field("finish_reason", pa.string()),
        pa.field("model", pa.string()),
        pa.field("prompt_tokens", pa.int64()),
        pa.field("completion_tokens", pa.int64()),
        pa.field("total_tokens", pa.int64()),
        pa.field("seed", pa.int64()),
        pa.field("attempts", pa.int32(), nullable=False),
        pa.field("latency_ms", pa.float64()),
        pa.field("http_status", pa.int32()),
        pa.field("error_type", pa.string()),
        pa.field("error_message", pa.string()),
        pa.field("started_at", _UTC, nullable=False),
        pa.field("finished_at", _UTC, nullable=False),
        pa.field("request_hash", pa.string()),
    ]
)
"""The documented columns every output has, before the kept input columns."""

OUTPUT_COLUMNS: tuple[str, ...] = tuple(OUTPUT_SCHEMA.names)


def output_schema(keep: pa.Schema, extra: pa.Schema | None = None) -> pa.Schema:
    """The output columns, then the ``extra`` columns a capability adds, then the kept input columns."""
    schema = OUTPUT_SCHEMA
    for field in extra or ():
        schema = schema.append(field)
    for field in keep:
        schema = schema.append(field.with_nullable(True))
    return schema


def _column(values: list[Any], kind: pa.DataType) -> pa.Array:
    """An Arrow array of ``kind``; a value that does not fit becomes null instead of failing."""
    try:
        return pa.array(values, type=kind)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        fitted = []
        for value in values:
            try:
                pa.array([value], type=kind)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                value = None
            fitted.append(value)
        return pa.array(fitted, type=kind)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PartWriter:
    """Writes outcomes as crash-safe part files, then merges them into one output file.

    ``extra`` columns (typed by the caller, nested types included) take their values
    from ``Outcome.extra``, kept columns from ``Outcome.keep``.
    """

    def __init__(self, output: Path, keep: pa.Schema, extra: pa.Schema | None = None) -> None:
        self.output = output
        self.parts_dir = output.with_name(output.name + ".parts")
        self.schema = output_schema(keep, extra)
        self._part_schema = self.schema.append(pa.field(_SEQ, pa.int64(), nullable=False))
        self._extra_names = frozenset(extra.names if extra is not None else ())
        self._parts = 0

    def prepare(self) -> None:
        """Create the folders and prove they are writable, before anything is sent."""
        try:
            self.output.parent.mkdir(parents=True, exist_ok=True)
            if self.parts_dir.exists():
                shutil.rmtree(self.parts_dir)
            self.parts_dir.mkdir()
            probe = self.parts_dir / ".probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise OutputError(f"{self.output}: cannot write output: {exc.strerror or exc}") from None

    def table(self, outcomes: Sequence[Outcome]) -> pa.Table:
        """Outcomes as an Arrow table in the part schema, sorted by input position."""
        ordered = sorted(outcomes, key=lambda o: o.seq)
        arrays: list[pa.Array] = []
        for field in self.schema:
            name = field.name
            if name in OUTPUT_COLUMNS:
                values = [getattr(o, name) for o in ordered]
            elif name in self._extra_names:
                values = [o.extra.get(name) for o in ordered]
            else:
                values = [o.keep.get(name) for o in ordered]
            arrays.append(_column(values, field.type))
        arrays.append(pa.array([o.seq for o in ordered], type=pa.int64()))
        return pa.Table.from_arrays(arrays, schema=self._part_schema)

    def write_part(self, outcomes: Sequence[Outcome]) -> None:
        """One part file, written under a temp name, fsynced, renamed (blocking: run in a thread)."""
        if not outcomes:
            return
        table = self.table(outcomes)
        self._parts += 1
        final = self.parts_dir / f"part-{self._parts:06d}.parquet"
        temp = final.with_suffix(".tmp")
        try:
            with temp.open("wb") as handle:
                pq.write_table(table, handle, compression="zstd")
                handle.flush()
                os.fsync(handle.fileno())
            temp.replace(final)
        except OSError as exc:
            raise OutputError(f"{final}: cannot write results: {exc.strerror or exc}") from None

    def finalize(self) -> None:
        """Merge every part into the output in input order; the output appears by rename."""
        temp = self.output.with_name(f".{self.output.name}.tmp")
        try:
            with pq.ParquetWriter(temp, self.schema, compression="zstd") as writer:
                for window in merge_parts(sorted(self.parts_dir.glob("part-*.parquet"))):
                    writer.write_table(window.drop_columns([_SEQ]))
            temp.replace(self.output)
            _fsync_dir(self.output.parent)
        except OSError as exc:
            raise OutputError(f"{self.output}: cannot write output: {exc.strerror or exc}") from None
        shutil.rmtree(self.parts_dir, ignore_errors=True)


def _first_seq(part: Path) -> int:
    """The smallest input position in a part (parts are sorted, so its first row's)."""
    return int(pq.ParquetFile(part).read_row_group(0, columns=[_SEQ])[_SEQ][0].as_py())


def merge_parts(parts: list[Path], window: int = _MERGE_WINDOW) -> Iterator[pa.Table]:
    """Tables of rows in input order from sorted parts, reading each part once.

    Parts are taken in order of their first position; rows past the current window
    wait in ``pending``, so memory holds one window plus the rows that arrived early.
    """
    queue = sorted((_first_seq(part), part) for part in parts)
    pending: pa.Table | None = None
    index = 0
    while index < len(queue) or (pending is not None and pending.num_rows):
        starts = [queue[index][0]] if index < len(queue) else []
        if pending is not None and pending.num_rows:
            starts.append(pc.min(pending[_SEQ]).as_py())
        high = min(starts) + window
        tables = [pending] if pending is not None else []
        while index < len(queue) and queue[index][0] < high:
            tables.append(pq.read_table(queue[index][1], use_threads=False))
            index += 1
        merged = pa.concat_tables(tables)
        early = pc.less(merged[_SEQ], high)
        yield merged.filter(early).sort_by(_SEQ)
        pending = merged.filter(pc.invert(early))

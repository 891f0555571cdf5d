"""Parquet writing with the fixed output schema.

Results are written as they arrive: the runner hands batches of outcomes to
``PartWriter.write_part``, which writes each batch, sorted by input position, as a
part file (temp name, fsync, rename) in ``<output>.parts/``. ``finalize`` merges the
parts in input order, a window of positions at a time (memory stays flat), into
the output file, which appears by rename, complete.

The schema is ``OUTPUT_SCHEMA``, then the optional columns the job asks for (in
``OPTIONAL_COLUMNS`` order: ``choices`` with ``params.n > 1``, ``tool_calls`` with
``tools``, ``ttft_ms`` with ``stream``), then the kept input columns.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
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
        pa.field("cached_tokens", pa.int64()),
        pa.field("reasoning_tokens", pa.int64()),
        pa.field("cost_usd", pa.float64()),
        pa.field("seed", pa.int64()),
        pa.field("attempts", pa.int32(), nullable=False),
        pa.field("possibly_billed_attempts", pa.int32()),
        pa.field("latency_ms", pa.float64()),
        pa.field("http_status", pa.int32()),
        pa.field("error_type", pa.string()),
        pa.field("error_message", pa.string()),
        pa.field("started_at", _UTC, nullable=False),
        pa.field("finished_at", _UTC, nullable=False),
        pa.field("request_hash", pa.string()),
        pa.field("system_fingerprint", pa.string()),
        pa.field("response_id", pa.string()),
    ]
)
"""The documented columns every output has, before the optional and kept input columns."""

OUTPUT_COLUMNS: tuple[str, ...] = tuple(OUTPUT_SCHEMA.names)

TOOL_CALL = pa.struct([("id", pa.string()), ("name", pa.string()), ("arguments", pa.string())])

OPTIONAL_COLUMNS: dict[str, pa.DataType] = {
    "choices": pa.list_(pa.string()),
    "tool_calls": pa.list_(TOOL_CALL),
    "ttft_ms": pa.float64(),
}
"""Columns present only when the job asks for them; their names are reserved either way."""

RESERVED_COLUMNS: tuple[str, ...] = OUTPUT_COLUMNS + tuple(OPTIONAL_COLUMNS)
"""Names a kept input column may not have."""


def output_schema(
    keep: pa.Schema, optional: Sequence[str] = (), extra: pa.Schema | None = None
) -> pa.Schema:
    """The output columns, the asked-for optional ones, the ``extra`` columns a capability
    adds (typed by it, e.g. ``parsed``), then the kept input columns."""
    unknown = sorted(set(optional) - OPTIONAL_COLUMNS.keys())
    if unknown:
        raise ValueError(f"not an optional output column: {unknown[0]!r}")
    schema = OUTPUT_SCHEMA
    for name, kind in OPTIONAL_COLUMNS.items():
        if name in optional:
            schema = schema.append(pa.field(name, kind))
    for field in extra or ():
        schema = schema.append(field)
    for field in keep:
        schema = schema.append(field.with_nullable(True))
    return schema


def _cell(name: str, value: Any) -> Any:
    """An outcome value as Arrow takes it (tool calls become dicts, tuples lists)."""
    if value is None:
        return None
    if name == "tool_calls":
        return [dataclasses.asdict(call) for call in value]
    if name == "choices":
        return list(value)
    return value


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


@dataclass(frozen=True, slots=True)
class Piece:
    """A slice of a results file to merge: a whole part, or one row group of an older file.

    ``keep`` (a 0/1 mask over the slice's rows) and ``moved`` (row -> new position) apply
    to earlier results carried into this run.
    """

    path: Path
    row_group: int | None = None
    keep: bytes | None = None
    moved: dict[int, int] | None = None

    def load(self, schema: pa.Schema) -> pa.Table:
        """The slice's kept rows in ``schema`` plus ``_seq``, sorted by position."""
        file = pq.ParquetFile(self.path)
        table = file.read() if self.row_group is None else file.read_row_group(self.row_group)
        if _SEQ not in table.column_names:
            start = sum(file.metadata.row_group(i).num_rows for i in range(self.row_group or 0))
            table = table.append_column(
                _SEQ, pa.array(range(start, start + table.num_rows), type=pa.int64())
            )
        if self.moved:
            seqs = table[_SEQ].to_pylist()
            for row, seq in self.moved.items():
                seqs[row] = seq
            table = table.set_column(
                table.schema.get_field_index(_SEQ), _SEQ, pa.array(seqs, type=pa.int64())
            )
        if self.keep is not None:
            table = table.filter(pa.array([bool(b) for b in self.keep]))
        return conform(table, schema).sort_by(_SEQ)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns: missing ones null, others cast."""
    arrays = []
    for field in schema:
        column = None
        if field.name in table.column_names:
            try:
                column = table[field.name].cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                column = None  # an earlier run's column of another type cannot be kept
        arrays.append(column if column is not None else pa.nulls(table.num_rows, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def carried_pieces(path: Path, keep: bytearray, moved: dict[int, int]) -> list[Piece]:
    """One piece per row group of an earlier results file that has rows to keep."""
    pieces = []
    metadata = pq.ParquetFile(path).metadata
    start = 0
    for group in range(metadata.num_row_groups):
        rows = metadata.row_group(group).num_rows
        mask = bytes(keep[start : start + rows])
        if any(mask):
            local = {row - start: seq for row, seq in moved.items() if start <= row < start + rows}
            pieces.append(Piece(path, group, mask, local or None))
        start += rows
    return pieces


class PartWriter:
    """Writes outcomes as crash-safe part files, then merges them into one output file.

    Part files are named ``part-<run>-<n>.parquet``: a resumed run writes under a new
    run number and can tell its own parts from those of interrupted earlier runs.

    ``extra`` columns (typed by the caller, nested types included) take their values
    from ``Outcome.extra``, kept columns from ``Outcome.keep``.
    """

    def __init__(
        self,
        output: Path,
        keep: pa.Schema,
        extra: pa.Schema | None = None,
        optional: Sequence[str] = (),
    ) -> None:
        self.output = output
        self.parts_dir = output.with_name(output.name + ".parts")
        self.schema = output_schema(keep, optional, extra)
        self._outcome_columns = frozenset(OUTPUT_COLUMNS) | frozenset(optional)
        self._part_schema = self.schema.append(pa.field(_SEQ, pa.int64(), nullable=False))
        self._extra_names = frozenset(extra.names if extra is not None else ())
        self._keep_names = list(keep.names)
        self._parts = 0
        self.run_number = 1

    def prepare(self, *, fresh: bool = False) -> None:
        """Create the folders and prove them writable, before anything is sent.

        Earlier parts stay (they are what a resumed run reuses) unless ``fresh``;
        half-written temp files of a crashed run are removed.
        """
        try:
            self.output.parent.mkdir(parents=True, exist_ok=True)
            if fresh and self.parts_dir.exists():
                shutil.rmtree(self.parts_dir)
            self.parts_dir.mkdir(exist_ok=True)
            for temp in self.parts_dir.glob("*.tmp"):
                temp.unlink()
            probe = self.parts_dir / ".probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise OutputError(
                f"{self.output}: cannot write output: {exc.strerror or exc}"
            ) from None
        runs = [int(p.name.split("-")[1]) for p in self.parts_dir.glob("part-*-*.parquet")]
        self.run_number = max(runs, default=0) + 1

    def earlier_results(self) -> list[Path]:
        """Files holding results of earlier runs, oldest first: the output, then old parts."""
        files = [self.output] if self.output.exists() else []
        return files + sorted(self.parts_dir.glob("part-*-*.parquet"))

    def own_parts(self) -> list[Path]:
        """This run's part files."""
        return sorted(self.parts_dir.glob(f"part-{self.run_number:04d}-*.parquet"))

    def table(self, outcomes: Sequence[Outcome]) -> pa.Table:
        """Outcomes as an Arrow table in the part schema, sorted by input position."""
        ordered = sorted(outcomes, key=lambda o: o.seq)
        arrays: list[pa.Array] = []
        for field in self.schema:
            name = field.name
            if name in OPTIONAL_COLUMNS and name in self._outcome_columns:
                values = [_cell(name, getattr(o, name)) for o in ordered]
            elif name in self._outcome_columns:
                values = [getattr(o, name) for o in ordered]
            elif name in self._extra_names:
                values = [o.extra.get(name) for o in ordered]
            else:
                values = [o.keep.get(name) for o in ordered]
            arrays.append(_column(values, field.type))
        arrays.append(pa.array([o.seq for o in ordered], type=pa.int64()))
        return pa.Table.from_arrays(arrays, schema=self._part_schema)

    def _refresh_kept(self, table: pa.Table, kept_values: Iterator[dict[str, Any]]) -> pa.Table:
        """The table with its kept columns taken from the next ``num_rows`` input values."""
        rows = list(itertools.islice(kept_values, table.num_rows))
        for name in self._keep_names:
            index = table.schema.get_field_index(name)
            field = table.schema.field(index)
            table = table.set_column(
                index, field, _column([row.get(name) for row in rows], field.type)
            )
        return table

    def write_part(self, outcomes: Sequence[Outcome]) -> None:
        """One part file, written under a temp name, fsynced, renamed (blocking: run in a thread)."""
        if not outcomes:
            return
        table = self.table(outcomes)
        self._parts += 1
        final = self.parts_dir / f"part-{self.run_number:04d}-{self._parts:06d}.parquet"
        temp = final.with_suffix(".tmp")
        try:
            with temp.open("wb") as handle:
                pq.write_table(table, handle, compression="zstd")
                handle.flush()
                os.fsync(handle.fileno())
            temp.replace(final)
        except OSError as exc:
            raise OutputError(f"{final}: cannot write results: {exc.strerror or exc}") from None

    def finalize(
        self,
        carried: list[tuple[Path, bytearray, dict[int, int]]] | None = None,
        kept_values: Iterator[dict[str, Any]] | None = None,
    ) -> None:
        """Merge this run's parts and the carried earlier results into the output, in input order.

        ``kept_values`` (one dict per output row, in order) replaces the kept columns, so
        rows carried from an earlier run show the input's current values. The output
        appears by rename, complete; the parts folder is removed after.
        """
        pieces = [Piece(part) for part in self.own_parts()]
        for path, keep, moved in carried or []:
            pieces.extend(carried_pieces(path, keep, moved))
        temp = self.output.with_name(f".{self.output.name}.tmp")
        try:
            with pq.ParquetWriter(temp, self.schema, compression="zstd") as writer:
                for window in merge_pieces(pieces, self._part_schema):
                    table = window.drop_columns([_SEQ])
                    if kept_values is not None and self._keep_names:
                        table = self._refresh_kept(table, kept_values)
                    writer.write_table(table)
            temp.replace(self.output)
            _fsync_dir(self.output.parent)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise OutputError(
                f"{self.output}: cannot write output: {exc.strerror or exc}"
            ) from None
        shutil.rmtree(self.parts_dir, ignore_errors=True)


def _first_seq(piece: Piece, schema: pa.Schema) -> int:
    """The smallest input position in a piece (own parts are sorted: their first row's)."""
    if piece.row_group is None and piece.keep is None:
        file = pq.ParquetFile(piece.path)
        return int(file.read_row_group(0, columns=[_SEQ])[_SEQ][0].as_py())
    return int(piece.load(schema)[_SEQ][0].as_py())


def merge_pieces(
    pieces: list[Piece], schema: pa.Schema, window: int = _MERGE_WINDOW
) -> Iterator[pa.Table]:
    """Tables of rows in input order from sorted pieces, reading each piece once.

    Pieces are taken in order of their first position; rows past the current window
    wait in ``pending``, so memory holds one window plus the rows that arrived early.
    """
    queue = sorted(((_first_seq(piece, schema), index) for index, piece in enumerate(pieces)))
    pending: pa.Table | None = None
    index = 0
    while index < len(queue) or (pending is not None and pending.num_rows):
        starts = [queue[index][0]] if index < len(queue) else []
        if pending is not None and pending.num_rows:
            starts.append(pc.min(pending[_SEQ]).as_py())
        high = min(starts) + window
        tables = [pending] if pending is not None else []
        while index < len(queue) and queue[index][0] < high:
            tables.append(pieces[queue[index][1]].load(schema))
            index += 1
        merged = pa.concat_tables(tables)
        early = pc.less(merged[_SEQ], high)
        yield merged.filter(early).sort_by(_SEQ)
        pending = merged.filter(pc.invert(early))

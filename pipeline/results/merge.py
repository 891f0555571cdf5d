"""The merge: part files and carried earlier results, in input order, a window at a time."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.results.schema import SEQ

WINDOW_BYTES = 2 << 20
"""Bytes of rows (uncompressed) merged at a time: memory holds a few times this."""
_WINDOW_ROWS = (256, 4096)
"""The fewest and most input positions merged at a time."""


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
        # one thread: a slice is small, and Arrow's reader threads each keep buffers
        table = (
            file.read(use_threads=False)
            if self.row_group is None
            else file.read_row_group(self.row_group, use_threads=False)
        )
        if SEQ not in table.column_names:
            start = sum(file.metadata.row_group(i).num_rows for i in range(self.row_group or 0))
            table = table.append_column(
                SEQ, pa.array(range(start, start + table.num_rows), type=pa.int64())
            )
        if self.moved:
            seqs = table[SEQ].to_pylist()
            for row, seq in self.moved.items():
                seqs[row] = seq
            table = table.set_column(
                table.schema.get_field_index(SEQ), SEQ, pa.array(seqs, type=pa.int64())
            )
        if self.keep is not None:
            table = table.filter(pa.array([bool(b) for b in self.keep]))
        return conform(table, schema).sort_by(SEQ)


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


def _first_seq(piece: Piece, schema: pa.Schema) -> int:
    """The smallest input position in a piece (own parts are sorted: their first row's)."""
    if piece.keep is None and piece.moved is None:
        file = pq.ParquetFile(piece.path)
        if (
            SEQ in file.schema_arrow.names
        ):  # own parts and shard outputs: sorted, so the first row's
            column = file.read_row_group(piece.row_group or 0, columns=[SEQ])[SEQ]
            return int(column[0].as_py())
    return int(piece.load(schema)[SEQ][0].as_py())


def window_rows(pieces: list[Piece], budget: int = WINDOW_BYTES) -> int:
    """Input positions per merge window: about ``budget`` bytes of the pieces' rows (their
    files' uncompressed size per row), so wide rows merge fewer at a time."""
    size = rows = 0
    for path in list(dict.fromkeys(piece.path for piece in pieces))[:8]:
        metadata = pq.ParquetFile(path).metadata
        for group in range(metadata.num_row_groups):
            size += metadata.row_group(group).total_byte_size
            rows += metadata.row_group(group).num_rows
    fewest, most = _WINDOW_ROWS
    return most if size == 0 else max(fewest, min(most, budget * rows // size))


def merge_pieces(
    pieces: list[Piece], schema: pa.Schema, window: int | None = None
) -> Iterator[pa.Table]:
    """Tables of rows in input order from sorted pieces, reading each piece once.

    Pieces are taken in order of their first position; rows past the current window
    (``window`` positions, by default ``window_rows``) wait in ``pending``, so memory
    holds one window plus the rows that arrived early.
    """
    if window is None:
        window = window_rows(pieces)
    queue = sorted(((_first_seq(piece, schema), index) for index, piece in enumerate(pieces)))
    pending: pa.Table | None = None
    index = 0
    while index < len(queue) or (pending is not None and pending.num_rows):
        starts = [queue[index][0]] if index < len(queue) else []
        if pending is not None and pending.num_rows:
            starts.append(pc.min(pending[SEQ]).as_py())
        high = min(starts) + window
        tables = [pending] if pending is not None else []
        while index < len(queue) and queue[index][0] < high:
            tables.append(pieces[queue[index][1]].load(schema))
            index += 1
        merged = pa.concat_tables(tables)
        early = pc.less(merged[SEQ], high)
        yield merged.filter(early).sort_by(SEQ)
        pending = merged.filter(pc.invert(early))

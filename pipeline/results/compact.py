"""Part files of a long run, compacted as it goes: their names, which ones count, the merge.

A part file covers a range of a run's part numbers: ``part-<run>-<n>.parquet`` covers
``n`` alone (as written), ``part-<run>-<lo>-<hi>.parquet`` covers ``lo..hi`` (every part
of that run numbered in the range, compacted into one). A compacted file appears by
rename, complete, before the files it replaces are deleted; until then those count and
it does not exist. A file whose range lies inside another's of the same run is
superseded: never read, and deleted by the next run. So a crash at any moment leaves
either the old parts or the new one counted, never both.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.results.merge import WINDOW_BYTES, Piece, merge_pieces, window_rows

COMPACT_FIRST = 64
"""Parts as written that are compacted into one."""
COMPACT_NEXT = 16
"""Compacted files of one level that are compacted again into one (the next level)."""
COMPACT_WINDOW_BYTES = WINDOW_BYTES // 2
"""Rows merged at a time by a compaction: it runs beside the run's own work, and its
files' row groups are read back only by later merges (the output keeps larger ones)."""


@dataclass(frozen=True, slots=True, order=True)
class Span:
    """The run and range of part numbers a part file covers."""

    run: int
    lo: int
    hi: int

    @classmethod
    def of(cls, path: Path) -> Span | None:
        """The span in a part file's name (None: not a part file)."""
        fields = path.name.removesuffix(".parquet").split("-")
        if path.suffix != ".parquet" or fields[0] != "part" or len(fields) not in (3, 4):
            return None
        if not all(f.isdigit() for f in fields[1:]):
            return None
        numbers = [int(f) for f in fields[1:]]
        return cls(numbers[0], numbers[1], numbers[-1])

    def name(self) -> str:
        """The file name of this span."""
        if self.lo == self.hi:
            return f"part-{self.run:04d}-{self.lo:06d}.parquet"
        return f"part-{self.run:04d}-{self.lo:06d}-{self.hi:06d}.parquet"

    def within(self, other: Span) -> bool:
        """Whether ``other`` (another file) covers every part this one does."""
        return (
            self != other and self.run == other.run and other.lo <= self.lo and self.hi <= other.hi
        )


def split_parts(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """Part files that count (sorted by run, then range) and those superseded by another."""
    spans = {path: span for path in paths if (span := Span.of(path)) is not None}
    live: list[Path] = []
    superseded: list[Path] = []
    for path, span in sorted(spans.items(), key=lambda item: item[1]):
        covered = any(span.within(other) for other in spans.values())
        (superseded if covered else live).append(path)
    return live, superseded


def live_parts(folder: Path, run: int | None = None) -> list[Path]:
    """The part files in ``folder`` that count (of one run when given), oldest first."""
    pattern = "part-*.parquet" if run is None else f"part-{run:04d}-*.parquet"
    return split_parts(list(folder.glob(pattern)))[0]


def part_pieces(path: Path) -> list[Piece]:
    """One merge piece per row group (each sorted by position)."""
    groups = pq.ParquetFile(path).metadata.num_row_groups
    return [Piece(path)] if groups == 1 else [Piece(path, group) for group in range(groups)]


def compact(files: list[Path], schema: pa.Schema) -> Path:
    """Merge part files of one run (every file of its range) into one, in input order, a
    window at a time; the new file appears by rename, then the old ones are deleted
    (blocking: run in a thread). Returns the new file."""
    spans = [span for path in files if (span := Span.of(path)) is not None]
    if len(spans) != len(files) or len({s.run for s in spans}) != 1:
        raise ValueError(f"not part files of one run: {[p.name for p in files]}")
    target = files[0].with_name(
        Span(spans[0].run, min(s.lo for s in spans), max(s.hi for s in spans)).name()
    )
    pieces = [piece for path in files for piece in part_pieces(path)]
    window = window_rows(pieces, COMPACT_WINDOW_BYTES)
    write_durably(target, schema, merge_pieces(pieces, schema, window))
    for path in files:
        path.unlink(missing_ok=True)
    return target


def write_durably(
    final: Path, schema: pa.Schema, tables: Iterable[pa.Table], temp: Path | None = None
) -> None:
    """Write ``tables`` to ``final``: a temp file (``temp``, default ``final`` with the
    suffix ``.tmp``), fsynced, renamed into place, the folder fsynced (blocking: run in a
    thread)."""
    temp = temp or final.with_suffix(".tmp")
    with pq.ParquetWriter(temp, schema, compression="zstd") as writer:
        for table in tables:
            writer.write_table(table)
    with temp.open("rb") as handle:
        os.fsync(handle.fileno())
    temp.replace(final)
    fsync_dir(final.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

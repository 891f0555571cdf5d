"""Crash-safe part files as a run goes, then the one output file, by rename.

Results are written as they arrive: the runner hands batches of outcomes to
``PartWriter.write_part``, which writes each batch, sorted by input position, as a
part file (temp name, fsync, rename) in ``<output>.parts/``. ``finalize`` merges the
parts in input order, a window of positions at a time (memory stays flat), into
the output file, which appears by rename, complete.

Nothing paid for is dropped: earlier results this run does not carry into its output
(rows outside a smaller ``--limit`` or another ``--input``, results a ``--fresh`` run
sent again) move to the archive ``<output>.earlier/``, written before the output is
replaced. The archive is read back like the output (reuse, recorded cost) until the
user deletes it.
"""

from __future__ import annotations

import itertools
import shutil
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from pipeline.errors import OutputError
from pipeline.records import USAGE_COLUMNS, Outcome
from pipeline.results.compact import (
    COMPACT_FIRST,
    COMPACT_NEXT,
    Span,
    compact,
    live_parts,
    part_pieces,
    split_parts,
    write_durably,
)
from pipeline.results.merge import Piece, carried_pieces, merge_pieces
from pipeline.results.schema import (
    OPTIONAL_COLUMNS,
    OUTPUT_COLUMNS,
    OUTPUT_SCHEMA,
    SEQ,
    cell,
    column_array,
    output_schema,
)

if TYPE_CHECKING:
    import polars as pl

_NOT = bytes([1, 0]) + bytes(254)
"""``bytes.translate`` table that turns a 0/1 mask into its complement."""


def parts_dir(output: Path) -> Path:
    """Where the part files of ``output`` live: ``<output>.parts/``."""
    return output.with_name(output.name + ".parts")


def archive_dir(output: Path) -> Path:
    """Where earlier results outside the current output are kept: ``<output>.earlier/``."""
    return output.with_name(output.name + ".earlier")


def read_results(output: Path) -> pl.DataFrame:
    """Every result written for ``output``: the output file, else its part files, else none."""
    import polars as pl  # only for readers of results: a run itself never loads polars

    if output.exists():
        return pl.read_parquet(output)
    parts = live_parts(parts_dir(output))
    if parts:
        return pl.read_parquet(parts)
    empty = pl.from_arrow(OUTPUT_SCHEMA.empty_table())
    assert isinstance(empty, pl.DataFrame)
    return empty


class PartWriter:
    """Writes outcomes as crash-safe part files, then merges them into one output file.

    Part files are named ``part-<run>-<n>.parquet``: a resumed run writes under a new
    run number and can tell its own parts from those of interrupted earlier runs. As a
    long run goes, its parts are compacted (``compaction_due``, ``compact``; see
    ``compact.py``), so a run of hours leaves tens of files, not thousands.

    ``extra`` columns (typed by the caller, nested types included) take their values
    from ``Outcome.extra``, kept columns from ``Outcome.keep``. With ``keep_seq`` (a shard's
    output) the merged file keeps the ``_seq`` column, to be merged again with other shards.
    """

    def __init__(
        self,
        output: Path,
        keep: pa.Schema,
        extra: pa.Schema | None = None,
        optional: Sequence[str] = (),
        *,
        keep_seq: bool = False,
    ) -> None:
        self.output = output
        self.keep_seq = keep_seq
        self.parts_dir = parts_dir(output)
        self.schema = output_schema(keep, optional, extra)
        self._outcome_columns = frozenset(OUTPUT_COLUMNS) | frozenset(optional)
        self._part_schema = self.schema.append(pa.field(SEQ, pa.int64(), nullable=False))
        self._extra_names = frozenset(extra.names if extra is not None else ())
        self._keep_names = list(keep.names)
        self._parts = 0
        self.run_number = 1
        self._levels: list[list[Path]] = [[]]  # this run's files: as written, compacted once, ...
        self._lock = threading.Lock()

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
            # a crash between a compacted file's rename and deleting what it replaced
            for old in split_parts(list(self.parts_dir.glob("part-*.parquet")))[1]:
                old.unlink()
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
        """Files holding results of earlier runs, oldest first: the archive, the output,
        then old parts."""
        files = sorted(archive_dir(self.output).glob("earlier-*.parquet"))
        files += [self.output] if self.output.exists() else []
        return files + live_parts(self.parts_dir)

    def own_parts(self) -> list[Path]:
        """This run's part files (those that count)."""
        return live_parts(self.parts_dir, self.run_number)

    def compaction_due(self) -> tuple[int, list[Path]] | None:
        """This run's files to compact now, with their level (taken: call ``compact`` next)."""
        with self._lock:
            for level, files in enumerate(self._levels):
                if len(files) >= (COMPACT_FIRST if level == 0 else COMPACT_NEXT):
                    self._levels[level] = []
                    return level, files
        return None

    def compact(self, level: int, files: list[Path]) -> None:
        """Compact ``files`` (of ``level``, from ``compaction_due``) into one file of the next
        level (blocking: run in a thread, beside ``write_part``)."""
        try:
            merged = compact(files, self._part_schema)
        except OSError as exc:
            raise OutputError(
                f"{self.parts_dir}: cannot compact part files: {exc.strerror or exc}"
            ) from None
        with self._lock:
            if len(self._levels) == level + 1:
                self._levels.append([])
            self._levels[level + 1].append(merged)

    def table(self, outcomes: Sequence[Outcome]) -> pa.Table:
        """Outcomes as an Arrow table in the part schema, sorted by input position."""
        ordered = sorted(outcomes, key=lambda o: o.seq)
        arrays: list[pa.Array] = []
        for field in self.schema:
            name = field.name
            if name in OPTIONAL_COLUMNS and name in self._outcome_columns:
                values = [cell(name, getattr(o, name)) for o in ordered]
            elif name in USAGE_COLUMNS:
                values = [getattr(o.usage, name) for o in ordered]
            elif name in self._outcome_columns:
                values = [getattr(o, name) for o in ordered]
            elif name in self._extra_names:
                values = [o.extra.get(name) for o in ordered]
            else:
                values = [o.keep.get(name) for o in ordered]
            arrays.append(column_array(values, field.type))
        arrays.append(pa.array([o.seq for o in ordered], type=pa.int64()))
        return pa.Table.from_arrays(arrays, schema=self._part_schema)

    def _refresh_kept(self, table: pa.Table, kept_values: Iterator[dict[str, Any]]) -> pa.Table:
        """The table with its kept columns taken from the next ``num_rows`` input values."""
        rows = list(itertools.islice(kept_values, table.num_rows))
        for name in self._keep_names:
            index = table.schema.get_field_index(name)
            field = table.schema.field(index)
            table = table.set_column(
                index, field, column_array([row.get(name) for row in rows], field.type)
            )
        return table

    def write_part(self, outcomes: Sequence[Outcome]) -> None:
        """One part file, written durably (temp name, fsync, rename, folder fsync: the rows
        in it are paid for; blocking: run in a thread)."""
        if not outcomes:
            return
        table = self.table(outcomes)
        self._parts += 1
        final = self.parts_dir / Span(self.run_number, self._parts, self._parts).name()
        try:
            write_durably(final, table.schema, [table])
        except OSError as exc:
            raise OutputError(f"{final}: cannot write results: {exc.strerror or exc}") from None
        with self._lock:
            self._levels[0].append(final)

    def finalize(
        self,
        carried: list[tuple[Path, bytearray, dict[int, int]]] | None = None,
        kept_values: Iterator[dict[str, Any]] | None = None,
    ) -> None:
        """Merge this run's parts and the carried earlier results into the output, in input order.

        ``kept_values`` (one dict per output row, in order) replaces the kept columns, so
        rows carried from an earlier run show the input's current values. Earlier results
        not carried go to the archive first; then the output appears by rename, complete,
        and the parts folder and the archive's older files are removed.
        """
        pieces = [piece for part in self.own_parts() for piece in part_pieces(part)]
        for path, keep, moved in carried or []:
            pieces.extend(carried_pieces(path, keep, moved))
        temp = self.output.with_name(f".{self.output.name}.tmp")
        try:
            superseded = self._archive(carried or [])
            schema = self._part_schema if self.keep_seq else self.schema
            tables = (
                self._output_table(window, kept_values)
                for window in merge_pieces(pieces, self._part_schema)
            )
            # the parts go once the output is there: it must be on disk, not only named
            write_durably(self.output, schema, tables, temp)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise OutputError(
                f"{self.output}: cannot write output: {exc.strerror or exc}"
            ) from None
        for old in superseded:
            old.unlink(missing_ok=True)
        shutil.rmtree(self.parts_dir, ignore_errors=True)

    def _output_table(
        self, window: pa.Table, kept_values: Iterator[dict[str, Any]] | None
    ) -> pa.Table:
        """A merge window as the output holds it (``_seq`` only when kept, fresh kept values)."""
        table = window if self.keep_seq else window.drop_columns([SEQ])
        if kept_values is not None and self._keep_names:
            table = self._refresh_kept(table, kept_values)
        return table

    def _archive(self, carried: list[tuple[Path, bytearray, dict[int, int]]]) -> list[Path]:
        """Write the earlier results not carried into this run's output to one new archive
        file (before the output is replaced); return the older archive files it replaces."""
        archive = archive_dir(self.output)
        older = sorted(archive.glob("earlier-*.parquet"))
        pieces: list[Piece] = []
        for path, keep, _ in carried:
            pieces.extend(carried_pieces(path, bytearray(keep.translate(_NOT)), {}))
        if not pieces:
            return older
        archive.mkdir(exist_ok=True)
        final = archive / f"earlier-{self._archive_stamp(older):06d}.parquet"
        write_durably(final, self._part_schema, (p.load(self._part_schema) for p in pieces))
        return older

    @staticmethod
    def _archive_stamp(older: list[Path]) -> int:
        """The next archive file number."""
        numbers = [int(p.stem.split("-")[1]) for p in older if p.stem.split("-")[1].isdigit()]
        return max(numbers, default=0) + 1

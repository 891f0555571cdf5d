"""Many-file inputs (a directory or a glob of Parquet/JSONL files) and their split into shards.

Input discovery: a directory means every ``.parquet``/``.pq``/``.jsonl``/``.ndjson`` file
under it (recursively, hidden and ``_``-prefixed names skipped); a path with ``*``, ``?``
or ``[`` is a glob. Files are taken in sorted path order.

Row numbering (shard-independent, so ids, seeds and request hashes are too): file ``k``
of the sorted list has input positions ``k * 2**32 + row``; without an id column a row's
id is ``<file path relative to the input>:<row in the file>`` (a single file keeps plain
row numbers).

Shard assignment (documented in the README): the input is cut into *units*, each
Parquet row group and each JSONL file, in file then row-group order. With at least as
many units as shards, shard ``I`` of ``N`` takes units ``I, I+N, I+2N, ...`` (it reads
only those row groups, only those files); with fewer units than shards each unit is cut
into ``N`` contiguous row ranges and shard ``I`` takes range ``I`` of each.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import InputError, JobError
from pipeline.records import PromptRow
from pipeline.sources.base import Share, Source
from pipeline.sources.jsonl import JsonlSource
from pipeline.sources.parquet import ParquetSource

PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})
FILE_SHIFT = 32
"""File ``k``'s rows have input positions from ``k << FILE_SHIFT``."""


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` (0-based) of ``count``."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"I/N"`` with ``0 <= I < N``; anything else is a user error."""
        index, sep, count = text.partition("/")
        try:
            shard = cls(int(index), int(count))
        except ValueError:
            raise JobError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
        if not sep or shard.count < 1 or not 0 <= shard.index < shard.count:
            raise JobError(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/4")
        return shard

    @property
    def name(self) -> str:
        """``"I-of-N"``: the shard's folder beside the output."""
        return f"{self.index}-of-{self.count}"


@dataclass(frozen=True, slots=True)
class Unit:
    """A piece of the input no shard splits unless it must: rows ``[start, stop)`` of a file."""

    file: int
    start: int
    stop: int | None


def is_many(path: Path) -> bool:
    """Whether ``path`` names many files: a directory or a glob."""
    return path.is_dir() or any(char in str(path) for char in "*?[")


def _supported(path: Path) -> bool:
    hidden = any(part.startswith((".", "_")) for part in path.parts[-1:])
    return (
        path.is_file() and not hidden and path.suffix.lower() in PARQUET_SUFFIXES | JSONL_SUFFIXES
    )


def expand_input(path: Path) -> tuple[Path, list[Path]]:
    """The input's root (ids are relative to it) and its files, sorted."""
    if path.is_dir():
        root, files = path, sorted(p for p in path.rglob("*") if _supported(p))
    elif is_many(path):
        parts = path.parts
        fixed = list(itertools.takewhile(lambda part: not any(c in part for c in "*?["), parts))
        root = Path(*fixed) if fixed else Path()
        pattern = Path(*parts[len(fixed) :]).as_posix()
        files = sorted(p for p in root.glob(pattern) if _supported(p))
    elif path.is_file():
        return path.parent, [path]
    else:
        raise InputError(f"{path}: input file not found")
    if not files:
        raise InputError(f"{path}: no .parquet or .jsonl files found")
    return root, files


def file_units(index: int, path: Path) -> list[Unit]:
    """A Parquet file's row groups (from its footer), or a JSONL file whole."""
    if path.suffix.lower() not in PARQUET_SUFFIXES:
        return [Unit(index, 0, None)]
    try:
        metadata = pq.ParquetFile(path).metadata
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(f"{path}: not a readable Parquet file: {exc}") from None
    units, start = [], 0
    for group in range(metadata.num_row_groups):
        rows = metadata.row_group(group).num_rows
        units.append(Unit(index, start, start + rows))
        start += rows
    return units


def assign(units: list[Unit], shard: Shard) -> list[Unit]:
    """The units of ``shard`` (see the module docstring); sized units only when slicing."""
    if len(units) >= shard.count:
        return units[shard.index :: shard.count]
    mine = []
    for unit in units:
        assert unit.stop is not None, "size JSONL units before slicing them"
        size = unit.stop - unit.start
        low = unit.start + size * shard.index // shard.count
        high = unit.start + size * (shard.index + 1) // shard.count
        if high > low:
            mine.append(Unit(unit.file, low, high))
    return mine


def _line_count(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip())


def shard_units(files: list[Path], shard: Shard | None) -> list[Unit]:
    """Every unit of the input (no shard), or the units of one shard."""
    units = [unit for index, path in enumerate(files) for unit in file_units(index, path)]
    if shard is None:
        return units
    if len(units) < shard.count:
        units = [
            Unit(u.file, u.start, _line_count(files[u.file])) if u.stop is None else u
            for u in units
        ]
    return assign(units, shard)


@dataclass(frozen=True, slots=True)
class Wanted:
    """What the job reads of every file: the id column, the value and kept columns."""

    id_column: str | None
    value_columns: list[str]
    keep_columns: list[str]
    batch_size: int


class DatasetSource(Source):
    """Rows of many files (or one file's share of a shard), file after file.

    Each file is read by its own source, restricted to the units assigned; the kept
    columns' types come from the input's first file, whatever the shard.
    """

    def __init__(self, path: Path, wanted: Wanted, shard: Shard | None) -> None:
        root, files = expand_input(path)
        many = is_many(path)
        self.files = files
        self.children: list[Source] = []
        units = shard_units(files, shard)
        for index, group in itertools.groupby(units, key=lambda unit: unit.file):
            spans = tuple((unit.start, unit.stop) for unit in group)
            file = files[index]
            prefix = file.relative_to(root).as_posix() if many else None
            share = Share(spans, seq_base=index << FILE_SHIFT, id_prefix=prefix)
            self.children.append(_open_file(file, wanted, share))
        self._first = _open_file(files[0], wanted, None)
        self._wanted = wanted
        super().__init__(
            path,
            id_column=wanted.id_column,
            value_columns=wanted.value_columns,
            keep_columns=wanted.keep_columns,
            batch_size=wanted.batch_size,
        )

    def columns(self) -> list[str]:
        return self._first.columns()

    def is_empty(self) -> bool:
        """True when the whole input holds no rows (a shard's share may be empty: not an error)."""
        if self.count_rows() > 0:
            return False
        return all(_open_file(file, self._wanted, None).is_empty() for file in self.files)

    def check_columns(self) -> None:
        self._first.check_columns()
        for child in self.children:
            child.check_columns()

    def keep_schema(self) -> pa.Schema:
        return self._first.keep_schema()

    def count_rows(self) -> int:
        return sum(child.count_rows() for child in self.children)

    def id_batches(self) -> Iterator[list[object]]:
        for child in self.children:
            yield from child.id_batches()

    def id_records(self) -> Iterator[tuple[str, object]]:
        for child in self.children:
            for where, value in child.id_records():
                yield f"{child.path}: {where}", value

    def batches(self, limit: int | None = None) -> Iterator[list[PromptRow]]:
        count = 0
        for child in self.children:
            for batch in child.batches(None if limit is None else limit - count):
                count += len(batch)
                yield batch
            if limit is not None and count >= limit:
                return


def _open_file(path: Path, wanted: Wanted, share: Share | None) -> Source:
    """A reader for one file, by its extension."""
    suffix = path.suffix.lower()
    kind: type[Source]
    if suffix in PARQUET_SUFFIXES:
        kind = ParquetSource
    elif suffix in JSONL_SUFFIXES:
        kind = JsonlSource
    else:
        raise InputError(f"{path}: unsupported input type {suffix!r} (use .parquet or .jsonl)")
    return kind(
        path,
        id_column=wanted.id_column,
        value_columns=wanted.value_columns,
        keep_columns=wanted.keep_columns,
        batch_size=wanted.batch_size,
        share=share,
    )

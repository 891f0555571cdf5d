"""What every source offers, and the checks they share."""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import InputError
from pipeline.records import PromptRow

_ID_CHUNK = 65536
READ_BYTES = 1 << 20
"""About how many bytes of rows a source hands over at a time (``batch_size`` rows at most):
a batch of wide rows stays small."""


@dataclass(frozen=True, slots=True)
class Share:
    """Which rows of one file a source reads, and how they are numbered.

    ``spans`` are row ranges ``[start, stop)`` of the file (``stop`` None: to its end;
    ``spans`` None: every row). A row's position is ``seq_base`` plus its row in the
    file; without an id column its id is the row in the file, ``<id_prefix>:<row>``
    when the input has many files (the file's path relative to the input).
    """

    spans: tuple[tuple[int, int | None], ...] | None = None
    seq_base: int = 0
    id_prefix: str | None = None

    def seq(self, row: int) -> int:
        """The input position of the file's ``row``."""
        return self.seq_base + row

    def default_id(self, row: int) -> str:
        """The id of the file's ``row`` when the job names no id column."""
        return f"{self.id_prefix}:{row}" if self.id_prefix else str(row)

    def wanted(self, start: int, stop: int) -> list[tuple[int, int]]:
        """The parts of rows ``[start, stop)`` this share reads."""
        if self.spans is None:
            return [(start, stop)] if stop > start else []
        parts = []
        for lo, hi in self.spans:
            low, high = max(lo, start), stop if hi is None else min(hi, stop)
            if high > low:
                parts.append((low, high))
        return parts

    def last_row(self) -> int | None:
        """No row at or past this one is read (None: read to the end)."""
        if self.spans is None or any(hi is None for _, hi in self.spans):
            return None
        return max((hi for _, hi in self.spans if hi is not None), default=0)


@dataclass(frozen=True, slots=True)
class Preflight:
    """What a pass over the ids found: how many rows there are."""

    rows: int


class Source(ABC):
    """A streamed reader of prompt rows."""

    def __init__(
        self,
        path: Path,
        *,
        id_column: str | None,
        value_columns: list[str],
        keep_columns: list[str],
        batch_size: int,
        share: Share | None = None,
    ) -> None:
        self.path = path
        self.share = share or Share()
        self.id_column = id_column
        self.value_columns = list(dict.fromkeys(value_columns))
        self.keep_columns = list(keep_columns)
        self.batch_size = batch_size

    def rows_per_batch(self, bytes_per_row: float) -> int:
        """Rows a batch holds: ``batch_size`` at most, about ``READ_BYTES`` of them."""
        return max(1, min(self.batch_size, int(READ_BYTES / max(bytes_per_row, 1.0))))

    @abstractmethod
    def columns(self) -> list[str]:
        """Column names the input has (for JSONL: seen in the first lines)."""

    @abstractmethod
    def keep_schema(self) -> pa.Schema:
        """Arrow types of the kept columns, in ``keep_columns`` order."""

    @abstractmethod
    def id_batches(self) -> Iterator[list[object]]:
        """Every row's raw id value, in order, a batch at a time (only with an id column)."""

    @abstractmethod
    def id_records(self) -> Iterator[tuple[str, object]]:
        """``("row N" or "line N", raw id)`` for every row: the slow path, for error messages."""

    @abstractmethod
    def count_rows(self) -> int:
        """How many rows the input holds."""

    @abstractmethod
    def batches(self, limit: int | None = None) -> Iterator[list[PromptRow]]:
        """Rows in input order, a batch at a time, stopping after ``limit`` rows."""

    def is_empty(self) -> bool:
        """True when the input holds no rows at all."""
        return self.count_rows() == 0

    def check_columns(self) -> None:
        """Every column the job names exists in the input."""
        present = set(self.columns())
        wanted = [self.id_column] if self.id_column else []
        for name in [*wanted, *self.value_columns, *self.keep_columns]:
            if name not in present:
                raise InputError(
                    f"{self.path}: column {name!r} not found (has: {', '.join(sorted(present))})"
                )

    def preflight(self, limit: int | None = None) -> Preflight:
        """Check that there are rows and columns, and that ids are present and unique; count rows.

        An input without rows (a 0-row Parquet file, an empty or blank JSONL file) is a user
        error: a nightly job fed an empty export usually means the export failed.
        """
        if self.is_empty():
            raise InputError(f"{self.path}: the input has no rows (nothing to send)")
        self.check_columns()
        if self.id_column is None:
            rows = self.count_rows()
            return Preflight(rows if limit is None else min(rows, limit))
        return Preflight(self._check_ids(limit))

    def _check_ids(self, limit: int | None) -> int:
        """Count ids; fail on the first null or repeated one.

        Ids are kept as 64-bit hashes in a compact array (8 bytes a row, not a Python
        set of strings); only when a null or a repeated hash turns up is the input
        read again, slowly, to name the offending row exactly.
        """
        hashes = array("q")
        count = 0
        suspect = False
        for values in self.id_batches():
            if limit is not None:
                values = values[: limit - count]
            suspect = suspect or None in values
            hashes.extend(hash(str(v)) for v in values)
            count += len(values)
            if limit is not None and count >= limit:
                break
        repeated = _repeated(hashes)
        if suspect or repeated:
            self._name_bad_id(count, repeated)
        return count

    def _name_bad_id(self, count: int, repeated: set[int]) -> None:
        """Find and report the first null id or exact repeat among the suspects."""
        seen: set[str] = set()
        records = itertools.islice(self.id_records(), count)
        while chunk := list(itertools.islice(records, _ID_CHUNK)):
            for where, value in chunk:
                if value is None:
                    raise InputError(f"{self.path}: {where}: id column {self.id_column!r} is null")
                key = str(value)
                if hash(key) not in repeated:
                    continue
                if key in seen:
                    raise InputError(
                        f"{self.path}: {where}: duplicate id {key!r} in column {self.id_column!r}"
                    )
                seen.add(key)


def _repeated(hashes: array[int]) -> set[int]:
    """The values that occur more than once (sorted by Arrow, no Python int per value)."""
    if len(hashes) < 2:
        return set()
    ordered = pa.Array.from_buffers(pa.int64(), len(hashes), [None, pa.py_buffer(hashes)]).sort()
    same = pc.equal(ordered[1:], ordered[:-1])
    return set(pc.filter(ordered[1:], same).to_pylist())

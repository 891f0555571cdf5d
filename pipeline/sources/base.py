"""What every source offers, and the checks they share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from pipeline.errors import InputError
from pipeline.records import PromptRow


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
    ) -> None:
        self.path = path
        self.id_column = id_column
        self.value_columns = list(dict.fromkeys(value_columns))
        self.keep_columns = list(keep_columns)
        self.batch_size = batch_size

    @abstractmethod
    def columns(self) -> list[str]:
        """Column names the input has (for JSONL: seen in the first lines)."""

    @abstractmethod
    def keep_schema(self) -> pa.Schema:
        """Arrow types of the kept columns, in ``keep_columns`` order."""

    @abstractmethod
    def ids(self) -> Iterator[object]:
        """Every row's raw id value, in order (only called with an id column)."""

    @abstractmethod
    def count_rows(self) -> int:
        """How many rows the input holds."""

    @abstractmethod
    def batches(self, limit: int | None = None) -> Iterator[list[PromptRow]]:
        """Rows in input order, a batch at a time, stopping after ``limit`` rows."""

    def check_columns(self) -> None:
        """Every column the job names exists in the input."""
        present = set(self.columns())
        wanted = [self.id_column] if self.id_column else []
        for name in [*wanted, *self.value_columns, *self.keep_columns]:
            if name not in present:
                raise InputError(f"{self.path}: column {name!r} not found (has: {', '.join(sorted(present))})")

    def preflight(self, limit: int | None = None) -> Preflight:
        """Check columns, and that ids are present and unique; count rows."""
        self.check_columns()
        if self.id_column is None:
            rows = self.count_rows()
            return Preflight(rows if limit is None else min(rows, limit))
        return Preflight(check_ids(self.path, self.id_column, self.ids(), limit))


def check_ids(path: Path, column: str, ids: Iterable[object], limit: int | None) -> int:
    """Count ids, failing on the first null or repeated one."""
    seen: set[str] = set()
    count = 0
    for count, value in enumerate(ids, start=1):
        if limit is not None and count > limit:
            return limit
        if value is None:
            raise InputError(f"{path}: row {count - 1}: id column {column!r} is null")
        key = str(value)
        if key in seen:
            raise InputError(f"{path}: row {count - 1}: duplicate id {key!r} in column {column!r}")
        seen.add(key)
    return count

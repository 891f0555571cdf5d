"""Parquet input, read in record batches of only the columns (and row groups) the job needs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import InputError
from pipeline.records import PromptRow
from pipeline.sources.base import Source

_READ_BUFFER = 1 << 20
"""Bytes read from the file at a time."""
_SIZED_ROWS = 64
"""Rows read first to learn the size of a row."""


class ParquetSource(Source):
    """Streams a Parquet file batch by batch (only the row groups its share covers)."""

    def __init__(self, path: Path, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        try:
            # streamed a buffer at a time: unbuffered, the reader holds a row group's whole
            # column chunks (18 MB of a 200,000-row input while it hands out 2,048 rows)
            self._file = pq.ParquetFile(path, buffer_size=_READ_BUFFER, pre_buffer=False)
        except (OSError, pa.ArrowInvalid) as exc:
            raise InputError(f"{path}: not a readable Parquet file: {exc}") from None
        self._schema = self._file.schema_arrow

    def columns(self) -> list[str]:
        return list(self._schema.names)

    def keep_schema(self) -> pa.Schema:
        return pa.schema([self._schema.field(name) for name in self.keep_columns])

    def count_rows(self) -> int:
        total = int(self._file.metadata.num_rows)
        return sum(hi - lo for lo, hi in self.share.wanted(0, total))

    def _selected(
        self, columns: list[str], batch_size: int
    ) -> Iterator[tuple[int, pa.RecordBatch]]:
        """``(row in the file of the first row, batch)`` for the rows of the share, in order,
        a row group at a time (row groups outside the share are never read; every row before
        a corrupt group is read)."""
        metadata = self._file.metadata
        start = 0
        for group in range(metadata.num_row_groups):
            rows = metadata.row_group(group).num_rows
            parts = self.share.wanted(start, start + rows)
            if parts:
                yield from self._group(group, start, rows, parts, columns, batch_size)
            start += rows

    def _group(
        self,
        group: int,
        start: int,
        rows: int,
        parts: list[tuple[int, int]],
        columns: list[str],
        batch_size: int,
    ) -> Iterator[tuple[int, pa.RecordBatch]]:
        """The share's parts of one row group; an unreadable group is an ``InputError``
        naming it and its rows."""
        offset = start
        try:
            batches = self._file.iter_batches(
                batch_size=batch_size, row_groups=[group], columns=columns
            )
            for batch in batches:
                end = offset + batch.num_rows
                for lo, hi in parts:
                    low, high = max(lo, offset), min(hi, end)
                    if high > low:
                        yield low, batch.slice(low - offset, high - low)
                offset = end
        except (OSError, pa.ArrowException) as exc:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(
                f"{self.path}: row group {group} (rows {start}-{start + rows - 1}) "
                f"cannot be read: {detail}"
            ) from None

    def id_batches(self) -> Iterator[list[object]]:
        assert self.id_column is not None
        for _, batch in self._selected([self.id_column], 65536):
            yield batch.column(0).to_pylist()

    def id_records(self) -> Iterator[tuple[str, object]]:
        assert self.id_column is not None
        for first, batch in self._selected([self.id_column], 65536):
            for offset, value in enumerate(batch.column(0).to_pylist()):
                yield f"row {first + offset}", value

    def batches(self, limit: int | None = None) -> Iterator[list[PromptRow]]:
        wanted = self._wanted()
        size = self.rows_per_batch(self._bytes_per_row(wanted))
        pending: list[PromptRow] = []  # batches of ``size`` across row groups
        try:
            for rows in self._row_lists(limit, wanted, size):
                pending.extend(rows)
                while len(pending) >= size:
                    yield pending[:size]
                    pending = pending[size:]
        except InputError:
            if pending:  # every row read before the unreadable part is still sent
                yield pending
            raise
        if pending:
            yield pending

    def _wanted(self) -> list[str]:
        """The columns a row is made of."""
        wanted = [*self.value_columns, *self.keep_columns]
        if self.id_column:
            wanted.append(self.id_column)
        return list(dict.fromkeys(wanted))

    def _bytes_per_row(self, columns: list[str]) -> float:
        """The size in memory of a row's ``columns``, from the first rows (the metadata's
        sizes are of encoded pages: a column of repeated long values looks tiny there)."""
        if self._file.metadata.num_row_groups == 0:
            return 0.0
        first = self._file.iter_batches(batch_size=_SIZED_ROWS, row_groups=[0], columns=columns)
        try:
            batch = next(first, None)
        except (OSError, pa.ArrowException):
            return 0.0  # a corrupt group: reading it says so, with its rows
        return batch.nbytes / batch.num_rows if batch is not None and batch.num_rows else 0.0

    def _row_lists(
        self, limit: int | None, wanted: list[str], size: int
    ) -> Iterator[list[PromptRow]]:
        """The rows of each record batch (``size`` rows of the ``wanted`` columns),
        stopping after ``limit``."""
        share = self.share
        count = 0
        for first, batch in self._selected(wanted, size):
            columns = {name: batch.column(name).to_pylist() for name in wanted}
            rows: list[PromptRow] = []
            for i in range(batch.num_rows):
                if limit is not None and count >= limit:
                    break
                row = first + i
                row_id = columns[self.id_column][i] if self.id_column else share.default_id(row)
                rows.append(
                    PromptRow(
                        seq=share.seq(row),
                        id=str(row_id),
                        values={name: columns[name][i] for name in self.value_columns},
                        keep={name: columns[name][i] for name in self.keep_columns},
                    )
                )
                count += 1
            if rows:
                yield rows
            if limit is not None and count >= limit:
                return

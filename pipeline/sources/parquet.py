"""Parquet input, read in record batches of only the columns the job needs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import InputError
from pipeline.records import PromptRow
from pipeline.sources.base import Source


class ParquetSource(Source):
    """Streams a Parquet file batch by batch."""

    def __init__(self, path: Path, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        try:
            self._file = pq.ParquetFile(path)
        except (OSError, pa.ArrowInvalid) as exc:
            raise InputError(f"{path}: not a readable Parquet file: {exc}") from None
        self._schema = self._file.schema_arrow

    def columns(self) -> list[str]:
        return list(self._schema.names)

    def keep_schema(self) -> pa.Schema:
        return pa.schema([self._schema.field(name) for name in self.keep_columns])

    def count_rows(self) -> int:
        return int(self._file.metadata.num_rows)

    def id_batches(self) -> Iterator[list[object]]:
        assert self.id_column is not None
        for batch in self._file.iter_batches(batch_size=65536, columns=[self.id_column]):
            yield batch.column(0).to_pylist()

    def id_records(self) -> Iterator[tuple[str, object]]:
        index = 0
        for values in self.id_batches():
            for value in values:
                yield f"row {index}", value
                index += 1

    def batches(self, limit: int | None = None) -> Iterator[list[PromptRow]]:
        pending: list[PromptRow] = []  # batches of ``batch_size`` across row groups
        try:
            for rows in self._row_lists(limit):
                pending.extend(rows)
                while len(pending) >= self.batch_size:
                    yield pending[: self.batch_size]
                    pending = pending[self.batch_size :]
        except InputError:
            if pending:  # every row read before the unreadable part is still sent
                yield pending
            raise
        if pending:
            yield pending

    def _row_lists(self, limit: int | None) -> Iterator[list[PromptRow]]:
        """The rows of each record batch, stopping after ``limit``."""
        wanted = list(dict.fromkeys([*self.value_columns, *self.keep_columns]))
        if self.id_column:
            wanted.append(self.id_column)
        wanted = list(dict.fromkeys(wanted))
        seq = 0
        for batch in self._record_batches(wanted):
            columns = {name: batch.column(name).to_pylist() for name in wanted}
            rows: list[PromptRow] = []
            for i in range(batch.num_rows):
                if limit is not None and seq >= limit:
                    break
                row_id = columns[self.id_column][i] if self.id_column else seq
                rows.append(
                    PromptRow(
                        seq=seq,
                        id=str(row_id),
                        values={name: columns[name][i] for name in self.value_columns},
                        keep={name: columns[name][i] for name in self.keep_columns},
                    )
                )
                seq += 1
            yield rows
            if limit is not None and seq >= limit:
                return

    def _record_batches(self, columns: list[str]) -> Iterator[pa.RecordBatch]:
        """Record batches a row group at a time (so every row before a corrupt part is
        read); an unreadable group is an ``InputError`` naming it and its rows."""
        metadata = self._file.metadata
        start = 0
        for group in range(metadata.num_row_groups):
            rows = metadata.row_group(group).num_rows
            try:
                yield from self._file.iter_batches(
                    batch_size=self.batch_size, row_groups=[group], columns=columns
                )
            except (OSError, pa.ArrowException) as exc:
                detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise InputError(
                    f"{self.path}: row group {group} (rows {start}-{start + rows - 1}) "
                    f"cannot be read: {detail}"
                ) from None
            start += rows

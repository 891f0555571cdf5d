"""What earlier runs of the same output already finished, looked up by (row id, request hash).

A row is done when an earlier result for the same id *and* the same request hash
exists: change the prompt, template, model or parameters of some rows and only
those rows are sent again. Earlier results live in the previous output file (if
any) and in part files of interrupted runs. Lookup cost is a 64-bit key per
result in sorted arrays (about 25 bytes a row), a binary search per row.

``auth`` and ``not_found`` errors say nothing about the row, and transient failures
(rate limits, server errors, timeouts, dropped connections, broken answers) may well
pass next time, so none of them count as done: a plain re-run sends them again. Other
error rows (the server said no to *this* request, or the answer was unusable) count as
done unless ``--retry-errors`` is given; ``resend_hint`` says so when many rows failed.
"""

from __future__ import annotations

import hashlib
from array import array
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import ERROR_TYPES
from pipeline.results.schema import SEQ

NOT_DONE_ERRORS = frozenset(
    {
        "auth",
        "not_found",
        "insufficient_quota",
        "rate_limited",
        "server_error",
        "timeout",
        "connection",
        "bad_response",
    }
)
"""Error types a plain re-run sends again (the rest need ``--retry-errors``)."""
HINT_MIN_ROWS = 10
"""Rows of one error class from which the summary says how to send them again."""
_NO_ERROR = 255


def completion_key(row_id: str, request_hash: str) -> int:
    """A 64-bit key of (id, request hash)."""
    digest = hashlib.blake2b(f"{row_id}\x1f{request_hash}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _error_code(error_type: str | None) -> int:
    if error_type is None:
        return _NO_ERROR
    return ERROR_TYPES.index(error_type) if error_type in ERROR_TYPES else len(ERROR_TYPES)


_KEYS = pa.schema(
    [
        ("key", pa.uint64()),
        ("source", pa.uint32()),
        ("row", pa.uint32()),
        ("seq", pa.int64()),
        ("ok", pa.uint8()),
        ("error", pa.uint8()),
    ]
)
"""What the index keeps of one earlier result (about 26 bytes)."""


def _read_keys(path: Path, source: int) -> pa.Table:
    """Key, location, position and status of every result in one file, a batch at a time."""
    file = pq.ParquetFile(path)
    columns = ["id", "request_hash", "status", "error_type"]
    has_seq = SEQ in file.schema_arrow.names
    tables: list[pa.Table] = [_KEYS.empty_table()]
    start = 0
    for batch in file.iter_batches(
        batch_size=65536, columns=columns + ([SEQ] if has_seq else []), use_threads=False
    ):
        ids, hashes = batch.column("id").to_pylist(), batch.column("request_hash").to_pylist()
        rows = pa.array(range(start, start + batch.num_rows), type=pa.uint32())
        keys = [completion_key(i, h) if h else 0 for i, h in zip(ids, hashes, strict=True)]
        errors = [_error_code(e) for e in batch.column("error_type").to_pylist()]
        tables.append(
            pa.Table.from_arrays(
                [
                    pa.array(keys, type=pa.uint64()),
                    pa.repeat(pa.scalar(source, pa.uint32()), batch.num_rows),
                    rows,
                    batch.column(SEQ).cast(pa.int64()) if has_seq else rows.cast(pa.int64()),
                    pc.equal(batch.column("status"), "ok").cast(pa.uint8()).fill_null(0),
                    pa.array(errors, type=pa.uint8()),
                ],
                schema=_KEYS,
            )
        )
        start += batch.num_rows
    return pa.concat_tables(tables)


def _as_array(values: pa.ChunkedArray, typecode: str) -> array[int]:
    """A numeric Arrow column as a compact ``array`` (no Python objects per value)."""
    out = array(typecode)
    for chunk in values.chunks:
        width = chunk.type.byte_width
        data = chunk.buffers()[1]
        out.frombytes(data[chunk.offset * width : (chunk.offset + len(chunk)) * width].to_pybytes())
    return out


def _latest(table: pa.Table) -> pa.Table:
    """One result per key: an ok one over an error, else the later one (sorted by key)."""
    table = table.filter(pc.not_equal(table["key"], pa.scalar(0, pa.uint64()))).sort_by(
        [("key", "ascending"), ("ok", "ascending"), ("source", "ascending"), ("row", "ascending")]
    )
    if table.num_rows < 2:
        return table
    keys = table["key"].combine_chunks()
    last = pc.not_equal(keys[:-1], keys[1:])
    return table.filter(pa.concat_arrays([last, pa.array([True])]))


@dataclass
class Carried:
    """Earlier results this run keeps: which rows of each source file, and their new positions."""

    sources: list[Path]
    selected: list[bytearray]
    moved: dict[tuple[int, int], int] = field(default_factory=dict)

    def per_source(self) -> list[tuple[Path, bytearray, dict[int, int]]]:
        """For each source file: its path, which rows to keep, and row -> new position."""
        moved: list[dict[int, int]] = [{} for _ in self.sources]
        for (source, row), seq in self.moved.items():
            moved[source][row] = seq
        return list(zip(self.sources, self.selected, moved, strict=True))


class DoneIndex:
    """Sorted keys of earlier results with their location, position and status."""

    def __init__(self, sources: list[Path], frame: pa.Table, source_rows: list[int]) -> None:
        self.sources = sources
        self._keys = _as_array(frame["key"], "Q")
        self._sources = _as_array(frame["source"], "I")
        self._rows = _as_array(frame["row"], "I")
        self._seqs = _as_array(frame["seq"], "q")
        self._ok = bytes(_as_array(frame["ok"], "B"))
        self._errors = bytes(_as_array(frame["error"], "B"))
        self.carried = Carried(sources, [bytearray(n) for n in source_rows])

    @classmethod
    def load(cls, sources: list[Path]) -> DoneIndex:
        """Index every result in ``sources`` (oldest first; a later ok or later error wins)."""
        tables = [_read_keys(path, i) for i, path in enumerate(sources)]
        rows = [t.num_rows for t in tables]
        return cls(sources, _latest(pa.concat_tables([_KEYS.empty_table(), *tables])), rows)

    def __len__(self) -> int:
        return len(self._keys)

    def find(self, key: int, *, retry_errors: bool) -> int | None:
        """The index of a reusable earlier result for ``key``, if there is one."""
        index = bisect_left(self._keys, key)
        if index == len(self._keys) or self._keys[index] != key:
            return None
        if self._ok[index]:
            return index
        error = self._errors[index]
        if retry_errors or (error < len(ERROR_TYPES) and ERROR_TYPES[error] in NOT_DONE_ERRORS):
            return None
        return index

    def ok(self, index: int) -> bool:
        """Whether that earlier result was ok."""
        return bool(self._ok[index])

    def error_type(self, index: int) -> str | None:
        """The earlier result's error type (None when ok)."""
        code = self._errors[index]
        if code == _NO_ERROR:
            return None
        return ERROR_TYPES[code] if code < len(ERROR_TYPES) else "unknown"

    def carry(self, index: int, seq: int) -> None:
        """Keep that earlier result in this run's output, at input position ``seq``."""
        source, row = self._sources[index], self._rows[index]
        self.carried.selected[source][row] = 1
        if self._seqs[index] != seq:
            self.carried.moved[(source, row)] = seq


def recorded_cost(paths: Iterable[Path]) -> float:
    """USD recorded in ``cost_usd`` of earlier results files (files without the column count 0)."""
    total = 0.0
    for path in paths:
        if "cost_usd" not in pq.read_schema(path).names:
            continue
        file = pq.ParquetFile(path)
        for group in range(file.metadata.num_row_groups):
            column = file.read_row_group(group, columns=["cost_usd"], use_threads=False)
            total += float(pc.sum(column["cost_usd"]).as_py() or 0.0)
    return total


def resend_hint(errors_by_type: dict[str, int], rows_total: int) -> str | None:
    """How to send again the rows of the largest error class, when there are many of them."""
    if not errors_by_type:
        return None
    kind, count = max(errors_by_type.items(), key=lambda item: (item[1], item[0]))
    if count < HINT_MIN_ROWS and count * 2 < rows_total:
        return None
    if kind in NOT_DONE_ERRORS:
        return f"{count} rows failed with {kind}: run the same command again to send them again"
    return (
        f"{count} rows failed with {kind}: once the cause is fixed, "
        "run again with --retry-errors to send them again"
    )

"""Parquet/JSONL -> prompt rows, streamed in batches (never whole files).

``open_source`` picks the reader by file extension. Every reader offers the same
small surface (:class:`Source`): the columns it has, a preflight over the id
column (row count, null and duplicate ids), the Arrow types of kept columns, and
an iterator of row batches.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import InputError
from pipeline.sources.base import Preflight, Source
from pipeline.sources.jsonl import JsonlSource
from pipeline.sources.parquet import ParquetSource

__all__ = ["JsonlSource", "ParquetSource", "Preflight", "Source", "open_source"]


def open_source(
    path: Path,
    *,
    id_column: str | None,
    value_columns: list[str],
    keep_columns: list[str],
    batch_size: int = 2048,
) -> Source:
    """A reader for ``path``: ``.parquet``/``.pq`` or ``.jsonl``/``.ndjson``."""
    if not path.is_file():
        raise InputError(f"{path}: input file not found")
    suffix = path.suffix.lower()
    if suffix in {".parquet", ".pq"}:
        kind: type[Source] = ParquetSource
    elif suffix in {".jsonl", ".ndjson"}:
        kind = JsonlSource
    else:
        raise InputError(f"{path}: unsupported input type {suffix!r} (use .parquet or .jsonl)")
    return kind(
        path,
        id_column=id_column,
        value_columns=value_columns,
        keep_columns=keep_columns,
        batch_size=batch_size,
    )

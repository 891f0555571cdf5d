"""Parquet/JSONL (files, directories, globs) -> prompt rows, streamed in batches (never
whole files).

``open_source`` picks the reader by file extension; a directory, a glob, or a shard of
any input is read by ``DatasetSource`` (``dataset.py``: discovery, row numbering, shard
assignment). Every reader offers the same small surface (:class:`Source`): the columns
it has, a preflight over the id column (row count, null and duplicate ids), the Arrow
types of kept columns, and an iterator of row batches.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import InputError
from pipeline.sources.base import Preflight, Share, Source
from pipeline.sources.dataset import DatasetSource, Shard, Wanted, expand_input, is_many
from pipeline.sources.jsonl import JsonlSource
from pipeline.sources.parquet import ParquetSource

__all__ = [
    "DatasetSource",
    "JsonlSource",
    "ParquetSource",
    "Preflight",
    "Shard",
    "Share",
    "Source",
    "expand_input",
    "input_files",
    "open_source",
]


def input_files(path: Path) -> list[Path]:
    """The files an input names: itself, or those of a directory or glob."""
    return expand_input(path)[1]


def open_source(
    path: Path,
    *,
    id_column: str | None,
    value_columns: list[str],
    keep_columns: list[str],
    batch_size: int = 2048,
    shard: Shard | None = None,
) -> Source:
    """A reader for ``path``: a ``.parquet``/``.pq`` or ``.jsonl``/``.ndjson`` file, a
    directory or glob of them; only shard ``shard``'s rows when given."""
    if shard is not None or is_many(path):
        wanted = Wanted(id_column, value_columns, keep_columns, batch_size)
        return DatasetSource(path, wanted, shard)
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

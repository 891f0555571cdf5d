"""JSON Lines input: one object per line; a malformed line becomes a bad row, not a crash."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from pipeline.errors import InputError
from pipeline.records import PromptRow
from pipeline.sources.base import Source

_SNIFF_LINES = 1000
_ID_BATCH = 65536


_BOM = b"\xef\xbb\xbf"


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Non-blank lines with their 1-based line numbers; a UTF-8 byte-order mark at the start
    of the file is dropped (editors on Windows write one); a read error is an ``InputError``."""
    try:
        with path.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                stripped = line.strip()
                if number == 1 and stripped.startswith(_BOM):
                    stripped = stripped[len(_BOM) :].strip()
                if stripped:
                    yield number, stripped
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _parse(line: bytes) -> dict[str, Any] | str:
    """The line's object, or a description of what is wrong with it."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return f"not valid JSON ({exc.msg})"
    if not isinstance(value, dict):
        return "not a JSON object"
    return value


class JsonlSource(Source):
    """Streams a JSONL file line by line."""

    def _sample(self) -> list[dict[str, Any]]:
        sample: list[dict[str, Any]] = []
        for _, line in _lines(self.path):
            parsed = _parse(line)
            if isinstance(parsed, dict):
                sample.append(parsed)
            if len(sample) >= _SNIFF_LINES:
                break
        return sample

    def columns(self) -> list[str]:
        names: dict[str, None] = {}
        for record in self._sample():
            names.update(dict.fromkeys(record))
        return list(names)

    def keep_schema(self) -> pa.Schema:
        sample = self._sample()
        fields = []
        for name in self.keep_columns:
            try:
                kind = pa.array([record.get(name) for record in sample]).type
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                kind = pa.string()
            fields.append(pa.field(name, pa.string() if pa.types.is_null(kind) else kind))
        return pa.schema(fields)

    def is_empty(self) -> bool:
        return next(_lines(self.path), None) is None

    def count_rows(self) -> int:
        return sum(1 for _ in _lines(self.path))

    def id_batches(self) -> Iterator[list[object]]:
        batch: list[object] = []
        for _, value in self.id_records():
            batch.append(value)
            if len(batch) >= _ID_BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    def id_records(self) -> Iterator[tuple[str, object]]:
        assert self.id_column is not None
        for number, line in _lines(self.path):
            parsed = _parse(line)
            value = parsed.get(self.id_column) if isinstance(parsed, dict) else f"line:{number}"
            yield f"line {number}", value

    def batches(self, limit: int | None = None) -> Iterator[list[PromptRow]]:
        rows: list[PromptRow] = []
        for seq, (number, line) in enumerate(_lines(self.path)):
            if limit is not None and seq >= limit:
                break
            rows.append(self._row(seq, number, line))
            if len(rows) >= self.batch_size:
                yield rows
                rows = []
        if rows:
            yield rows

    def _row(self, seq: int, number: int, line: bytes) -> PromptRow:
        parsed = _parse(line)
        if isinstance(parsed, str):
            return PromptRow(seq=seq, id=f"line:{number}", values={}, problem=parsed, line=number)
        row_id = parsed.get(self.id_column) if self.id_column else seq
        return PromptRow(
            seq=seq,
            id=str(row_id),
            values={name: parsed.get(name) for name in self.value_columns},
            keep={name: parsed.get(name) for name in self.keep_columns},
            line=number,
        )

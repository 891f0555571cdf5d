"""JSON Lines input: one object per line; a malformed line becomes a bad row, not a crash."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from pipeline.records import PromptRow
from pipeline.sources.base import Source

_SNIFF_LINES = 1000
_ID_BATCH = 65536


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Non-blank lines with their 1-based line numbers."""
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            stripped = line.strip()
            if stripped:
                yield number, stripped


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
    """Streams a JSONL file line by line; a row is a non-blank line (row 0 the first)."""

    def _selected(self) -> Iterator[tuple[int, int, bytes]]:
        """``(row, line number, line)`` of the rows of the share, stopping past its last."""
        last = self.share.last_row()
        spans = self.share.spans
        for row, (number, line) in enumerate(_lines(self.path)):
            if last is not None and row >= last:
                return
            if spans is None or any(lo <= row and (hi is None or row < hi) for lo, hi in spans):
                yield row, number, line

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

    def count_rows(self) -> int:
        return sum(1 for _ in self._selected())

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
        for _, number, line in self._selected():
            parsed = _parse(line)
            value = parsed.get(self.id_column) if isinstance(parsed, dict) else self._bad_id(number)
            yield f"line {number}", value

    def batches(self, limit: int | None = None) -> Iterator[list[PromptRow]]:
        rows: list[PromptRow] = []
        for count, (row, number, line) in enumerate(self._selected()):
            if limit is not None and count >= limit:
                break
            rows.append(self._row(row, number, line))
            if len(rows) >= self.batch_size:
                yield rows
                rows = []
        if rows:
            yield rows

    def _bad_id(self, number: int) -> str:
        """The id of a line that is not a JSON object: ``line:N`` (prefixed in a many-file input)."""
        prefix = self.share.id_prefix
        return f"{prefix}:line:{number}" if prefix else f"line:{number}"

    def _row(self, row: int, number: int, line: bytes) -> PromptRow:
        parsed = _parse(line)
        seq = self.share.seq(row)
        if isinstance(parsed, str):
            return PromptRow(
                seq=seq, id=self._bad_id(number), values={}, problem=parsed, line=number
            )
        row_id = parsed.get(self.id_column) if self.id_column else self.share.default_id(row)
        return PromptRow(
            seq=seq,
            id=str(row_id),
            values={name: parsed.get(name) for name in self.value_columns},
            keep={name: parsed.get(name) for name in self.keep_columns},
            line=number,
        )

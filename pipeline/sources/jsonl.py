"""JSON Lines input: one object per line; a malformed line becomes a bad row, not a crash."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from pipeline.errors import InputError
from pipeline.records import PromptRow
from pipeline.sources.base import READ_BYTES, Preflight, Source

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


_EXACT_IN_DOUBLE = 2**53


class _Kind:
    """The narrowest Arrow type that holds every value of one kept column unchanged."""

    def __init__(self, column: str) -> None:
        self.column = column
        self.scalar: str | None = None  # "bool", "int", "float", "string", "nested"
        self.nested: pa.DataType | None = None
        self.big_int: str | None = None  # where an int a double cannot hold was seen
        self.float_at: str | None = None

    def add(self, value: object, where: str) -> None:
        """Fold one value in; raise ``InputError`` when no type holds it with the others."""
        if value is None:
            return
        kind = _scalar_kind(value)
        if kind == "int" and abs(value) >= _EXACT_IN_DOUBLE:  # type: ignore[arg-type]
            if abs(value) >= 2**63:  # type: ignore[arg-type]
                raise InputError(
                    f"{where}: column {self.column!r} holds an integer too large for int64; "
                    "write it as a string"
                )
            self.big_int = self.big_int or where
        if kind == "float":
            self.float_at = self.float_at or where
        if kind == "nested":
            self._add_nested(value, where)
        merged = _merge_kinds(self.scalar, kind)
        if merged is None:
            raise InputError(
                f"{where}: column {self.column!r} holds a {_NAMES[kind]} where earlier lines "
                f"hold {_NAMES[self.scalar or kind]}s; a kept column needs one type"
            )
        if merged == "float" and self.big_int is not None:
            where_big = self.big_int if self.float_at else where
            raise InputError(
                f"{where_big}: column {self.column!r} holds an integer too large for the "
                "floating-point type its other values need; write it as a string"
            )
        self.scalar = merged

    def _add_nested(self, value: object, where: str) -> None:
        try:
            kind = pa.array([value]).type
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            raise InputError(
                f"{where}: column {self.column!r} holds a value Arrow cannot type"
            ) from None
        if self.nested is not None and kind != self.nested:
            try:  # widen without changing a value: an empty list's item type, int to double
                kind = (
                    pa.unify_schemas(
                        [pa.schema([("v", self.nested)]), pa.schema([("v", kind)])],
                        promote_options="permissive",
                    )
                    .field("v")
                    .type
                )
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                raise InputError(
                    f"{where}: column {self.column!r} holds {kind} where earlier lines hold "
                    f"{self.nested}; a kept column needs one type"
                ) from None
        self.nested = kind

    def arrow(self) -> pa.DataType:
        """The column's Arrow type (string when every value was null or missing)."""
        if self.scalar == "nested" and self.nested is not None:
            return self.nested
        return _ARROW.get(self.scalar or "string", pa.string())


_NAMES = {
    "bool": "boolean",
    "int": "integer",
    "float": "number",
    "string": "string",
    "nested": "list or object",
}
_ARROW = {"bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(), "string": pa.string()}


def _scalar_kind(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    return "nested"


def _merge_kinds(seen: str | None, kind: str) -> str | None:
    """The kind holding both unchanged, or None (ints widen to floats; nothing else mixes)."""
    if seen is None or seen == kind:
        return kind
    if {seen, kind} == {"int", "float"}:
        return "float"
    return None


class JsonlSource(Source):
    """Streams a JSONL file line by line.

    Column names and the types of kept columns come from one pass over every line (not
    a sample): a kept column's type is widened where no value changes (ints with floats
    become float64), and values no single type can hold unchanged (a string among
    numbers, an int too large for a double among floats) are an ``InputError`` naming
    the line and the column, raised before anything is sent.
    """

    _scanned: tuple[list[str], pa.Schema] | None = None

    def _scan(self) -> tuple[list[str], pa.Schema]:
        """Every column name, and the kept columns' types, from one pass (cached)."""
        if self._scanned is None:
            names: dict[str, None] = {}
            kinds = {name: _Kind(name) for name in self.keep_columns}
            for number, line in _lines(self.path):
                parsed = _parse(line)
                if not isinstance(parsed, dict):
                    continue
                names.update(dict.fromkeys(parsed))
                for name, kind in kinds.items():
                    kind.add(parsed.get(name), f"{self.path}: line {number}")
            schema = pa.schema([pa.field(name, kinds[name].arrow()) for name in self.keep_columns])
            self._scanned = (list(names), schema)
        return self._scanned

    def columns(self) -> list[str]:
        return self._scan()[0]

    def keep_schema(self) -> pa.Schema:
        return self._scan()[1]

    def preflight(self, limit: int | None = None) -> Preflight:
        """As for every source, with the kept columns' types checked first (one pass)."""
        self._scan()
        return super().preflight(limit)

    def is_empty(self) -> bool:
        return next(_lines(self.path), None) is None

    def _selected(self) -> Iterator[tuple[int, int, bytes]]:
        """``(row, line number, line)`` of the rows of the share, stopping past its last."""
        last = self.share.last_row()
        spans = self.share.spans
        for row, (number, line) in enumerate(_lines(self.path)):
            if last is not None and row >= last:
                return
            if spans is None or any(lo <= row and (hi is None or row < hi) for lo, hi in spans):
                yield row, number, line

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
        size = 0
        for count, (row, number, line) in enumerate(self._selected()):
            if limit is not None and count >= limit:
                break
            rows.append(self._row(row, number, line))
            size += len(line)
            if len(rows) >= self.batch_size or size >= READ_BYTES:
                yield rows
                rows, size = [], 0
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

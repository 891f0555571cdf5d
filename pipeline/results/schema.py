"""The output's columns: the fixed schema, the optional columns, an outcome as Arrow values."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

SEQ = "_seq"
"""The input-position column of part files (dropped from the merged output)."""
_UTC = pa.timestamp("us", tz="UTC")

OUTPUT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("content", pa.string()),
        pa.field("finish_reason", pa.string()),
        pa.field("model", pa.string()),
        pa.field("prompt_tokens", pa.int64()),
        pa.field("completion_tokens", pa.int64()),
        pa.field("total_tokens", pa.int64()),
        pa.field("cached_tokens", pa.int64()),
        pa.field("reasoning_tokens", pa.int64()),
        pa.field("cost_usd", pa.float64()),
        pa.field("seed", pa.int64()),
        pa.field("attempts", pa.int32(), nullable=False),
        pa.field("possibly_billed_attempts", pa.int32()),
        pa.field("latency_ms", pa.float64()),
        pa.field("http_status", pa.int32()),
        pa.field("error_type", pa.string()),
        pa.field("error_message", pa.string()),
        pa.field("started_at", _UTC, nullable=False),
        pa.field("finished_at", _UTC, nullable=False),
        pa.field("request_hash", pa.string()),
        pa.field("system_fingerprint", pa.string()),
        pa.field("response_id", pa.string()),
        pa.field("cache_hit", pa.bool_()),
        pa.field("cached_cost_usd", pa.float64()),
    ]
)
"""The documented columns every output has, before the optional and kept input columns."""

OUTPUT_COLUMNS: tuple[str, ...] = tuple(OUTPUT_SCHEMA.names)

TOOL_CALL = pa.struct([("id", pa.string()), ("name", pa.string()), ("arguments", pa.string())])

OPTIONAL_COLUMNS: dict[str, pa.DataType] = {
    "choices": pa.list_(pa.string()),
    "tool_calls": pa.list_(TOOL_CALL),
    "ttft_ms": pa.float64(),
    "batch_id": pa.string(),
}
"""Columns present only when the job asks for them; their names are reserved either way."""

RESERVED_COLUMNS: tuple[str, ...] = OUTPUT_COLUMNS + tuple(OPTIONAL_COLUMNS)
"""Names a kept input column may not have."""


def output_schema(
    keep: pa.Schema, optional: Sequence[str] = (), extra: pa.Schema | None = None
) -> pa.Schema:
    """The output columns, the asked-for optional ones, the ``extra`` columns a capability
    adds (typed by it, e.g. ``parsed``), then the kept input columns."""
    unknown = sorted(set(optional) - OPTIONAL_COLUMNS.keys())
    if unknown:
        raise ValueError(f"not an optional output column: {unknown[0]!r}")
    schema = OUTPUT_SCHEMA
    for name, kind in OPTIONAL_COLUMNS.items():
        if name in optional:
            schema = schema.append(pa.field(name, kind))
    for field in extra or ():
        schema = schema.append(field)
    for field in keep:
        schema = schema.append(field.with_nullable(True))
    return schema


def cell(name: str, value: Any) -> Any:
    """An outcome value as Arrow takes it (tool calls become dicts, tuples lists)."""
    if value is None:
        return None
    if name == "tool_calls":
        return [dataclasses.asdict(call) for call in value]
    if name == "choices":
        return list(value)
    return value


def column_array(values: list[Any], kind: pa.DataType) -> pa.Array:
    """An Arrow array of ``kind``; a value that does not fit becomes null instead of failing."""
    try:
        return pa.array(values, type=kind)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        fitted = []
        for value in values:
            try:
                pa.array([value], type=kind)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                value = None
            fitted.append(value)
        return pa.array(fitted, type=kind)

"""Tests of the part-file writer and its merge into one Parquet output."""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import OutputError
from pipeline.records import USAGE_COLUMNS, Outcome, ToolCall, Usage
from pipeline.results import (
    OPTIONAL_COLUMNS,
    OUTPUT_COLUMNS,
    OUTPUT_SCHEMA,
    PartWriter,
    Piece,
    merge_pieces,
    output_schema,
)
from pipeline.results.merge import window_rows

T0 = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
KEEP = pa.schema([("product_id", pa.string()), ("stars", pa.int32()), ("price", pa.float64())])


def outcome(seq: int, **fields: Any) -> Outcome:
    ok = seq % 4 != 3
    defaults: dict[str, Any] = {
        "seq": seq,
        "id": f"r{seq:04d}",
        "status": "ok" if ok else "error",
        "started_at": T0 + timedelta(seconds=seq),
        "finished_at": T0 + timedelta(seconds=seq, milliseconds=250),
        "attempts": 1 if ok else 3,
        "seed": 1000 + seq,
        "request_hash": f"{seq:064x}",
        "content": f"answer {seq}" if ok else None,
        "finish_reason": "stop" if ok else None,
        "model": "gpt-4o-mini" if ok else None,
        "usage": Usage(10 + seq, 5, 15 + seq) if ok else Usage(),
        "latency_ms": 12.5,
        "http_status": 200 if ok else 503,
        "error_type": None if ok else "server_error",
        "error_message": None if ok else "HTTP 503: busy",
        "system_fingerprint": "fp_1" if ok else None,
        "response_id": f"chatcmpl-{seq}" if ok else None,
        "keep": {"product_id": f"P{seq % 3}", "stars": seq % 5, "price": seq / 2},
    }
    return Outcome(**{**defaults, **fields})


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name.endswith(".tmp"))


@pytest.fixture
def writer(tmp_path: Path) -> PartWriter:
    sink = PartWriter(tmp_path / "out" / "result.parquet", KEEP)
    sink.prepare()
    return sink


def test_output_schema_appends_nullable_keep_columns() -> None:
    keep = pa.schema([pa.field("sku", pa.string(), nullable=False), ("n", pa.int64())])
    schema = output_schema(keep)
    assert schema.names == [*OUTPUT_COLUMNS, "sku", "n"]
    assert schema.field("sku").nullable
    assert schema.field("sku").type == pa.string()


def test_output_columns_are_documented() -> None:
    assert dict(zip(OUTPUT_SCHEMA.names, OUTPUT_SCHEMA.types, strict=True)) == {
        "id": pa.string(),
        "status": pa.string(),
        "content": pa.string(),
        "finish_reason": pa.string(),
        "model": pa.string(),
        "prompt_tokens": pa.int64(),
        "completion_tokens": pa.int64(),
        "total_tokens": pa.int64(),
        "cached_tokens": pa.int64(),
        "reasoning_tokens": pa.int64(),
        "cost_usd": pa.float64(),
        "seed": pa.int64(),
        "attempts": pa.int32(),
        "possibly_billed_attempts": pa.int32(),
        "latency_ms": pa.float64(),
        "http_status": pa.int32(),
        "error_type": pa.string(),
        "error_message": pa.string(),
        "started_at": pa.timestamp("us", tz="UTC"),
        "finished_at": pa.timestamp("us", tz="UTC"),
        "request_hash": pa.string(),
        "system_fingerprint": pa.string(),
        "response_id": pa.string(),
        "cache_hit": pa.bool_(),
        "cached_cost_usd": pa.float64(),
    }
    assert {
        "choices": pa.list_(pa.string()),
        "tool_calls": pa.list_(
            pa.struct([("id", pa.string()), ("name", pa.string()), ("arguments", pa.string())])
        ),
        "ttft_ms": pa.float64(),
        "batch_id": pa.string(),
    } == OPTIONAL_COLUMNS


def test_out_of_order_parts_come_back_in_input_order(writer: PartWriter, tmp_path: Path) -> None:
    outcomes = [outcome(seq) for seq in range(23)]
    shuffled = outcomes[:]
    random.Random(7).shuffle(shuffled)
    for part in (shuffled[0:5], shuffled[5:6], shuffled[6:15], [], shuffled[15:]):
        writer.write_part(part)
    assert len(list(writer.parts_dir.glob("part-*.parquet"))) == 4
    assert leftovers(tmp_path) == []

    writer.finalize()

    table = pq.read_table(writer.output)
    assert table.schema.names == [*OUTPUT_COLUMNS, "product_id", "stars", "price"]
    assert table.schema.types == [*OUTPUT_SCHEMA.types, pa.string(), pa.int32(), pa.float64()]
    assert [f.nullable for f in table.schema][:2] == [False, False]
    assert table.num_rows == 23
    assert table.column("id").to_pylist() == [f"r{seq:04d}" for seq in range(23)]
    assert table.column("status").to_pylist()[:4] == ["ok", "ok", "ok", "error"]
    assert table.column("started_at").to_pylist() == [
        T0 + timedelta(seconds=seq) for seq in range(23)
    ]
    assert table.column("attempts").to_pylist()[3] == 3
    assert table.column("error_type").to_pylist()[3] == "server_error"
    assert table.column("content").to_pylist()[3] is None
    assert table.column("prompt_tokens").to_pylist()[:3] == [10, 11, 12]
    assert table.column("stars").to_pylist() == [seq % 5 for seq in range(23)]
    assert table.column("price").to_pylist()[5] == 2.5
    assert "_seq" not in table.schema.names

    assert not writer.parts_dir.exists()
    assert leftovers(tmp_path) == []
    assert sorted(p.name for p in writer.output.parent.iterdir()) == ["result.parquet"]


def test_rows_round_trip_exactly(writer: PartWriter) -> None:
    original = outcome(0, content="héllo ✓", latency_ms=0.125, http_status=200)
    writer.write_part([original])
    writer.finalize()

    (row,) = pq.read_table(writer.output).to_pylist()
    for name in OUTPUT_COLUMNS:
        source = original.usage if name in USAGE_COLUMNS else original
        assert row[name] == getattr(source, name), name
    assert {k: row[k] for k in KEEP.names} == original.keep


def test_value_that_does_not_fit_its_keep_type_becomes_null(writer: PartWriter) -> None:
    writer.write_part(
        [
            outcome(0, keep={"product_id": "P0", "stars": 4, "price": 1.0}),
            outcome(1, keep={"product_id": "P1", "stars": "five", "price": 2.0}),
            outcome(2, keep={"product_id": "P2", "stars": 2**40, "price": "cheap"}),
            outcome(3, keep={"product_id": "P3"}),
        ]
    )
    writer.finalize()

    table = pq.read_table(writer.output)
    assert table.column("stars").to_pylist() == [4, None, None, None]
    assert table.column("price").to_pylist() == [1.0, 2.0, None, None]
    assert table.column("product_id").to_pylist() == ["P0", "P1", "P2", "P3"]
    assert table.schema.field("stars").type == pa.int32()


def test_finalize_without_parts_writes_an_empty_file(writer: PartWriter) -> None:
    writer.finalize()

    table = pq.read_table(writer.output)
    assert table.num_rows == 0
    assert table.schema.types == [*OUTPUT_SCHEMA.types, *KEEP.types]
    assert not writer.parts_dir.exists()


def test_finalize_replaces_an_existing_output(writer: PartWriter) -> None:
    writer.output.write_bytes(b"old")
    writer.write_part([outcome(0)])
    writer.finalize()
    assert pq.read_table(writer.output).num_rows == 1


def test_prepare_keeps_earlier_parts_drops_temp_files_and_numbers_the_run(tmp_path: Path) -> None:
    output = tmp_path / "a" / "b" / "out.parquet"
    earlier = PartWriter(output, KEEP)
    earlier.prepare()
    earlier.write_part([outcome(0), outcome(1)])
    (earlier.parts_dir / "part-0001-000002.tmp").write_bytes(b"torn")

    sink = PartWriter(output, KEEP)
    sink.prepare()

    assert sink.run_number == 2
    assert leftovers(tmp_path) == []
    assert [p.name for p in sink.earlier_results()] == ["part-0001-000001.parquet"]
    assert sink.own_parts() == []


def test_prepare_fresh_clears_earlier_parts(tmp_path: Path) -> None:
    output = tmp_path / "out.parquet"
    earlier = PartWriter(output, KEEP)
    earlier.prepare()
    earlier.write_part([outcome(0)])

    sink = PartWriter(output, KEEP)
    sink.prepare(fresh=True)

    assert sink.run_number == 1
    assert list(sink.parts_dir.iterdir()) == []


def test_finalize_carries_selected_earlier_rows_to_their_new_positions(tmp_path: Path) -> None:
    output = tmp_path / "out.parquet"
    first = PartWriter(output, KEEP)
    first.prepare()
    first.write_part([outcome(seq) for seq in range(6)])
    first.finalize()

    second = PartWriter(output, KEEP)
    second.prepare()
    second.write_part([outcome(2, content="new"), outcome(6, content="added")])
    keep = bytearray([1, 1, 0, 1, 0, 1])  # rows 2 and 4 of the earlier output are not kept
    second.finalize([(output, keep, {5: 4})])  # earlier row 5 now sits at position 4

    table = pq.read_table(output)
    assert table["id"].to_pylist() == ["r0000", "r0001", "r0002", "r0003", "r0005", "r0006"]
    assert table["content"].to_pylist()[2] == "new"
    assert table["content"].to_pylist()[-1] == "added"


def test_prepare_under_a_regular_file_is_an_output_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("I am a file", encoding="utf-8")
    output = blocker / "out" / "result.parquet"

    with pytest.raises(OutputError) as info:
        PartWriter(output, KEEP).prepare()

    message = str(info.value)
    assert message.startswith(f"{output}: cannot write output: ")
    assert "\n" not in message


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores permissions")
def test_prepare_in_a_read_only_folder_is_an_output_error(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="cannot write output"):
            PartWriter(folder / "result.parquet", KEEP).prepare()
    finally:
        folder.chmod(0o700)


def test_table_is_sorted_by_seq(writer: PartWriter) -> None:
    table = writer.table([outcome(5), outcome(2), outcome(9)])
    assert table.column("_seq").to_pylist() == [2, 5, 9]
    assert table.column("id").to_pylist() == ["r0002", "r0005", "r0009"]


def test_merge_pieces_windows_reads_each_part_once_and_keeps_order(tmp_path: Path) -> None:
    writer = PartWriter(tmp_path / "out.parquet", KEEP)
    writer.prepare()
    order = list(range(97))
    chunks = [order[40:60], order[0:25], order[60:97], order[25:40]]
    for chunk in chunks:
        writer.write_part([outcome(seq) for seq in reversed(chunk)])
    pieces = [Piece(part) for part in writer.own_parts()]
    windows = list(merge_pieces(pieces, writer.table([outcome(0)]).schema, window=10))
    seqs = [s for table in windows for s in table["_seq"].to_pylist()]
    assert seqs == order
    assert all(table.num_rows <= 40 for table in windows)


def test_the_merge_window_holds_about_a_budget_of_bytes(tmp_path: Path) -> None:
    writer = PartWriter(tmp_path / "out.parquet", KEEP)
    writer.prepare()
    writer.write_part([outcome(seq) for seq in range(200)])
    pieces = [Piece(part) for part in writer.own_parts()]
    row_bytes = pq.ParquetFile(pieces[0].path).metadata.row_group(0).total_byte_size / 200
    assert window_rows(pieces, budget=int(row_bytes * 1000)) == 1000
    assert window_rows(pieces, budget=1) == 256  # the fewest
    assert window_rows(pieces, budget=1 << 40) == 4096  # the most


PARSED = pa.struct(
    [
        pa.field("label", pa.string(), nullable=False),
        pa.field("score", pa.float64()),
        pa.field(
            "tags", pa.list_(pa.field("element", pa.string(), nullable=False)), nullable=False
        ),
        pa.field("who", pa.struct([pa.field("name", pa.string()), pa.field("age", pa.int64())])),
    ]
)
EXTRA = pa.schema(
    [pa.field("parsed", PARSED), pa.field("json_attempts", pa.int32(), nullable=False)]
)


def test_without_extra_columns_the_schema_is_unchanged() -> None:
    assert (
        output_schema(KEEP)
        == output_schema(KEEP, extra=None)
        == output_schema(KEEP, extra=pa.schema([]))
    )
    assert output_schema(KEEP, extra=EXTRA).names == [
        *OUTPUT_COLUMNS,
        "parsed",
        "json_attempts",
        *KEEP.names,
    ]


def test_extra_struct_columns_survive_parts_and_the_windowed_merge(tmp_path: Path) -> None:
    writer = PartWriter(tmp_path / "out.parquet", KEEP, EXTRA)
    writer.prepare()

    def parsed(seq: int) -> dict[str, Any] | None:
        if seq % 4 == 3:
            return None
        who = None if seq % 5 == 0 else {"name": f"n{seq}", "age": seq if seq % 2 else None}
        return {
            "label": f"L{seq}",
            "score": seq / 4 if seq % 3 else None,
            "tags": ["a"] * (seq % 3),
            "who": who,
        }

    outcomes = [
        outcome(seq, extra={"parsed": parsed(seq), "json_attempts": 1 + seq % 3})
        for seq in range(30)
    ]
    shuffled = outcomes[:]
    random.Random(3).shuffle(shuffled)
    for start in range(0, 30, 7):
        writer.write_part(shuffled[start : start + 7])
    pieces = [Piece(part) for part in writer.own_parts()]
    for window in merge_pieces(pieces, writer.table(outcomes[:1]).schema, window=4):
        assert window.schema.field("parsed").type == PARSED
    writer.finalize()

    table = pq.read_table(writer.output)
    assert table.schema.field("parsed").type == PARSED
    assert table.schema.field("json_attempts").type == pa.int32()
    assert table.column("parsed").to_pylist() == [parsed(seq) for seq in range(30)]
    assert table.column("json_attempts").to_pylist() == [1 + seq % 3 for seq in range(30)]
    assert table.column("product_id").to_pylist()[:2] == ["P0", "P1"]


def test_optional_columns_come_between_the_output_and_keep_columns(tmp_path: Path) -> None:
    writer = PartWriter(
        tmp_path / "out.parquet", KEEP, optional=["ttft_ms", "choices", "tool_calls"]
    )
    writer.prepare()
    calls = (ToolCall("call_1", "get_weather", '{"city": "Oslo"}'), ToolCall(None, "f", None))
    writer.write_part(
        [
            outcome(0, choices=("a", None), tool_calls=calls, ttft_ms=3.5),
            outcome(1),
        ]
    )
    writer.finalize()

    table = pq.read_table(writer.output)
    assert table.schema.names == [*OUTPUT_COLUMNS, "choices", "tool_calls", "ttft_ms", *KEEP.names]
    rows = table.to_pylist()
    assert rows[0]["choices"] == ["a", None]
    assert rows[0]["tool_calls"] == [
        {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
        {"id": None, "name": "f", "arguments": None},
    ]
    assert rows[0]["ttft_ms"] == 3.5
    assert (rows[1]["choices"], rows[1]["tool_calls"], rows[1]["ttft_ms"]) == (None, None, None)


def test_plain_output_has_no_optional_columns() -> None:
    assert set(output_schema(KEEP).names).isdisjoint(OPTIONAL_COLUMNS)
    with pytest.raises(ValueError, match="not an optional output column: 'cost_usd'"):
        output_schema(KEEP, ["cost_usd"])


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths fsynced from now on, in order (named through /proc)."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("names open files by /proc")
    paths: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return paths


def test_finalize_puts_the_output_on_disk_before_it_takes_its_name(
    writer: PartWriter, synced: list[str]
) -> None:
    # the parts are deleted once the output is there: a power cut must not find a name
    # whose data never reached the disk
    writer.write_part([outcome(0), outcome(1)])

    writer.finalize()

    temp = str(writer.output.with_name(f".{writer.output.name}.tmp"))
    assert temp in synced
    assert str(writer.output.parent) in synced[synced.index(temp) :]
    assert pq.read_table(writer.output).num_rows == 2


def test_a_part_file_and_its_name_reach_the_disk(writer: PartWriter, synced: list[str]) -> None:
    writer.write_part([outcome(0)])

    (part,) = writer.own_parts()
    assert synced == [str(part.with_suffix(".tmp")), str(part.parent)]

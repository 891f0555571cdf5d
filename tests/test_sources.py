"""Tests of the Parquet and JSONL readers, on small files in ``tmp_path``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from pipeline.errors import InputError, UserError
from pipeline.records import PromptRow
from pipeline.sources import JsonlSource, ParquetSource, Source, open_source
from pipeline.sources.base import READ_BYTES
from tests.helpers import write_jsonl, write_parquet


def reviews(n: int) -> dict[str, list[Any]]:
    return {
        "review_id": [f"r{i}" for i in range(n)],
        "text": [f"review {i}" for i in range(n)],
        "stars": [i % 5 + 1 for i in range(n)],
        "product": [f"P{i % 3}" for i in range(n)],
    }


@pytest.fixture(params=["parquet", "jsonl"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make_input(tmp_path: Path, kind: str, columns: dict[str, list[Any]]) -> Path:
    if kind == "parquet":
        return write_parquet(tmp_path / "in.parquet", columns)
    names = list(columns)
    records = [
        dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)
    ]
    return write_jsonl(tmp_path / "in.jsonl", records)


def open_input(
    path: Path,
    *,
    id_column: str | None = "review_id",
    value_columns: list[str] | None = None,
    keep_columns: list[str] | None = None,
    batch_size: int = 3,
) -> Source:
    return open_source(
        path,
        id_column=id_column,
        value_columns=["text"] if value_columns is None else value_columns,
        keep_columns=[] if keep_columns is None else keep_columns,
        batch_size=batch_size,
    )


def all_rows(source: Source, limit: int | None = None) -> list[PromptRow]:
    return [row for batch in source.batches(limit) for row in batch]


# ---- both formats -----------------------------------------------------------------------


def test_open_source_picks_the_reader(tmp_path: Path, kind: str) -> None:
    source = open_input(make_input(tmp_path, kind, reviews(2)))
    assert isinstance(source, ParquetSource if kind == "parquet" else JsonlSource)


def test_batches_stream_in_order_with_seq(tmp_path: Path, kind: str) -> None:
    source = open_input(
        make_input(tmp_path, kind, reviews(10)), keep_columns=["product"], batch_size=3
    )

    batches = list(source.batches())

    assert [len(b) for b in batches] == [3, 3, 3, 1]
    rows = [row for batch in batches for row in batch]
    assert [r.seq for r in rows] == list(range(10))
    assert [r.id for r in rows] == [f"r{i}" for i in range(10)]
    assert [r.values for r in rows] == [{"text": f"review {i}"} for i in range(10)]
    assert [r.keep for r in rows] == [{"product": f"P{i % 3}"} for i in range(10)]
    assert all(r.problem is None for r in rows)


@pytest.mark.parametrize(("limit", "expected"), [(0, 0), (1, 1), (4, 4), (6, 6), (7, 7), (100, 7)])
def test_limit(tmp_path: Path, kind: str, limit: int, expected: int) -> None:
    source = open_input(make_input(tmp_path, kind, reviews(7)), batch_size=3)

    rows = all_rows(source, limit)

    assert [r.seq for r in rows] == list(range(expected))
    assert all(len(batch) > 0 for batch in source.batches(limit))
    assert source.preflight(limit).rows == expected


def test_preflight_counts_rows(tmp_path: Path, kind: str) -> None:
    source = open_input(make_input(tmp_path, kind, reviews(9)))
    assert source.preflight().rows == 9
    assert open_input(make_input(tmp_path, kind, reviews(9)), id_column=None).preflight().rows == 9


def test_id_defaults_to_row_number(tmp_path: Path, kind: str) -> None:
    source = open_input(make_input(tmp_path, kind, reviews(5)), id_column=None, batch_size=2)
    assert [r.id for r in all_rows(source)] == ["0", "1", "2", "3", "4"]


def test_non_string_ids_become_strings(tmp_path: Path, kind: str) -> None:
    columns = reviews(3)
    columns["review_id"] = [10, 20, 30]
    source = open_input(make_input(tmp_path, kind, columns))
    assert [r.id for r in all_rows(source)] == ["10", "20", "30"]


def test_several_value_columns(tmp_path: Path, kind: str) -> None:
    source = open_input(
        make_input(tmp_path, kind, reviews(2)), value_columns=["text", "stars", "text"]
    )
    assert [r.values for r in all_rows(source)] == [
        {"text": "review 0", "stars": 1},
        {"text": "review 1", "stars": 2},
    ]


@pytest.mark.parametrize(
    ("option", "column"),
    [("id_column", "ident"), ("value_columns", "prompt"), ("keep_columns", "sku")],
)
def test_missing_column_names_the_column(
    tmp_path: Path, kind: str, option: str, column: str
) -> None:
    path = make_input(tmp_path, kind, reviews(3))
    source = open_input(path, **{option: column if option == "id_column" else [column]})

    with pytest.raises(InputError) as info:
        source.preflight()

    message = str(info.value)
    assert f"column {column!r} not found" in message
    assert str(path) in message
    assert "review_id" in message  # lists the columns it has
    assert "\n" not in message


def test_duplicate_id_names_the_row(tmp_path: Path, kind: str) -> None:
    columns = reviews(5)
    columns["review_id"] = ["a", "b", "c", "b", "e"]
    source = open_input(make_input(tmp_path, kind, columns))

    where = "row 3" if kind == "parquet" else "line 4"
    with pytest.raises(InputError, match=rf"{where}: duplicate id 'b' in column 'review_id'"):
        source.preflight()


def test_null_id_names_the_row(tmp_path: Path, kind: str) -> None:
    columns = reviews(4)
    columns["review_id"] = ["a", "b", None, "d"]
    source = open_input(make_input(tmp_path, kind, columns))

    where = "row 2" if kind == "parquet" else "line 3"
    with pytest.raises(InputError, match=rf"{where}: id column 'review_id' is null"):
        source.preflight()


def test_duplicate_beyond_limit_is_not_checked(tmp_path: Path, kind: str) -> None:
    columns = reviews(5)
    columns["review_id"] = ["a", "b", "c", "d", "a"]
    source = open_input(make_input(tmp_path, kind, columns))
    assert source.preflight(limit=4).rows == 4


def test_input_errors_are_user_errors() -> None:
    assert issubclass(InputError, UserError)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.parquet"
    with pytest.raises(InputError, match="input file not found") as info:
        open_input(path)
    assert str(path) in str(info.value)


def test_directory_without_inputs(tmp_path: Path) -> None:
    path = tmp_path / "dir.jsonl"
    path.mkdir()
    (path / "notes.txt").write_text("")
    with pytest.raises(InputError, match=r"dir\.jsonl: no \.parquet or \.jsonl files found"):
        open_input(path)
    with pytest.raises(InputError, match=r"no \.parquet or \.jsonl files found"):
        open_input(tmp_path / "*.parquet")


@pytest.mark.parametrize("name", ["in.csv", "in.json", "in", "in.parquet.gz"])
def test_unsupported_extension(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("review_id,text\n1,x\n", encoding="utf-8")
    with pytest.raises(InputError, match="unsupported input type") as info:
        open_input(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("name", ["in.PQ", "in.Parquet"])
def test_extension_is_case_insensitive(tmp_path: Path, name: str) -> None:
    path = write_parquet(tmp_path / name, reviews(2))
    assert isinstance(open_input(path), ParquetSource)


# ---- Parquet ----------------------------------------------------------------------------


def test_parquet_that_is_not_parquet(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    path.write_bytes(b"this is not parquet at all")
    with pytest.raises(InputError, match="not a readable Parquet file"):
        open_input(path)


def test_parquet_keep_schema_types(tmp_path: Path) -> None:
    schema = pa.schema(
        [
            ("review_id", pa.string()),
            ("text", pa.string()),
            ("stars", pa.int32()),
            ("price", pa.float64()),
            ("when", pa.timestamp("ms", tz="UTC")),
            ("tags", pa.list_(pa.string())),
        ]
    )
    columns = {
        "review_id": ["a"],
        "text": ["t"],
        "stars": [5],
        "price": [9.5],
        "when": [0],
        "tags": [["x", "y"]],
    }
    path = write_parquet(tmp_path / "in.parquet", columns, schema)
    source = open_input(path, keep_columns=["tags", "stars", "price", "when"])

    keep = source.keep_schema()

    assert keep.names == ["tags", "stars", "price", "when"]
    assert keep.types == [
        pa.list_(pa.string()),
        pa.int32(),
        pa.float64(),
        pa.timestamp("ms", tz="UTC"),
    ]
    (row,) = all_rows(source)
    assert row.keep["tags"] == ["x", "y"]
    assert row.keep["stars"] == 5


def test_parquet_columns(tmp_path: Path) -> None:
    source = open_input(write_parquet(tmp_path / "in.parquet", reviews(1)))
    assert source.columns() == ["review_id", "text", "stars", "product"]


def test_parquet_batches_across_row_groups(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "in.parquet", reviews(11))  # row groups of 4
    source = open_input(path, batch_size=5)
    assert [r.seq for r in all_rows(source)] == list(range(11))
    assert [r.id for r in all_rows(source, limit=9)] == [f"r{i}" for i in range(9)]


def test_parquet_id_column_can_also_be_a_value(tmp_path: Path) -> None:
    source = open_input(
        write_parquet(tmp_path / "in.parquet", reviews(2)), value_columns=["review_id", "text"]
    )
    assert [(r.id, r.values["review_id"]) for r in all_rows(source)] == [("r0", "r0"), ("r1", "r1")]


# ---- JSONL ------------------------------------------------------------------------------


def test_jsonl_malformed_line_becomes_a_row_with_a_problem(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"review_id": "a", "text": "fine"},
            '{"review_id": "b", "text": ',
            "[1, 2, 3]",
            {"review_id": "d", "text": "also fine"},
        ],
    )
    source = open_input(path)

    rows = all_rows(source)

    assert [r.seq for r in rows] == [0, 1, 2, 3]
    assert [r.line for r in rows] == [1, 2, 3, 4]
    assert rows[0].problem is None
    assert rows[1].problem is not None
    assert rows[1].problem.startswith("not valid JSON")
    assert rows[1].values == {}
    assert rows[2].problem == "not a JSON object"
    assert rows[3].id == "d"
    assert rows[3].problem is None
    assert rows[1].where(str(path)) == f"{path}: line 2"
    # the preflight does not stop on a bad line either
    assert source.preflight().rows == 4


def test_jsonl_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(
        '\n{"review_id": "a", "text": "x"}\n\n   \n{"review_id": "b", "text": "y"}\n\t\n',
        encoding="utf-8",
    )
    source = open_input(path)

    rows = all_rows(source)

    assert [(r.seq, r.id, r.line) for r in rows] == [(0, "a", 2), (1, "b", 5)]
    assert source.preflight().rows == 2
    assert open_input(path, id_column=None).preflight().rows == 2


def test_jsonl_without_trailing_newline_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"review_id": "a", "text": "x"}\r\n{"review_id": "b", "text": "y"}')
    assert [(r.id, r.values["text"]) for r in all_rows(open_input(path))] == [
        ("a", "x"),
        ("b", "y"),
    ]


def test_jsonl_missing_value_is_none(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"review_id": "a", "text": "x"}, {"review_id": "b"}])
    rows = all_rows(open_input(path, keep_columns=["text"]))
    assert rows[1].values == {"text": None}
    assert rows[1].keep == {"text": None}


def test_jsonl_missing_id_is_a_null_id(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"review_id": "a", "text": "x"}, {"text": "y"}])
    with pytest.raises(InputError, match=r"line 2: id column 'review_id' is null"):
        open_input(path).preflight()


def test_jsonl_keep_schema_types(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {
                "review_id": "a",
                "text": "x",
                "stars": 5,
                "price": 1.5,
                "ok": True,
                "tags": ["u"],
                "meta": None,
                "mixed": 1,
            },
            {
                "review_id": "b",
                "text": "y",
                "stars": 3,
                "price": 2,
                "ok": False,
                "tags": [],
                "meta": None,
                "mixed": "one",
            },
        ],
    )
    keep = ["stars", "price", "ok", "tags", "meta", "absent"]

    schema = open_input(path, keep_columns=keep).keep_schema()

    assert schema.names == keep
    assert schema.types == [
        pa.int64(),
        pa.float64(),
        pa.bool_(),
        pa.list_(pa.string()),
        pa.string(),  # all null: string
        pa.string(),  # never seen: string
    ]
    # an int and a string in one column: no type holds both unchanged
    with pytest.raises(InputError, match=r"line 2: column 'mixed' holds a string"):
        open_input(path, keep_columns=[*keep, "mixed"]).keep_schema()


def test_jsonl_columns_are_the_union_of_keys(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"a": 1}, "garbage", {"b": 2, "a": 3}])
    source = open_input(path, id_column=None, value_columns=["b"])
    assert source.columns() == ["a", "b"]
    source.check_columns()


def test_jsonl_byte_order_mark_is_not_part_of_line_1(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": "a", "text": "x"}\n{"id": "b", "text": "y"}\n')
    source = JsonlSource(
        path, id_column="id", value_columns=["text"], keep_columns=[], batch_size=10
    )
    assert source.preflight().rows == 2
    rows = [row for batch in source.batches() for row in batch]
    assert [(r.id, r.problem, r.values) for r in rows] == [
        ("a", None, {"text": "x"}),
        ("b", None, {"text": "y"}),
    ]


def test_wide_rows_come_in_batches_of_about_read_bytes(tmp_path: Path, kind: str) -> None:
    # 600 rows of 8 KB: 2,048 a batch would hold 16 MB; about 1 MB a batch holds 128
    wide = {"review_id": [f"r{i}" for i in range(600)], "text": ["x" * 8192] * 600}
    source = open_input(make_input(tmp_path, kind, wide), batch_size=2048)

    batches = list(source.batches())

    assert sum(len(b) for b in batches) == 600
    assert [r.seq for b in batches for r in b] == list(range(600))
    assert len(batches) >= 4
    assert all(len(b) * 8192 <= 2 * READ_BYTES for b in batches)


def test_narrow_rows_still_come_batch_size_at_a_time(tmp_path: Path, kind: str) -> None:
    source = open_input(make_input(tmp_path, kind, reviews(50)), batch_size=20)
    assert [len(b) for b in source.batches()] == [20, 20, 10]


def test_rows_per_batch_is_bounded_both_ways(tmp_path: Path) -> None:
    source = open_input(make_input(tmp_path, "parquet", reviews(3)), batch_size=100)
    assert source.rows_per_batch(0) == 100
    assert source.rows_per_batch(READ_BYTES / 10) == 10
    assert source.rows_per_batch(READ_BYTES * 50) == 1

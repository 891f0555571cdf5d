"""Sharded runs (``--shard I/N``) and ``pipeline merge``, end to end against the fake server;
many-file inputs; the shard assignment as a property."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.cli import EXIT_SHARDS_MISSING, main
from pipeline.engines import merge_shards
from pipeline.results import shard_output
from pipeline.runner.plan import shared_limits
from pipeline.sources import Shard, open_source
from pipeline.sources.dataset import Unit, assign
from pipeline.spec import JobSpec
from tests.helpers import make_job, write_job, write_jsonl, write_parquet

COMPARED = ["id", "status", "content", "request_hash", "seed", "prompt_tokens", "product_id"]


def _dataset(root: Path, files: int = 3, rows: int = 10) -> Path:
    """``files`` Parquet files of ``rows`` rows (row groups of 4), no id column."""
    root.mkdir()
    for f in range(files):
        write_parquet(
            root / f"part-{f}.parquet",
            {
                "text": [f"file {f} row {i}: a review" for i in range(rows)],
                "product_id": [f"P{f}-{i}" for i in range(rows)],
            },
        )
    (root / "_SUCCESS").write_text("")
    return root


def _job(tmp_path: Path, source: Path, out: Path, **sections: dict[str, object]) -> Path:
    job = make_job(source, "fake", out, **sections)
    del job["input"]["id_column"]
    return write_job(tmp_path, job, name=f"job-{out.stem}.toml")


def _shards(job: Path, count: int, *extra: str) -> None:
    for index in range(count):
        assert main(["run", str(job), "--shard", f"{index}/{count}", *extra]) == 0


def test_four_shards_then_merge_equal_one_process(tmp_path: Path) -> None:
    source = _dataset(tmp_path / "in")
    single, merged = tmp_path / "single.parquet", tmp_path / "merged.parquet"
    assert main(["run", str(_job(tmp_path, source, single))]) == 0
    job = _job(tmp_path, source, merged)
    _shards(job, 4)
    assert main(["merge", str(job)]) == 0
    one, many = pl.read_parquet(single), pl.read_parquet(merged)
    assert one.height == 30
    assert one.select(COMPARED).equals(many.select(COMPARED))
    assert one["id"][:2].to_list() == ["part-0.parquet:0", "part-0.parquet:1"]
    assert "_seq" not in many.columns
    manifest = json.loads((tmp_path / "merged.manifest.json").read_text())
    assert [s["shard"] for s in manifest["extra"]["shards"]] == [f"{i}-of-4" for i in range(4)]
    assert manifest["complete"]
    assert manifest["rows_by_status"]["ok"] == 30
    # the merged output counts as complete for the job: a plain run sends nothing
    assert main(["run", str(job), "--output", str(merged)]) == 0


def test_validate_counts_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = _job(tmp_path, _dataset(tmp_path / "in"), tmp_path / "o.parquet")
    assert main(["validate", str(job)]) == 0
    assert "ok: 30 rows from" in capsys.readouterr().out


def test_shard_reads_only_its_row_groups(tmp_path: Path) -> None:
    source = _dataset(tmp_path / "in", files=2, rows=8)  # 2 files x 2 row groups
    reader = open_source(
        source, id_column=None, value_columns=["text"], keep_columns=[], shard=Shard(1, 4)
    )
    rows = [row for batch in reader.batches() for row in batch]
    assert [row.id for row in rows] == [f"part-0.parquet:{i}" for i in range(4, 8)]
    assert reader.count_rows() == 4


def test_jsonl_glob_with_fewer_units_than_shards_is_cut_in_rows(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    path = write_jsonl(
        tmp_path / "in" / "in.jsonl",
        [{"review_id": f"r{i}", "text": f"row {i}", "product_id": "p"} for i in range(10)],
    )
    single, merged = tmp_path / "single.parquet", tmp_path / "merged.parquet"
    assert main(["run", str(write_job(tmp_path, make_job(path, "fake", single), "a.toml"))]) == 0
    job = write_job(tmp_path, make_job(tmp_path / "in" / "*.jsonl", "fake", merged), "b.toml")
    _shards(job, 3)
    assert main(["merge", str(job)]) == 0
    one, many = pl.read_parquet(single), pl.read_parquet(merged)
    assert one.select(COMPARED).equals(many.select(COMPARED))


def test_merge_with_a_shard_missing_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _dataset(tmp_path / "in")
    out = tmp_path / "out.parquet"
    job = _job(tmp_path, source, out)
    for index in (0, 2):
        assert main(["run", str(job), "--shard", f"{index}/3"]) == 0
    capsys.readouterr()
    assert main(["merge", str(job)]) == EXIT_SHARDS_MISSING
    err = capsys.readouterr().err
    assert "1-of-3 (no results)" in err
    assert "2 of 3" not in err
    assert not out.exists()
    assert not (tmp_path / "out.manifest.json").exists()
    assert main(["merge", str(tmp_path / "job-other.toml")]) == 2  # no such job file


def test_shard_run_twice_or_rerun_keeps_each_row_once(tmp_path: Path) -> None:
    source = _dataset(tmp_path / "in")
    out = tmp_path / "out.parquet"
    job = _job(tmp_path, source, out)
    _shards(job, 2)
    assert main(["run", str(job), "--shard", "1/2"]) == 0  # already complete: skipped
    assert main(["run", str(job), "--shard", "0/2", "--force"]) == 0  # reuses its results
    # a shard whose output was lost runs again, alone
    part = shard_output(out, "1-of-2")
    part.unlink()
    assert main(["run", str(job), "--shard", "1/2"]) == 0
    result = merge_shards(job, out)
    frame = pl.read_parquet(out)
    assert frame.height == 30
    assert frame["id"].n_unique() == 30
    assert result.shards == ["0-of-2", "1-of-2"]


def test_shards_take_their_share_of_the_limits(tmp_path: Path) -> None:
    job = JobSpec.model_validate(
        make_job(
            tmp_path / "x.parquet",
            "fake",
            tmp_path / "o.parquet",
            limits={"requests_per_minute": 600, "tokens_per_minute": 100_000, "max_cost_usd": 2.0},
        )
    )
    part = shared_limits(job, 1 / 4).limits
    assert (part.requests_per_minute, part.tokens_per_minute) == (150, 25_000)
    assert part.max_cost_usd == pytest.approx(0.5)
    assert part.concurrency == job.limits.concurrency


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shard", "4/4"], "0 <= I < N"),
        (["--shard", "x"], "expected I/N"),
        (["--shard", "0/2", "--limit", "3"], "--limit cannot be combined with --shard"),
        (["--shard", "0/2", "--rate-share", "2"], "at most 1"),
        (["--workers", "2"], "--workers and --address go with --engine ray"),
        (["--engine", "ray", "--shard", "0/2"], "--shard and --engine ray do not combine"),
    ],
)
def test_bad_shard_flags_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    job = _job(tmp_path, _dataset(tmp_path / "in"), tmp_path / "o.parquet")
    try:
        code = main(["run", str(job), *args])
    except SystemExit as exc:  # argparse's own errors
        code = int(str(exc.code))
    assert code == 2
    assert message in capsys.readouterr().err


@given(
    sizes=st.lists(st.integers(min_value=0, max_value=9), min_size=1, max_size=6),
    count=st.integers(min_value=1, max_value=8),
)
def test_every_row_goes_to_exactly_one_shard(sizes: list[int], count: int) -> None:
    units, start = [], 0
    for size in sizes:
        units.append(Unit(0, start, start + size))
        start += size
    rows: list[int] = []
    for index in range(count):
        for unit in assign(units, Shard(index, count)):
            assert unit.stop is not None
            rows.extend(range(unit.start, unit.stop))
    assert sorted(rows) == list(range(start))


def test_many_file_ids_are_relative_to_the_input_and_positions_global(tmp_path: Path) -> None:
    root = tmp_path / "in"
    (root / "day=02").mkdir(parents=True)
    (root / "day=01").mkdir()
    write_parquet(root / "day=02" / "a.parquet", {"text": ["x", "y"]})
    write_jsonl(root / "day=01" / "b.jsonl", [{"text": "z"}, "not json"])
    (root / ".hidden.parquet").write_text("")
    for path in (root, tmp_path / "in" / "day=*" / "*.*"):
        reader = open_source(path, id_column=None, value_columns=["text"], keep_columns=[])
        rows = [row for batch in reader.batches() for row in batch]
        assert [row.id for row in rows] == [
            "day=01/b.jsonl:0",
            "day=01/b.jsonl:line:2",
            "day=02/a.parquet:0",
            "day=02/a.parquet:1",
        ]
        assert [row.seq for row in rows] == [0, 1, 1 << 32, (1 << 32) + 1]


def test_more_shards_than_rows_leaves_some_empty(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    path = write_jsonl(
        tmp_path / "in" / "in.jsonl",
        [{"review_id": f"r{i}", "text": f"row {i}", "product_id": "p"} for i in range(2)],
    )
    out = tmp_path / "out.parquet"
    job = write_job(tmp_path, make_job(path, "fake", out))
    _shards(job, 4)
    assert main(["merge", str(job)]) == 0
    assert pl.read_parquet(out)["id"].to_list() == ["r0", "r1"]

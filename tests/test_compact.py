"""Compaction of part files as a run goes: every row exactly once, whatever the moment of
a crash, and a resumed run reuses what compacted files hold."""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from pathlib import Path

import anyio
import polars as pl
import pyarrow.parquet as pq
import pytest

import pipeline.results.parts as parts_module
import pipeline.runner.run as run_module
from pipeline.cli import main
from pipeline.results import DoneIndex, PartWriter, read_results
from pipeline.results.compact import Span, compact, live_parts, split_parts
from pipeline.runner import Runner, plan_run
from pipeline.spec import load_job
from tests.helpers import FakeFactory, make_job, write_job
from tests.test_results import KEEP, outcome


@pytest.fixture
def small_levels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compact every 4 parts as written and every 3 compacted files (instead of 64 and 16)."""
    monkeypatch.setattr(parts_module, "COMPACT_FIRST", 4)
    monkeypatch.setattr(parts_module, "COMPACT_NEXT", 3)


def _writer(output: Path) -> PartWriter:
    writer = PartWriter(output, KEEP)
    writer.prepare()
    return writer


def _write_shuffled(writer: PartWriter, rows: int, per_part: int, *, compact_as_due: bool) -> None:
    """``rows`` outcomes, nearly in order as a concurrent run finishes them, in parts."""
    order = list(range(rows))
    rng = random.Random(3)
    for i in range(0, rows - 8, 8):  # stragglers: each row a few positions away
        window = order[i : i + 8]
        rng.shuffle(window)
        order[i : i + 8] = window
    order.append(order.pop(5))  # one very late row
    for start in range(0, rows, per_part):
        writer.write_part([outcome(seq) for seq in order[start : start + per_part]])
        while compact_as_due and (due := writer.compaction_due()) is not None:
            writer.compact(*due)


def test_span_names_round_trip() -> None:
    assert Span.of(Path("part-0002-000017.parquet")) == Span(2, 17, 17)
    assert Span.of(Path("part-0002-000001-000064.parquet")) == Span(2, 1, 64)
    assert Span(2, 1, 64).name() == "part-0002-000001-000064.parquet"
    assert Span.of(Path("part-0002-000017.tmp")) is None
    assert Span.of(Path("earlier-000001.parquet")) is None
    assert Span(2, 5, 5).within(Span(2, 1, 64))
    assert not Span(3, 5, 5).within(Span(2, 1, 64))
    assert not Span(2, 1, 64).within(Span(2, 1, 64))


def test_compaction_keeps_every_row_exactly_once_in_order(
    tmp_path: Path, small_levels: None
) -> None:
    writer = _writer(tmp_path / "out.parquet")
    _write_shuffled(writer, rows=300, per_part=5, compact_as_due=True)  # 60 parts written

    files = sorted(p.name for p in writer.parts_dir.iterdir())
    assert len(files) <= 4 + 3 + 3  # at most a level's worth of files at each level
    assert any(Span.of(Path(name)).lo < Span.of(Path(name)).hi for name in files)  # type: ignore[union-attr]
    assert read_results(writer.output)["id"].sort().to_list() == [f"r{i:04d}" for i in range(300)]

    writer.finalize()
    table = pq.read_table(writer.output)
    assert table.column("id").to_pylist() == [f"r{i:04d}" for i in range(300)]
    assert table.column("stars").to_pylist() == [i % 5 for i in range(300)]
    assert not writer.parts_dir.exists()


def test_compacted_output_is_identical_to_the_uncompacted_one(
    tmp_path: Path, small_levels: None
) -> None:
    plain = _writer(tmp_path / "a" / "out.parquet")
    _write_shuffled(plain, rows=120, per_part=7, compact_as_due=False)
    compacted = _writer(tmp_path / "b" / "out.parquet")
    _write_shuffled(compacted, rows=120, per_part=7, compact_as_due=True)
    plain.finalize()
    compacted.finalize()
    assert pq.read_table(plain.output).equals(pq.read_table(compacted.output))


def test_crash_after_the_compacted_file_before_deleting_the_old_ones(tmp_path: Path) -> None:
    writer = _writer(tmp_path / "out.parquet")
    _write_shuffled(writer, rows=40, per_part=5, compact_as_due=False)
    old = live_parts(writer.parts_dir)
    saved = tmp_path / "saved"
    shutil.copytree(writer.parts_dir, saved)
    merged = compact(old[:6], writer._part_schema)
    for path in old[:6]:  # the crash: the old files are still there beside the new one
        shutil.copy(saved / path.name, path)

    live, superseded = split_parts(list(writer.parts_dir.glob("*.parquet")))
    assert merged in live
    assert sorted(superseded) == sorted(old[:6])
    assert read_results(writer.output)["id"].sort().to_list() == [f"r{i:04d}" for i in range(40)]

    resumed = _writer(writer.output)  # the next run removes what the new file replaced
    assert sorted(resumed.parts_dir.glob("*.parquet")) == sorted([merged, *old[6:]])
    earlier = resumed.earlier_results()
    index = DoneIndex.load(earlier)
    assert len(index) == 40
    assert sum(pq.ParquetFile(path).metadata.num_rows for path in earlier) == 40


def test_crash_before_the_compacted_file_appears_keeps_the_old_ones(tmp_path: Path) -> None:
    writer = _writer(tmp_path / "out.parquet")
    _write_shuffled(writer, rows=40, per_part=5, compact_as_due=False)
    old = live_parts(writer.parts_dir)
    torn = writer.parts_dir / Span(1, 1, 6).name()
    torn.with_suffix(".tmp").write_bytes(b"half a parquet file")  # the crash mid-write

    resumed = _writer(writer.output)
    assert resumed.earlier_results() == old
    assert not list(resumed.parts_dir.glob("*.tmp"))


def test_a_resumed_run_reuses_the_rows_of_compacted_parts(
    tmp_path: Path,
    fake_server: FakeFactory,
    reviews: Callable[[int], Path],
    small_levels: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(run_module, "FLUSH_ROWS", 3)
    server = fake_server()
    out = tmp_path / "out.parquet"
    job_path = write_job(tmp_path, make_job(reviews(120), server.base_url, out))
    job = load_job(job_path)
    # the first run stops before its merge (as if killed then): its parts stay, compacted
    runner = Runner(plan_run(job), api_key=None, base_url=server.base_url, merge=False)
    summary = anyio.run(runner.run)
    assert summary.rows_total == 120
    parts = list(runner.writer.parts_dir.glob("*.parquet"))
    assert len(parts) < 120 // 3  # some were compacted
    assert any(Span.of(p).lo < Span.of(p).hi for p in parts)  # type: ignore[union-attr]
    received = server.stats.received

    assert main(["run", str(job_path)]) == 0

    assert server.stats.received == received  # every row reused, none sent again
    output = pl.read_parquet(out)
    assert output["id"].to_list() == [f"r{i:06d}" for i in range(120)]
    assert not list(tmp_path.glob("out.parquet.earlier/*.parquet"))  # nothing left over

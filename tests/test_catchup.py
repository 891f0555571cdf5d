"""``pipeline run JOB --catch-up``: earlier unfinished ``{date}`` outputs first, oldest first."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pytest

from pipeline.cli import main
from pipeline.manifest import read_history
from pipeline.runner.catchup import unfinished_days
from pipeline.spec import load_job
from tests.helpers import FakeFactory, make_job, write_job

ROWS = 24


def test_catch_up_resumes_unfinished_nights_oldest_first_then_today(
    tmp_path: Path,
    fake_server: FakeFactory,
    reviews: Callable[[int], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = fake_server()
    out = tmp_path / "out" / "{date}.parquet"
    source = reviews(ROWS)
    tight = write_job(
        tmp_path,
        make_job(source, server.base_url, out, limits={"max_cost_usd": 0.0002, "concurrency": 2}),
        "tight.toml",
    )
    job = write_job(tmp_path, make_job(source, server.base_url, out), "job.toml")
    night = tmp_path / "out"
    assert main(["run", str(tight), "--date", "2026-01-03"]) == 6  # stopped by its budget
    assert main(["run", str(tight), "--date", "2026-01-01"]) == 6
    (night / "2026-01-03.manifest.json").unlink()  # killed before it wrote a manifest
    (night / "2026-01-03.runs.jsonl").unlink()
    assert main(["run", str(job), "--date", "2026-01-02"]) == 0  # a night that finished
    today = datetime.now(UTC).date()
    assert unfinished_days(load_job(job), today) == [date(2026, 1, 1), date(2026, 1, 3)]
    capsys.readouterr()

    assert main(["run", str(job), "--catch-up"]) == 0

    said = [line for line in capsys.readouterr().err.splitlines() if "ing " in line]
    assert said[:3] == [
        "catching up 2026-01-01",
        "catching up 2026-01-03",
        f"running {today.isoformat()}",
    ]
    for day in ["2026-01-01", "2026-01-02", "2026-01-03", today.isoformat()]:
        frame = pl.read_parquet(night / f"{day}.parquet")
        assert (frame.height, frame["id"].n_unique()) == (ROWS, ROWS), day
    assert len(read_history(night / "2026-01-02.parquet")) == 1  # finished: left alone
    assert unfinished_days(load_job(job), today) == []
    # each night's rows were paid once: one answer per (night, row) at most
    assert server.stats.received == 4 * ROWS


def test_catch_up_needs_a_date_in_the_output_path(
    tmp_path: Path,
    fake_server: FakeFactory,
    reviews: Callable[[int], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = fake_server()
    job = write_job(tmp_path, make_job(reviews(3), server.base_url, tmp_path / "o.parquet"))
    assert main(["run", str(job), "--catch-up"]) == 2
    assert "--catch-up needs an [output] path with {date}" in capsys.readouterr().err
    dated = write_job(
        tmp_path, make_job(reviews(3), server.base_url, tmp_path / "{date}.parquet"), "d.toml"
    )
    assert main(["run", str(dated), "--catch-up", "--date", "2026-01-01"]) == 2
    assert "takes no --output or --date" in capsys.readouterr().err
    assert server.stats.received == 0

"""The run lifecycle (pipeline/runner/lifecycle.py) and the Python API on top of it."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import polars as pl
import pytest
from structlog.testing import capture_logs

import pipeline
from pipeline.errors import JobError, OutputError
from pipeline.exits import (
    EXIT_ABORTED,
    EXIT_BUDGET,
    EXIT_BUG,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_TOO_MANY_ERRORS,
    EXIT_WRITE_FAILED,
)
from pipeline.lock import LockedError, OutputLock
from pipeline.manifest import read_history, read_manifest
from pipeline.records import Ended, RunSummary
from pipeline.results import PartWriter
from pipeline.runner import lifecycle
from pipeline.runner.lifecycle import RunOptions
from pipeline.runner.verdict import exit_code
from pipeline.spec import load_job, parse_job
from tests.helpers import FakeFactory, Reviews, make_job, write_job

RUNNER = Path(pipeline.__file__).parent / "runner"


def test_run_job_writes_the_output_and_the_manifest(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews
) -> None:
    server = fake_server()
    out = tmp_path / "out.parquet"
    job = write_job(tmp_path, make_job(reviews(12), server.base_url, out))

    with capture_logs() as logs:
        result = pipeline.run_job(str(job), RunOptions(limit=10))

    assert (result.exit_code, result.ok, result.reason) == (EXIT_OK, True, "complete")
    assert result.summary is not None
    assert (result.summary.rows_total, result.summary.rows_ok) == (10, 10)
    assert (result.output_path, result.rows_planned) == (out, 10)
    assert pl.read_parquet(out)["status"].to_list() == ["ok"] * 10
    manifest = read_manifest(out)
    assert manifest is not None
    assert result.manifest_path == out.with_name("out.manifest.json")
    assert json.loads(result.manifest_path.read_text())["run_id"] == result.run_id
    assert (manifest.run_id, manifest.exit_code, manifest.complete) == (result.run_id, 0, True)
    assert (manifest.job_file, manifest.limit, manifest.input_rows) == (str(job), 10, 10)
    finished = [e for e in logs if e["event"] == "job.finished"]
    assert len(finished) == 1
    assert finished[0]["run_id"] == result.run_id
    assert (finished[0]["ok"], finished[0]["requests"]) == (10, server.stats.received)


def test_a_complete_output_is_not_run_again(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews
) -> None:
    server = fake_server()
    out = tmp_path / "out.parquet"
    job = write_job(tmp_path, make_job(reviews(5), server.base_url, out))
    first = pipeline.run_job(job)
    sent = server.stats.received

    again = pipeline.run_job(job)

    assert (again.already_complete, again.summary, again.exit_code) == (True, None, EXIT_OK)
    assert (again.run_id, again.reason) == (first.run_id, "complete")
    assert server.stats.received == sent
    forced = pipeline.run_job(job, RunOptions(force=True))
    assert (forced.already_complete, forced.exit_code) == (False, EXIT_OK)
    assert forced.run_id != first.run_id


def test_a_loaded_job_spec_runs_and_is_recognised_again(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews
) -> None:
    server = fake_server()
    out = tmp_path / "out.parquet"
    spec = load_job(str(write_job(tmp_path, make_job(reviews(3), server.base_url, out))))

    first = pipeline.run_job(spec)
    manifest = read_manifest(out)
    again = pipeline.run_job(spec.model_copy())

    assert first.exit_code == EXIT_OK
    assert manifest is not None
    assert manifest.job_file == "<JobSpec test>"
    assert again.already_complete


def test_a_held_lock_raises_locked_and_sends_nothing(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews
) -> None:
    server = fake_server()
    out = tmp_path / "out.parquet"
    job = write_job(tmp_path, make_job(reviews(3), server.base_url, out))

    with OutputLock(out), pytest.raises(LockedError, match="another run is writing"):
        pipeline.run_job(job)

    assert server.stats.received == 0
    assert not out.exists()


def test_the_api_starts_the_fake_server_for_a_fake_job(tmp_path: Path, reviews: Reviews) -> None:
    out = tmp_path / "out.parquet"
    job = write_job(tmp_path, make_job(reviews(4), "fake", out))

    result = pipeline.run_job(job)

    assert result.exit_code == EXIT_OK
    assert pl.read_parquet(out).height == 4


def test_the_lifecycle_alone_refuses_a_fake_job_without_a_url(
    tmp_path: Path, reviews: Reviews
) -> None:
    out = tmp_path / "out.parquet"
    job = write_job(tmp_path, make_job(reviews(2), "fake", out))

    with pytest.raises(JobError, match="started by the `pipeline` command; pass base_url="):
        lifecycle.run_job(job)

    assert not out.exists()


def _summary(ended: Ended, rows: int = 10, errors: int = 0) -> RunSummary:
    return RunSummary(
        output_path="out.parquet",
        rows_total=rows,
        rows_ok=rows - errors,
        rows_error=errors,
        errors_by_type={"server_error": errors} if errors else {},
        prompt_tokens=0,
        completion_tokens=0,
        requests_sent=rows,
        elapsed_s=1.0,
        ended=ended,
        reason=None if ended is Ended.COMPLETE else f"{ended.value} because",
    )


@pytest.mark.parametrize(
    ("ended", "code"),
    [
        (Ended.COMPLETE, EXIT_OK),
        (Ended.INTERRUPTED, EXIT_INTERRUPTED),
        (Ended.TERMINATED, EXIT_TERMINATED),
        (Ended.ABORTED, EXIT_ABORTED),
        (Ended.BUDGET, EXIT_BUDGET),
    ],
)
def test_exit_code_follows_how_the_run_ended(tmp_path: Path, ended: Ended, code: int) -> None:
    job = parse_job(make_job(tmp_path / "in.parquet", "fake", tmp_path / "out.parquet"))
    reason = "complete" if ended is Ended.COMPLETE else f"{ended.value} because"
    assert exit_code(job, _summary(ended)) == (code, reason)


def test_exit_code_of_too_many_errors(tmp_path: Path) -> None:
    job = parse_job(
        make_job(
            tmp_path / "in.parquet",
            "fake",
            tmp_path / "out.parquet",
            limits={"max_error_rate": 0.2},
        )
    )
    assert exit_code(job, _summary(Ended.COMPLETE, errors=2)) == (EXIT_OK, "complete")
    assert exit_code(job, _summary(Ended.COMPLETE, errors=3)) == (
        EXIT_TOO_MANY_ERRORS,
        "30.0% of rows failed, above limits.max_error_rate 20.0%",
    )
    # how the run ended comes first: a stopped run is not judged by its error rate
    assert exit_code(job, _summary(Ended.BUDGET, errors=3))[0] == EXIT_BUDGET


def test_nothing_under_runner_imports_the_fake_server() -> None:
    offenders = []
    for path in sorted(RUNNER.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            if any(name == "pipeline.fake" or name.startswith("pipeline.fake.") for name in names):
                offenders.append(path.name)
    assert offenders == []


def test_every_run_is_kept_in_the_history_and_the_manifest_is_the_latest(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews
) -> None:
    server = fake_server()
    out = tmp_path / "out.parquet"
    job = write_job(tmp_path, make_job(reviews(6), server.base_url, out))

    first = pipeline.run_job(job, RunOptions(limit=3))
    second = pipeline.run_job(job)
    skipped = pipeline.run_job(job)  # already complete: not a run, not recorded

    assert skipped.already_complete
    runs = read_history(out)
    assert [r.run_id for r in runs] == [first.run_id, second.run_id]
    assert [(r.input_rows, r.exit_code, r.complete) for r in runs] == [(3, 0, True), (6, 0, True)]
    latest = read_manifest(out)
    assert latest is not None
    assert latest.run_id == second.run_id
    assert out.with_name("out.runs.jsonl").read_text().count("\n") == 2


def test_a_bug_mid_run_is_recorded_with_exit_1_then_raised(
    tmp_path: Path,
    fake_server: FakeFactory,
    reviews: Reviews,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = fake_server()
    out = tmp_path / "out.parquet"
    monkeypatch.setenv("BUG_KEY", "sk-proj-bugbugbugbugbugbug0000")
    job = write_job(
        tmp_path, make_job(reviews(4), server.base_url, out, endpoint={"api_key_env": "BUG_KEY"})
    )

    async def broken(self: object) -> RunSummary:
        raise RuntimeError("boom near sk-proj-bugbugbugbugbugbug0000")

    monkeypatch.setattr(lifecycle.Runner, "run", broken)  # a bug, as nothing else can make one
    with pytest.raises(RuntimeError, match="boom"):
        pipeline.run_job(job)

    manifest = read_manifest(out)
    assert manifest is not None
    assert (manifest.exit_code, manifest.complete) == (EXIT_BUG, False)
    assert manifest.exit_reason == "internal error: RuntimeError: boom near ***"
    assert "unknown" in manifest.extra["counts"]
    assert [r.exit_code for r in read_history(out)] == [EXIT_BUG]


def test_a_write_failure_mid_run_is_recorded_with_exit_5(
    tmp_path: Path,
    fake_server: FakeFactory,
    reviews: Reviews,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = fake_server()
    out = tmp_path / "out.parquet"
    job = write_job(tmp_path, make_job(reviews(4), server.base_url, out))

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OutputError(f"{out}: cannot write results: No space left on device")

    monkeypatch.setattr(PartWriter, "finalize", disk_full)  # a full disk, simulated
    result = pipeline.run_job(job)

    assert result.exit_code == EXIT_WRITE_FAILED
    manifest = read_manifest(out)
    assert manifest is not None
    assert (manifest.exit_code, manifest.complete) == (EXIT_WRITE_FAILED, False)
    assert "No space left on device" in manifest.exit_reason
    assert result.manifest_path == out.with_name("out.manifest.json")

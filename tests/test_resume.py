"""Crash safety and resumption: kill -9, SIGTERM, overlapping runs, edits, full disks."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from pipeline.cli import main
from pipeline.errors import OutputError
from pipeline.manifest import manifest_path
from pipeline.results import PartWriter
from tests.helpers import REPO, FakeFactory, make_job, write_job


def start_run(job: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(job), *extra],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def wait_for_parts(output: Path, minimum: int = 1, timeout: float = 20) -> None:
    """Wait (bounded) until the run has checkpointed at least ``minimum`` part files."""
    parts = output.with_name(output.name + ".parts")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list(parts.glob("part-*.parquet"))) >= minimum:
            return
        time.sleep(0.02)
    raise AssertionError(f"no part file appeared in {parts}")


def test_kill_9_at_random_moments_then_resume_loses_and_repeats_little(
    tmp_path: Path, fake_server: FakeFactory, reviews: Callable[[int], Path]
) -> None:
    rows, concurrency = 1200, 16
    server = fake_server(latency_s=0.03, latency_jitter_s=0.02)
    out = tmp_path / "out.parquet"
    job = write_job(
        tmp_path, make_job(reviews(rows), server.base_url, out, limits={"concurrency": concurrency})
    )
    rng = random.Random(42)
    kills = 0
    for _ in range(3):
        process = start_run(job)
        wait_for_parts(out, minimum=1)
        time.sleep(rng.uniform(0.0, 0.6))
        if process.poll() is not None:
            finish(process)
            break
        process.send_signal(signal.SIGKILL)
        finish(process, timeout=10)
        kills += 1
    code, stdout, stderr = finish(start_run(job))

    assert code == 0, stderr
    assert kills >= 2
    df = pl.read_parquet(out)
    assert df["id"].to_list() == [f"r{i:06d}" for i in range(rows)]
    assert df["status"].unique().to_list() == ["ok"]
    sends = server.stats.completions_by_seed
    assert set(df["seed"].to_list()) == set(sends)
    repeated = sum(count - 1 for count in sends.values())
    throughput = concurrency / 0.04  # rows/s at this latency
    assert repeated <= kills * (2 * concurrency + throughput)
    print(
        f"\nkill -9 x{kills}: {repeated} rows sent again in all ({repeated / kills:.1f} per crash)"
    )
    assert "rows (" in stdout  # some rows came from earlier runs


def test_sigterm_stops_gracefully_and_the_same_command_resumes(
    tmp_path: Path, fake_server: FakeFactory, reviews: Callable[[int], Path]
) -> None:
    rows = 800
    server = fake_server(latency_s=0.05)
    out = tmp_path / "out.parquet"
    job = write_job(
        tmp_path, make_job(reviews(rows), server.base_url, out, limits={"concurrency": 8})
    )

    process = start_run(job)
    wait_for_parts(out)
    process.send_signal(signal.SIGTERM)
    code, _, stderr = finish(process)

    assert code == 143
    assert "run the same command again to resume" in stderr
    assert not out.exists()
    manifest = json.loads(manifest_path(out).read_text())
    assert manifest["complete"] is False
    assert manifest["exit_code"] == 143
    done_before = manifest["rows_by_status"]["ok"]
    assert 0 < done_before < rows

    code, _, stderr = finish(start_run(job))

    assert code == 0, stderr
    df = pl.read_parquet(out)
    assert df["id"].n_unique() == rows == df.height
    # in-flight requests were allowed to finish and were checkpointed: nothing sent twice
    assert max(server.stats.completions_by_seed.values()) == 1
    assert sum(server.stats.completions_by_seed.values()) == rows


def test_second_run_on_the_same_output_is_refused(
    tmp_path: Path, fake_server: FakeFactory, reviews: Callable[[int], Path]
) -> None:
    server = fake_server(latency_s=0.05)
    out = tmp_path / "out.parquet"
    job = write_job(
        tmp_path, make_job(reviews(600), server.base_url, out, limits={"concurrency": 4})
    )

    first = start_run(job)
    wait_for_parts(out)
    code, _, stderr = finish(start_run(job))
    first.send_signal(signal.SIGTERM)
    finish(first)

    assert code == 75
    assert "another run is writing this output" in stderr
    assert f"pid {first.pid}" in stderr


def test_lock_of_a_dead_run_is_taken_over(
    tmp_path: Path,
    fake_server: FakeFactory,
    reviews: Callable[[int], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = fake_server()
    out = tmp_path / "out.parquet"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    out.with_name(out.name + ".lock").write_text(
        json.dumps(
            {
                "pid": int(dead.stdout),
                "host": os.uname().nodename,
                "started_at": "2026-01-01T00:00:00+00:00",
            }
        )
    )
    job = write_job(tmp_path, make_job(reviews(10), server.base_url, out))

    assert main(["run", str(job)]) == 0

    assert "lock.taken_over" in capsys.readouterr().err
    assert pl.read_parquet(out).height == 10


def test_prompt_edit_resends_only_the_edited_rows(
    tmp_path: Path, fake_server: FakeFactory, reviews: Callable[[int], Path]
) -> None:
    server = fake_server()
    source = reviews(100)
    out = tmp_path / "out.parquet"
    job = write_job(tmp_path, make_job(source, server.base_url, out))
    assert main(["run", str(job)]) == 0
    before = pl.read_parquet(out)

    edited = pl.read_parquet(source).with_columns(
        pl.when(pl.col("review_id").is_in(["r000003", "r000050", "r000099"]))
        .then(pl.col("text") + " Edited.")
        .otherwise(pl.col("text"))
        .alias("text")
    )
    edited.write_parquet(source)
    received = server.stats.received
    assert main(["run", str(job)]) == 0

    assert server.stats.received - received == 3
    after = pl.read_parquet(out)
    assert after["id"].to_list() == before["id"].to_list()
    changed = after.filter(pl.col("request_hash") != before["request_hash"])["id"].to_list()
    assert changed == ["r000003", "r000050", "r000099"]
    assert after.filter(~pl.col("id").is_in(changed)).equals(
        before.filter(~pl.col("id").is_in(changed))
    )


def test_reordered_input_reuses_rows_at_their_new_positions(
    tmp_path: Path, fake_server: FakeFactory, reviews: Callable[[int], Path]
) -> None:
    server = fake_server()
    source = reviews(50)
    out = tmp_path / "out.parquet"
    job = write_job(tmp_path, make_job(source, server.base_url, out))
    assert main(["run", str(job)]) == 0

    pl.read_parquet(source).reverse().write_parquet(source)
    received = server.stats.received
    assert main(["run", str(job)]) == 0

    assert server.stats.received == received
    assert pl.read_parquet(out)["id"].to_list() == [f"r{i:06d}" for i in reversed(range(50))]


def test_complete_output_is_not_run_again_unless_forced(
    tmp_path: Path,
    fake_server: FakeFactory,
    reviews: Callable[[int], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = fake_server()
    out = tmp_path / "out.parquet"
    job = write_job(tmp_path, make_job(reviews(20), server.base_url, out))
    assert main(["run", str(job)]) == 0
    received = server.stats.received
    capsys.readouterr()

    assert main(["run", str(job)]) == 0
    assert "already complete" in capsys.readouterr().out
    assert server.stats.received == received

    assert main(["run", str(job), "--force"]) == 0
    assert server.stats.received == received  # rows are reused, the output is rewritten
    assert main(["run", str(job), "--fresh"]) == 0
    assert server.stats.received == 2 * received


def test_error_rows_count_as_done_unless_retry_errors(
    tmp_path: Path, fake_server: FakeFactory, reviews: Callable[[int], Path]
) -> None:
    broken = fake_server(bad_request_rate=1.0)
    healthy = fake_server()
    source = reviews(12)
    out = tmp_path / "out.parquet"
    assert main(["run", str(write_job(tmp_path, make_job(source, broken.base_url, out)))]) == 0
    assert pl.read_parquet(out)["error_type"].unique().to_list() == ["bad_request"]

    job = write_job(tmp_path, make_job(source, healthy.base_url, out), name="healthy.toml")
    assert main(["run", str(job)]) == 0
    assert healthy.stats.received == 0

    assert main(["run", str(job), "--retry-errors"]) == 0
    assert healthy.stats.received == 12
    assert pl.read_parquet(out)["status"].unique().to_list() == ["ok"]


def test_disk_full_mid_run_keeps_every_checkpointed_row(
    tmp_path: Path,
    fake_server: FakeFactory,
    reviews: Callable[[int], Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = fake_server()
    out = tmp_path / "out.parquet"
    job = write_job(
        tmp_path, make_job(reviews(3000), server.base_url, out, limits={"concurrency": 16})
    )
    real_write = PartWriter.write_part
    written = []

    def write_until_full(self: PartWriter, outcomes: list) -> None:  # type: ignore[type-arg]
        if len(written) >= 2:
            raise OutputError(f"{self.parts_dir}: cannot write results: No space left on device")
        real_write(self, outcomes)
        written.append(len(outcomes))

    monkeypatch.setattr(PartWriter, "write_part", write_until_full)

    assert main(["run", str(job)]) == 5

    err = capsys.readouterr().err
    assert "No space left on device" in err
    assert "run the same command again to resume" in err
    parts = pl.read_parquet(out.with_name(out.name + ".parts"))
    assert parts.height == sum(written)
    monkeypatch.undo()
    received = server.stats.received
    assert main(["run", str(job)]) == 0
    assert pl.read_parquet(out).height == 3000
    assert server.stats.received - received == 3000 - parts.height


def test_max_error_rate_turns_a_finished_run_into_exit_3(
    tmp_path: Path, fake_server: FakeFactory, reviews: Callable[[int], Path]
) -> None:
    server = fake_server(error_503_rate=1.0)
    out = tmp_path / "out.parquet"
    job = make_job(
        reviews(10), server.base_url, out, retry={"max_attempts": 1}, limits={"max_error_rate": 0.5}
    )
    assert main(["run", str(write_job(tmp_path, job))]) == 3
    assert pl.read_parquet(out).height == 10
    assert json.loads(manifest_path(out).read_text())["exit_code"] == 3
    received = server.stats.received
    # run again (a scheduler's retry): the transient failures are sent again, and fail again
    assert main(["run", str(write_job(tmp_path, job))]) == 3
    assert server.stats.received == received + 10


def test_manifest_records_the_run_without_secrets(
    tmp_path: Path,
    fake_server: FakeFactory,
    reviews: Callable[[int], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "sk-manifest-secret-42"
    server = fake_server(api_key=secret)
    monkeypatch.setenv("TEST_API_KEY", secret)
    out = tmp_path / "out.parquet"
    job = write_job(
        tmp_path,
        make_job(reviews(7), server.base_url, out, endpoint={"api_key_env": "TEST_API_KEY"}),
    )
    assert main(["run", str(job)]) == 0

    text = manifest_path(out).read_text()
    assert secret not in text
    manifest = json.loads(text)
    assert manifest["complete"] is True
    assert manifest["exit_code"] == 0
    assert manifest["input_rows"] == 7
    assert manifest["rows_by_status"] == {"ok": 7, "error": 0}
    assert manifest["rows_sent"] == 7
    assert len(manifest["job_sha256"]) == 64
    assert manifest["run_id"]
    assert manifest["pipeline_version"] == "0.1.0"
    assert manifest["prompt_tokens"] > 0


def test_output_path_templates_and_backfill_date(
    tmp_path: Path, fake_server: FakeFactory, reviews: Callable[[int], Path]
) -> None:
    server = fake_server()
    template = str(tmp_path / "{name}" / "{date}" / "{run_id}.parquet")
    job = make_job(reviews(3), server.base_url, Path("unused"))
    job["output"]["path"] = template
    assert main(["run", str(write_job(tmp_path, job)), "--date", "2026-01-31"]) == 0

    written = list((tmp_path / "test" / "2026-01-31").glob("*.parquet"))
    assert len(written) == 1
    assert written[0].stem[:8].isdigit()


def test_second_signal_stops_at_once_after_checkpointing(
    tmp_path: Path, fake_server: FakeFactory, reviews: Callable[[int], Path]
) -> None:
    server = fake_server(latency_s=0.02, hang_rate=0.2, hang_s=60, fault_seed=2)
    out = tmp_path / "out.parquet"
    job = write_job(
        tmp_path,
        make_job(
            reviews(400),
            server.base_url,
            out,
            endpoint={"timeout_s": 60},
            limits={"concurrency": 8},
        ),
    )
    process = start_run(job, "--grace-s", "60")
    wait_for_parts(out)
    process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert process.poll() is None  # hung requests are still being given their grace period
    stopped_at = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code, _, stderr = finish(process, timeout=30)

    assert code == 143
    assert time.monotonic() - stopped_at < 10
    assert "job.stopping_now" in stderr
    parts = pl.read_parquet(out.with_name(out.name + ".parts"))
    assert parts["status"].unique().to_list() == ["ok"]
    assert parts["id"].n_unique() == parts.height > 0


def test_several_models_resume_per_row_and_model(
    tmp_path: Path, fake_server: FakeFactory, reviews: Callable[[int], Path]
) -> None:
    server = fake_server()
    source = reviews(20)
    out = tmp_path / "out.parquet"
    job = make_job(source, server.base_url, out)
    del job["request"]["model"]
    job["request"]["models"] = ["model-a", "model-b"]
    assert main(["run", str(write_job(tmp_path, job))]) == 0
    first = pl.read_parquet(out)
    assert first["model"].to_list()[:4] == ["model-a", "model-b", "model-a", "model-b"]

    job["request"]["models"] = ["model-a", "model-c"]
    received = server.stats.received
    assert main(["run", str(write_job(tmp_path, job))]) == 0

    assert server.stats.received - received == 20  # only model-c is new
    second = pl.read_parquet(out)
    assert second["model"].to_list()[:4] == ["model-a", "model-c", "model-a", "model-c"]
    assert second.filter(pl.col("model") == "model-a").equals(
        first.filter(pl.col("model") == "model-a")
    )


def test_a_stop_with_a_full_row_buffer_exits_with_its_own_code(
    tmp_path: Path,
    fake_server: FakeFactory,
    reviews: Callable[[int], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = fake_server()
    out = tmp_path / "out.parquet"
    job = make_job(reviews(12_000), server.base_url, out, limits={"max_cost_usd": 0.0005})

    assert main(["run", str(write_job(tmp_path, job))]) == 6  # budget: the reader was still feeding

    assert "Traceback" not in capsys.readouterr().err
    assert json.loads(manifest_path(out).read_text())["exit_code"] == 6
    parts = pl.read_parquet(out.with_name(out.name + ".parts"))
    assert 0 < parts.height < 12_000
    assert parts.height == server.stats.received


def test_error_rows_keep_what_their_attempts_cost(
    tmp_path: Path, fake_server: FakeFactory, reviews: Callable[[int], Path]
) -> None:
    server = fake_server(drop_rate=1.0)
    out = tmp_path / "out.parquet"
    job = make_job(reviews(5), server.base_url, out, retry={"max_attempts": 2})
    assert main(["run", str(write_job(tmp_path, job))]) == 0

    df = pl.read_parquet(out)
    assert df["error_type"].unique().to_list() == ["connection"]
    assert df["possibly_billed_attempts"].to_list() == [2] * 5


def test_a_kept_column_whose_type_changed_does_not_break_the_merge(
    tmp_path: Path, fake_server: FakeFactory
) -> None:
    server = fake_server()
    source = tmp_path / "in.parquet"
    pl.DataFrame(
        {"review_id": ["a", "b"], "text": ["x y", "z w"], "product_id": ["P-1", "P-2"]}
    ).write_parquet(source)
    out = tmp_path / "out.parquet"
    assert main(["run", str(write_job(tmp_path, make_job(source, server.base_url, out)))]) == 0

    pl.DataFrame(
        {"review_id": ["a", "b"], "text": ["x y", "z w"], "product_id": [1, 2]}
    ).write_parquet(source)
    assert main(["run", str(write_job(tmp_path, make_job(source, server.base_url, out)))]) == 0

    assert pl.read_parquet(out)["product_id"].dtype == pl.Int64


def test_reused_rows_show_the_inputs_current_kept_values(
    tmp_path: Path, fake_server: FakeFactory
) -> None:
    server = fake_server()
    source = tmp_path / "in.parquet"
    pl.DataFrame(
        {
            "review_id": ["a", "b", "c"],
            "text": ["x y", "z w", "u v"],
            "product_id": ["P-1", "P-2", "P-3"],
        }
    ).write_parquet(source)
    out = tmp_path / "out.parquet"
    job = make_job(source, server.base_url, out, input={"keep_columns": []})
    assert main(["run", str(write_job(tmp_path, job))]) == 0

    pl.DataFrame(
        {
            "review_id": ["a", "b", "c"],
            "text": ["x y", "z w", "u v"],
            "product_id": ["P-1", "P-9", "P-3"],
        }
    ).write_parquet(source)
    job["input"]["keep_columns"] = ["product_id"]
    received = server.stats.received
    assert main(["run", str(write_job(tmp_path, job))]) == 0

    assert server.stats.received == received  # every row reused
    assert pl.read_parquet(out)["product_id"].to_list() == ["P-1", "P-9", "P-3"]

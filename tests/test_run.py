"""End to end: ``pipeline run`` against the fake server over real loopback sockets."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pipeline.cli import main
from tests.helpers import FakeFactory, make_job, write_job, write_jsonl


def run_cli(*argv: str) -> int:
    return main(list(argv))


def read(path: Path) -> pl.DataFrame:
    return pl.read_parquet(path)


def test_thousand_rows_with_faults_all_end_ok_exactly_once(
    tmp_path: Path, fake_server: FakeFactory, reviews: Callable[[int], Path]
) -> None:
    server = fake_server(
        error_500_rate=0.02,
        error_502_rate=0.015,
        error_503_rate=0.015,
        rate_limit_rate=0.02,
        retry_after_s=0.05,
        drop_rate=0.01,
        fault_seed=3,
    )
    out = tmp_path / "out.parquet"
    job = write_job(
        tmp_path, make_job(reviews(1000), server.base_url, out, limits={"concurrency": 64})
    )

    assert run_cli("run", str(job)) == 0

    df = read(out)
    assert df.height == 1000
    assert df["id"].n_unique() == 1000
    assert df["id"].to_list() == [f"r{i:06d}" for i in range(1000)]
    assert df["status"].unique().to_list() == ["ok"]
    assert df["attempts"].max() > 1
    assert df["attempts"].sum() == server.stats.received
    assert server.stats.by_status[429] > 0
    assert server.stats.dropped > 0
    assert df["product_id"].to_list()[:3] == ["P-0", "P-1", "P-2"]
    assert not out.with_name(out.name + ".parts").exists()


def test_wrong_api_key_gives_auth_rows_without_retries_then_aborts(
    tmp_path: Path,
    fake_server: FakeFactory,
    reviews: Callable[[int], Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = fake_server(api_key="sk-right-key", latency_s=0.02)
    monkeypatch.setenv("TEST_API_KEY", "sk-wrong-key-123456")
    out = tmp_path / "out.parquet"
    job = make_job(
        reviews(400),
        server.base_url,
        out,
        endpoint={"api_key_env": "TEST_API_KEY"},
        limits={"concurrency": 4},
    )

    assert run_cli("run", str(write_job(tmp_path, job))) == 4

    assert "the endpoint refuses every request" in capsys.readouterr().err
    assert not out.exists()
    parts = pl.read_parquet(out.with_name(out.name + ".parts"))
    assert parts["error_type"].unique().to_list() == ["auth"]
    assert parts["attempts"].unique().to_list() == [1]
    assert parts["http_status"].unique().to_list() == [401]
    assert server.stats.received == parts.height
    assert server.stats.received < 5 + 2 * 4 * 2  # stopped after a handful, plus what was in flight


def test_right_api_key_in_each_auth_style(
    tmp_path: Path,
    fake_server: FakeFactory,
    reviews: Callable[[int], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = fake_server(api_key="sk-right-key")
    monkeypatch.setenv("TEST_API_KEY", "sk-right-key")
    for auth in ("bearer", "x-api-key"):
        out = tmp_path / f"{auth}.parquet"
        job = write_job(
            tmp_path,
            make_job(
                reviews(5),
                server.base_url,
                out,
                endpoint={"api_key_env": "TEST_API_KEY", "auth": auth},
            ),
            name=f"{auth}.toml",
        )
        assert run_cli("run", str(job)) == 0
        assert read(out)["status"].unique().to_list() == ["ok"]


def test_key_never_appears_in_logs_or_output(
    tmp_path: Path,
    fake_server: FakeFactory,
    reviews: Callable[[int], Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    secret = "sk-secret-value-0123456789"
    server = fake_server(api_key=secret, error_503_rate=0.2, fault_seed=1)
    monkeypatch.setenv("TEST_API_KEY", secret)
    out = tmp_path / "out.parquet"
    log_file = tmp_path / "events.jsonl"
    job = write_job(
        tmp_path,
        make_job(reviews(50), server.base_url, out, endpoint={"api_key_env": "TEST_API_KEY"}),
    )

    assert run_cli("run", str(job), "--log-file", str(log_file)) == 0
    captured = capsys.readouterr()

    assert secret not in captured.out + captured.err
    assert secret.encode() not in log_file.read_bytes()
    assert secret.encode() not in out.read_bytes()
    events = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert any(e["event"] == "request.retry" for e in events)
    assert read(out)["status"].unique().to_list() == ["ok"]


def test_retry_events_carry_their_fields(
    tmp_path: Path, fake_server: FakeFactory, reviews: Callable[[int], Path]
) -> None:
    server = fake_server(error_503_rate=0.3, fault_seed=5)
    out = tmp_path / "out.parquet"
    log_file = tmp_path / "events.jsonl"
    job = write_job(tmp_path, make_job(reviews(40), server.base_url, out))

    assert run_cli("run", str(job), "--log-file", str(log_file)) == 0

    events = [json.loads(line) for line in log_file.read_text().splitlines()]
    retries = [e for e in events if e["event"] == "request.retry"]
    assert retries
    assert {"id", "attempt", "sleep_s", "error_type", "http_status"} <= retries[0].keys()
    assert retries[0]["error_type"] == "server_error"
    assert retries[0]["http_status"] == 503
    finished = [e for e in events if e["event"] == "job.finished"]
    assert finished[0]["ok"] == 40
    assert finished[0]["requests"] == server.stats.received


def test_same_job_twice_sends_identical_bodies(
    tmp_path: Path, fake_server: FakeFactory, reviews: Callable[[int], Path]
) -> None:
    server = fake_server(record_requests=True)
    source = reviews(30)
    outputs = []
    for run in ("a", "b"):
        out = tmp_path / f"{run}.parquet"
        job = write_job(tmp_path, make_job(source, server.base_url, out), name=f"{run}.toml")
        assert run_cli("run", str(job)) == 0
        outputs.append(read(out))

    bodies = [r.body for r in server.stats.requests]
    assert len(bodies) == 60
    assert sorted(bodies[:30]) == sorted(bodies[30:])
    first, second = outputs
    assert first["seed"].to_list() == second["seed"].to_list()
    assert first["request_hash"].to_list() == second["request_hash"].to_list()
    assert first["content"].to_list() == second["content"].to_list()
    assert first["seed"].n_unique() == 30


def test_bad_rows_become_error_rows_and_do_not_stop_the_run(
    tmp_path: Path, fake_server: FakeFactory
) -> None:
    server = fake_server()
    source = tmp_path / "rows.jsonl"
    source.write_text(
        "\n".join(
            [
                json.dumps({"id": "a", "text": "fine row", "topic": "x"}),
                '{"id": "b", "text": "broken',
                json.dumps({"id": "c", "text": None, "topic": "x"}),
                json.dumps({"id": "d", "text": "   ", "topic": "x"}),
                json.dumps({"id": "e", "text": "no topic here"}),
                "",
                json.dumps({"id": "f", "text": "another fine row", "topic": "y"}),
            ]
        )
        + "\n"
    )
    out = tmp_path / "out.parquet"
    job = make_job(source, server.base_url, out, input={"id_column": "id", "keep_columns": []})
    job["request"]["template"] = "About {topic}: {text}"
    assert run_cli("run", str(write_job(tmp_path, job))) == 0

    df = read(out)
    assert df.height == 6
    by_id = {row["id"]: row for row in df.iter_rows(named=True)}
    assert by_id["a"]["status"] == by_id["f"]["status"] == "ok"
    assert by_id["line:2"]["error_type"] == "bad_input"
    assert "line 2" in by_id["line:2"]["error_message"]
    assert "not valid JSON" in by_id["line:2"]["error_message"]
    assert "prompt column 'text' is null" in by_id["c"]["error_message"]
    assert "line 3" in by_id["c"]["error_message"]
    assert "empty" in by_id["d"]["error_message"]
    assert "{topic}" in by_id["e"]["error_message"]
    assert {by_id[k]["attempts"] for k in ("line:2", "c", "d", "e")} == {0}
    assert server.stats.received == 2
    manifest = json.loads(out.with_name("out.manifest.json").read_text())
    assert manifest["rows_sent"] == 2  # bad rows were never sent


def test_null_prompt_in_parquet_names_the_row(tmp_path: Path, fake_server: FakeFactory) -> None:
    server = fake_server()
    source = tmp_path / "rows.parquet"
    pl.DataFrame(
        {"review_id": ["x", "y"], "text": ["hello there", None], "product_id": ["p", "q"]}
    ).write_parquet(source)
    out = tmp_path / "out.parquet"
    assert run_cli("run", str(write_job(tmp_path, make_job(source, server.base_url, out)))) == 0

    df = read(out)
    assert df["status"].to_list() == ["ok", "error"]
    assert df["error_message"][1] == f"{source}: row 1: prompt column 'text' is null"


def test_messages_column_from_jsonl(tmp_path: Path, fake_server: FakeFactory) -> None:
    server = fake_server(record_requests=True)
    source = tmp_path / "chats.jsonl"
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    write_jsonl(source, [{"id": "c1", "messages": conversation}])
    out = tmp_path / "out.parquet"
    job = make_job(source, server.base_url, out, input={"id_column": "id", "keep_columns": []})
    del job["input"]["prompt_column"]
    job["input"]["messages_column"] = "messages"
    assert run_cli("run", str(write_job(tmp_path, job))) == 0

    assert read(out)["status"].to_list() == ["ok"]
    assert json.loads(server.stats.requests[0].body)["messages"] == conversation


def test_fatal_answers_are_not_retried(
    tmp_path: Path, fake_server: FakeFactory, reviews: Callable[[int], Path]
) -> None:
    server = fake_server(bad_request_rate=1.0)
    out = tmp_path / "out.parquet"
    assert (
        run_cli("run", str(write_job(tmp_path, make_job(reviews(10), server.base_url, out)))) == 0
    )

    df = read(out)
    assert df["error_type"].unique().to_list() == ["bad_request"]
    assert df["attempts"].unique().to_list() == [1]
    assert server.stats.received == 10


def test_hanging_server_gives_timeout_rows(
    tmp_path: Path, fake_server: FakeFactory, reviews: Callable[[int], Path]
) -> None:
    server = fake_server(hang_rate=1.0, hang_s=30)
    out = tmp_path / "out.parquet"
    job = make_job(
        reviews(4), server.base_url, out, endpoint={"timeout_s": 0.3}, retry={"max_attempts": 2}
    )
    assert run_cli("run", str(write_job(tmp_path, job))) == 0

    df = read(out)
    assert df["error_type"].unique().to_list() == ["timeout"]
    assert df["attempts"].unique().to_list() == [2]


def test_exhausted_retries_keep_the_last_error(
    tmp_path: Path, fake_server: FakeFactory, reviews: Callable[[int], Path]
) -> None:
    server = fake_server(error_503_rate=1.0)
    out = tmp_path / "out.parquet"
    job = make_job(reviews(3), server.base_url, out, retry={"max_attempts": 3})
    assert run_cli("run", str(write_job(tmp_path, job))) == 0

    df = read(out)
    assert df["error_type"].unique().to_list() == ["server_error"]
    assert df["http_status"].unique().to_list() == [503]
    assert df["attempts"].unique().to_list() == [3]
    assert server.stats.received == 9


def test_server_rate_limits_are_respected(
    tmp_path: Path, fake_server: FakeFactory, reviews: Callable[[int], Path]
) -> None:
    server = fake_server(requests_per_minute=6000, tokens_per_minute=600_000)
    out = tmp_path / "out.parquet"
    job = make_job(
        reviews(150),
        server.base_url,
        out,
        limits={"concurrency": 64, "requests_per_minute": 6000, "tokens_per_minute": 600_000},
    )
    assert run_cli("run", str(write_job(tmp_path, job))) == 0

    assert read(out)["status"].unique().to_list() == ["ok"]
    assert server.stats.by_status[429] <= 3


def test_unconfigured_limits_follow_the_servers_headers(
    tmp_path: Path, fake_server: FakeFactory, reviews: Callable[[int], Path]
) -> None:
    server = fake_server(requests_per_minute=3000)
    out = tmp_path / "out.parquet"
    assert (
        run_cli("run", str(write_job(tmp_path, make_job(reviews(120), server.base_url, out)))) == 0
    )

    assert read(out)["status"].unique().to_list() == ["ok"]
    assert server.stats.by_status[429] < 40


def test_overrides_input_output_and_limit(
    tmp_path: Path, fake_server: FakeFactory, reviews: Callable[[int], Path]
) -> None:
    server = fake_server()
    job = write_job(
        tmp_path,
        make_job(tmp_path / "missing.parquet", server.base_url, tmp_path / "unused.parquet"),
    )
    out = tmp_path / "elsewhere" / "o.parquet"

    assert (
        run_cli("run", str(job), "--input", str(reviews(50)), "--output", str(out), "--limit", "7")
        == 0
    )

    assert read(out)["id"].to_list() == [f"r{i:06d}" for i in range(7)]
    assert not (tmp_path / "unused.parquet").exists()


def test_demo_job_runs_as_a_subprocess(tmp_path: Path) -> None:
    out = tmp_path / "demo.parquet"
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "run",
            "jobs/demo.toml",
            "--output",
            str(out),
            "--limit",
            "40",
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"output: {out}" in done.stdout
    assert read(out)["status"].unique().to_list() == ["ok"]


def test_no_credit_left_stops_the_run_at_once_with_exit_4(
    tmp_path: Path,
    fake_server: FakeFactory,
    reviews: Callable[[int], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = fake_server(credit_requests=30, latency_s=0.01)
    out = tmp_path / "out.parquet"
    job = make_job(reviews(400), server.base_url, out, limits={"concurrency": 4})

    assert run_cli("run", str(write_job(tmp_path, job))) == 4

    assert "no credit left (insufficient_quota)" in capsys.readouterr().err
    assert server.stats.by_status[429] <= 4  # not retried: at most the requests in flight
    assert server.stats.received <= 30 + 4
    parts = pl.read_parquet(out.with_name(out.name + ".parts"))
    assert (parts["status"] == "ok").sum() == 30  # what was paid for is kept


def test_a_429_with_capacity_left_backs_off_alone_and_a_spent_limit_pauses_everyone(
    tmp_path: Path, fake_server: FakeFactory, reviews: Callable[[int], Path]
) -> None:
    def pauses(server_config: dict[str, Any], name: str, rows: int) -> int:
        server = fake_server(**server_config)
        out = tmp_path / f"{name}.parquet"
        log_file = tmp_path / f"{name}.jsonl"
        job = write_job(tmp_path, make_job(reviews(rows), server.base_url, out), f"{name}.toml")
        assert run_cli("run", str(job), "--log-file", str(log_file)) == 0
        assert read(out)["status"].unique().to_list() == ["ok"]
        assert server.stats.by_status[429] > 0
        events = [json.loads(line) for line in log_file.read_text().splitlines()]
        return sum(e["event"] == "rate_limit.pause" for e in events)

    # injected 429s while the quota's headers show plenty left: nobody else waits
    stray = {"requests_per_minute": 600_000, "rate_limit_rate": 0.3, "retry_after_s": 0.0}
    assert pauses(stray, "stray", 80) == 0
    # the quota itself spent (no limits in the job; a bucket of 10 requests, 16 sent in the
    # first 50 ms, long before the first admitted answer brings the headers): everyone pauses
    assert pauses({"requests_per_minute": 600, "latency_s": 0.3}, "spent", 30) > 0

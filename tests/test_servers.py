"""Every documented server: its example job in ``jobs/`` runs against the fake server set
up to behave like that server (path, query, auth style, headers, body fields, models).

Only the scheme and host of ``base_url`` are changed to point at the fake; the path is the
job's own, and the fake answers 404 unless it is exactly the server's. Each server also
gets a broken variant of its job, to show that the fake really refuses a wrong request.
"""

from __future__ import annotations

import copy
import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import polars as pl
import pytest

from pipeline.cli import main
from pipeline.fake import FakeServer, profile
from tests.helpers import REPO, FakeFactory, run_job, write_job

SERVERS = ["openai", "azure", "vectara", "ovms", "vllm", "ollama", "portkey", "router"]
KEY = "sk-server-test-0123456789"
ROWS = 4


def example_job(server: str) -> dict[str, Any]:
    data: dict[str, Any] = tomllib.loads(
        (REPO / "jobs" / f"{server}.toml").read_text(encoding="utf-8")
    )
    return data


def pointed_at(job: dict[str, Any], fake: FakeServer, output: Path) -> dict[str, Any]:
    """The job with base_url's scheme and host replaced by the fake's; the path kept.

    Besides the output path, only client-side pacing and retry timing change: neither
    is something the server sees."""
    job = copy.deepcopy(job)
    original, local = urlsplit(job["endpoint"]["base_url"]), urlsplit(fake.base_url)
    job["endpoint"]["base_url"] = original._replace(
        scheme=local.scheme, netloc=local.netloc
    ).geturl()
    job["output"]["path"] = str(output)
    job["retry"] = {"max_attempts": 2, "initial_backoff_s": 0.01, "max_backoff_s": 0.05}
    job["limits"] = {"concurrency": job["limits"]["concurrency"]}  # no pacing: keeps the test fast
    return job


def run(tmp_path: Path, job: dict[str, Any], name: str) -> pl.DataFrame:
    return run_job(tmp_path, job, "--limit", str(ROWS), name=f"{name}.toml")


@pytest.fixture
def in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from the repository root, where the example jobs' relative input paths resolve."""
    monkeypatch.chdir(REPO)


def start_like(
    server: str, job: dict[str, Any], fake_server: FakeFactory, monkeypatch: pytest.MonkeyPatch
) -> FakeServer:
    """A fake server behaving like ``server``; with the job's key variable set when it names one."""
    variable = job["endpoint"].get("api_key_env")
    if variable is not None:
        monkeypatch.setenv(variable, KEY)
    return fake_server(
        profile=profile(server), api_key=KEY if variable else None, record_requests=True
    )


@pytest.mark.usefixtures("in_repo")
@pytest.mark.parametrize("server", SERVERS)
def test_example_job_runs_against_a_server_like_it(
    server: str, tmp_path: Path, fake_server: FakeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = example_job(server)
    fake = start_like(server, job, fake_server, monkeypatch)
    assert urlsplit(job["endpoint"]["base_url"]).path.rstrip("/") == urlsplit(fake.base_url).path

    output = tmp_path / "out.parquet"
    df = run(tmp_path, pointed_at(job, fake, output), server)

    models = job["request"].get("models") or [job["request"]["model"]]
    assert df.height == ROWS * len(models)
    assert df["status"].unique().to_list() == ["ok"], df["error_message"].to_list()
    assert df["model"].to_list() == models * ROWS
    assert fake.stats.received == ROWS * len(models)
    assert KEY.encode() not in output.read_bytes()


@pytest.mark.usefixtures("in_repo")
def test_portkey_rows_carry_their_trace_id_and_metadata(
    tmp_path: Path, fake_server: FakeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = example_job("portkey")
    fake = start_like("portkey", job, fake_server, monkeypatch)
    df = run(tmp_path, pointed_at(job, fake, tmp_path / "out.parquet"), "portkey")

    sent = sorted(
        (r.headers["x-portkey-trace-id"], r.headers["x-portkey-metadata"])
        for r in fake.stats.requests
    )
    expected = sorted(zip(df["id"], df["product_id"], strict=True))
    assert [trace for trace, _ in sent] == [row_id for row_id, _ in expected]
    assert [json.loads(meta)["product"] for _, meta in sent] == [product for _, product in expected]
    assert {r.headers["x-portkey-api-key"] for r in fake.stats.requests} == {"[redacted]"}


@pytest.mark.usefixtures("in_repo")
def test_ovms_gets_its_extra_body_fields(
    tmp_path: Path, fake_server: FakeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = example_job("ovms")
    fake = start_like("ovms", job, fake_server, monkeypatch)
    run(tmp_path, pointed_at(job, fake, tmp_path / "out.parquet"), "ovms")
    body = json.loads(fake.stats.requests[0].body)
    assert (body["top_k"], body["repetition_penalty"]) == (1, 1.0)


def _drop_header(name: str) -> Callable[[dict[str, Any]], None]:
    return lambda job: job["endpoint"]["headers"].pop(name)


BROKEN: list[tuple[str, str, Callable[[dict[str, Any]], None], str, int]] = [
    ("openai", "key in x-api-key", lambda j: j["endpoint"].update(auth="x-api-key"), "auth", 401),
    (
        "openai",
        "unknown model",
        lambda j: j["request"].update(model="gpt-5-turbo-max"),
        "not_found",
        404,
    ),
    ("azure", "no api-version", lambda j: j["endpoint"].pop("query"), "not_found", 404),
    ("azure", "bearer key", lambda j: j["endpoint"].update(auth="bearer"), "auth", 401),
    (
        "vectara",
        "OpenAI's path",
        lambda j: j["endpoint"].update(base_url="https://api.vectara.io/v1"),
        "not_found",
        404,
    ),
    ("ovms", "no extra_body", lambda j: j["request"].pop("extra_body"), "bad_request", 400),
    (
        "vllm",
        "model not served",
        lambda j: j["request"].update(model="gpt-4o-mini"),
        "not_found",
        404,
    ),
    (
        "ollama",
        "model not pulled",
        lambda j: j["request"].update(model="mistral"),
        "not_found",
        404,
    ),
    ("portkey", "no route header", _drop_header("x-portkey-virtual-key"), "bad_request", 400),
    ("portkey", "no trace id", _drop_header("x-portkey-trace-id"), "bad_request", 400),
    (
        "router",
        "unprefixed model",
        lambda j: j["request"].update(models=["gpt-4o-mini"]),
        "not_found",
        404,
    ),
]


@pytest.mark.usefixtures("in_repo")
@pytest.mark.parametrize(
    ("server", "case", "mutate", "error_type", "status"),
    BROKEN,
    ids=[f"{b[0]}-{b[1]}" for b in BROKEN],
)
def test_a_wrong_request_is_refused_like_the_server_would(
    server: str,
    case: str,
    mutate: Callable[[dict[str, Any]], None],
    error_type: str,
    status: int,
    tmp_path: Path,
    fake_server: FakeFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = example_job(server)
    fake = start_like(server, job, fake_server, monkeypatch)
    mutate(job)
    out = tmp_path / "out.parquet"
    code = main(
        [
            "run",
            str(write_job(tmp_path, pointed_at(job, fake, out), f"{server}.toml")),
            "--limit",
            str(ROWS),
        ]
    )
    # an unknown model, or 5 refused keys or paths in a row, stop the run (exit 4) with
    # what it got checkpointed; a refused body (400) is the row's own fault, and a run
    # whose every row failed exits 3 (above the default limits.max_error_rate)
    if error_type == "not_found" and "model" in case:
        assert code == 4, case
        df = pl.read_parquet(out.with_name(out.name + ".parts"))
    else:
        assert code == 3, case
        df = pl.read_parquet(out)

    assert df["error_type"].unique().to_list() == [error_type], case
    assert df["http_status"].unique().to_list() == [status]
    assert df["attempts"].unique().to_list() == [1]

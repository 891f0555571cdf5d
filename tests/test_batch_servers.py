"""Batch mode on the documented servers that have the Batch API routes: each example job
runs with ``--batch`` against the fake set up like that server (routes, auth, headers)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli import main
from pipeline.fake import profile
from tests.helpers import FakeFactory, run_job, write_job
from tests.test_servers import KEY, ROWS, example_job, in_repo, pointed_at

BATCH = {"poll_interval_s": 0.05, "max_poll_interval_s": 0.2}
__all__ = ["in_repo"]  # the fixture, shared with the live servers' tests


def batch_ready(job: dict[str, Any]) -> dict[str, Any]:
    """The job with fast polling, and without the per-row headers a batch file cannot carry."""
    job["batch"] = dict(BATCH)
    headers = job["endpoint"].get("headers", {})
    job["endpoint"]["headers"] = {k: v for k, v in headers.items() if "{" not in v}
    return job


@pytest.mark.usefixtures("in_repo")
@pytest.mark.parametrize("server", ["openai", "azure", "portkey", "router", "vllm"])
def test_example_job_runs_in_batch_mode_against_a_server_like_it(
    server: str, tmp_path: Path, fake_server: FakeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = example_job(server)
    variable = job["endpoint"].get("api_key_env")
    if variable is not None:
        monkeypatch.setenv(variable, KEY)
    fake = fake_server(
        profile=profile(server),
        api_key=KEY if variable else None,
        batch_time_scale=0.00005,
        record_requests=True,
    )
    output = tmp_path / "out.parquet"
    frame = run_job(
        tmp_path, batch_ready(pointed_at(job, fake, output)), "--limit", str(ROWS), "--batch"
    )
    models = job["request"].get("models") or [job["request"]["model"]]
    assert frame["status"].to_list() == ["ok"] * ROWS * len(models), frame["error_message"]
    assert frame["model"].to_list() == models * ROWS
    assert frame["batch_id"].n_unique() == len(models)  # one file per model
    paths = {r.path for r in fake.stats.requests}
    root = profile(server).batch_root
    assert f"{root}/files" in paths
    assert f"{root}/batches" in paths
    assert KEY.encode() not in output.read_bytes()


@pytest.mark.usefixtures("in_repo")
def test_azure_batch_lines_must_name_the_deployment(
    tmp_path: Path,
    fake_server: FakeFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    job = example_job("azure")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", KEY)
    azure = dataclasses.replace(
        profile("azure"), chat_path="/openai/deployments/prod-mini/chat/completions"
    )
    fake = fake_server(profile=azure, api_key=KEY)
    job = batch_ready(pointed_at(job, fake, tmp_path / "out.parquet"))
    job["endpoint"]["base_url"] = fake.base_url
    assert main(["run", str(write_job(tmp_path, job)), "--batch", "--limit", "2"]) == 2
    err = capsys.readouterr().err
    assert "batch lines must name the Azure deployment 'prod-mini'" in err
    assert len(err.strip().splitlines()) == 1

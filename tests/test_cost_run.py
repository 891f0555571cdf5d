"""End to end: cost columns, unknown models and the budget stop, against the fake server."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from pipeline.cli import EXIT_BUDGET, main
from pipeline.manifest import read_manifest
from tests.helpers import FakeFactory, make_job, write_job


def test_rows_carry_their_cost_with_cached_and_reasoning_tokens(
    tmp_path: Path,
    fake_server: FakeFactory,
    reviews: Callable[[int], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = fake_server(cached_share=0.5, drop_rate=0.2, error_503_rate=0.1, fault_seed=11)
    out = tmp_path / "out.parquet"
    job = make_job(reviews(60), server.base_url, out, request={"model": "o3-mini"})
    job["prices"] = {"o3-mini": {"input": 1.0, "cached_input": 0.5, "output": 4.0}}

    assert main(["run", str(write_job(tmp_path, job))]) == 0

    df = pl.read_parquet(out)
    assert df["status"].unique().to_list() == ["ok"]
    assert df["cached_tokens"].to_list() == (df["prompt_tokens"] // 2).to_list()
    assert (df["reasoning_tokens"] * 3 == df["completion_tokens"] * 2).all()
    expected = (
        (df["prompt_tokens"] - df["cached_tokens"]) * 1.0
        + df["cached_tokens"] * 0.5
        + df["completion_tokens"] * 4.0
    ) / 1e6
    assert df["cost_usd"].to_list() == pytest.approx(expected.to_list())
    # every dropped connection was sent and never answered: possibly billed, counted apart
    assert df["possibly_billed_attempts"].sum() == server.stats.dropped > 0
    assert df["possibly_billed_attempts"].max() <= df["attempts"].max() - 1
    total = df["cost_usd"].sum()
    printed = capsys.readouterr().out
    assert f"cost ${total:.4f}" in printed
    assert "possibly billed attempts" in printed
    manifest = read_manifest(out)
    assert manifest is not None
    assert manifest.cost_usd == pytest.approx(total, abs=1e-6)
    assert manifest.possibly_billed_attempts == server.stats.dropped


def test_unknown_model_gives_null_cost_and_one_warning(
    tmp_path: Path, fake_server: FakeFactory, reviews: Callable[[int], Path]
) -> None:
    server = fake_server()
    out = tmp_path / "out.parquet"
    log_file = tmp_path / "events.jsonl"
    job = write_job(
        tmp_path, make_job(reviews(30), server.base_url, out, request={"model": "mystery-model-7"})
    )

    assert main(["run", str(job), "--log-file", str(log_file)]) == 0

    df = pl.read_parquet(out)
    assert df["status"].unique().to_list() == ["ok"]
    assert df["cost_usd"].null_count() == 30
    events = [json.loads(line) for line in log_file.read_text().splitlines()]
    unknown = [e for e in events if e["event"] == "price.unknown_model"]
    assert len(unknown) == 1
    assert unknown[0]["model"] == "mystery-model-7"


def test_prices_file_on_the_command_line_wins(
    tmp_path: Path, fake_server: FakeFactory, reviews: Callable[[int], Path]
) -> None:
    server = fake_server()
    out = tmp_path / "out.parquet"
    job = make_job(reviews(5), server.base_url, out, request={"model": "mystery-model-7"})
    job["prices"] = {"mystery-model-7": {"input": 1.0, "output": 1.0}}
    prices = tmp_path / "prices.toml"
    prices.write_text('"mystery-model-7" = { input = 1000000, output = 0 }\n')

    assert main(["run", str(write_job(tmp_path, job)), "--prices", str(prices)]) == 0

    df = pl.read_parquet(out)
    assert df["cost_usd"].to_list() == pytest.approx(df["prompt_tokens"].cast(pl.Float64).to_list())


def test_budget_stops_below_the_limit_then_resumes_with_a_higher_one(
    tmp_path: Path,
    fake_server: FakeFactory,
    reviews: Callable[[int], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = fake_server(latency_s=0.01)
    out = tmp_path / "out.parquet"
    budget, concurrency = 0.25, 8
    job = make_job(
        reviews(200),
        server.base_url,
        out,
        limits={"concurrency": concurrency, "max_cost_usd": budget},
    )
    job["prices"] = {"gpt-4o-mini": {"input": 100.0, "output": 100.0}}  # 0.0001 USD a token

    assert main(["run", str(write_job(tmp_path, job))]) == EXIT_BUDGET

    err = capsys.readouterr().err
    assert "would pass limits.max_cost_usd $0.25" in err
    assert "raise limits.max_cost_usd and run the same command again to resume" in err
    assert not out.exists()
    parts = pl.read_parquet(out.with_name(out.name + ".parts"))
    spent = parts["cost_usd"].sum()
    wave = (
        concurrency * (60 + 32) * 1e-4
    )  # a request in flight costs at most ~60 prompt + 32 output tokens
    assert budget - wave <= spent <= budget
    assert 20 < parts.height < 200
    assert server.stats.received == parts.height
    manifest = read_manifest(out)
    assert manifest is not None
    assert (manifest.exit_code, manifest.complete) == (EXIT_BUDGET, False)
    assert manifest.exit_reason.startswith("budget:")

    job["limits"]["max_cost_usd"] = 100.0
    assert main(["run", str(write_job(tmp_path, job))]) == 0

    df = pl.read_parquet(out)
    assert df.height == 200
    assert df["status"].unique().to_list() == ["ok"]
    assert server.stats.received == 200  # no row was sent twice
    assert df["cost_usd"].sum() == pytest.approx(
        ((df["prompt_tokens"] + df["completion_tokens"]) * 1e-4).sum()
    )
    resumed = read_manifest(out)
    assert resumed is not None
    assert resumed.earlier_cost_usd == pytest.approx(spent, abs=1e-6)


def test_budget_for_a_model_without_a_price_is_refused_before_sending(
    tmp_path: Path,
    fake_server: FakeFactory,
    reviews: Callable[[int], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = fake_server()
    out = tmp_path / "out.parquet"
    job = make_job(
        reviews(5),
        server.base_url,
        out,
        request={"model": "mystery-model-7"},
        limits={"max_cost_usd": 1.0},
    )
    path = write_job(tmp_path, job)

    assert main(["validate", str(path)]) == 2
    assert main(["run", str(path)]) == 2

    err = capsys.readouterr().err.splitlines()
    assert (
        err
        == [
            "error: [limits] max_cost_usd: model 'mystery-model-7' has no known price;"
            " add it under [prices] or with --prices FILE"
        ]
        * 2
    )
    assert server.stats.received == 0

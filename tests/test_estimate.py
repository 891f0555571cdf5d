"""Tests of ``pipeline estimate``: offline counts, extrapolation from a sample, accuracy on the demo data."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from pipeline.cli import main
from pipeline.cost import Price
from pipeline.estimate import PromptCount, Sample, count_prompts, extrapolate, render
from pipeline.requests import RequestBuilder
from pipeline.runner import plan_run
from pipeline.spec import JobSpec, parse_job
from tests.helpers import REPO, FakeFactory, make_job, to_toml, write_job

PRICE = Price(input=1.0, cached_input=0.5, output=2.0, model="m", as_of="2026-01")


def sample(**fields: float) -> Sample:
    values: dict[str, float | str | None] = {
        "rows": 10, "ok_rows": 10, "requests": 12, "prompt_tokens": 1100, "estimated_prompt_tokens": 1000,
        "completion_tokens": 200, "cached_tokens": 275, "latency_s": 0.5, "cost_usd": 0.01, "model": "m",
    }  # fmt: skip
    values.update(fields)
    return Sample(**values)  # type: ignore[arg-type]


def job_with(tmp_path: Path, source: Path, **sections: dict[str, object]) -> JobSpec:
    return parse_job(make_job(source, "http://127.0.0.1:9/v1", tmp_path / "o.parquet", **sections))


def test_count_streams_every_row_and_counts_bad_ones(tmp_path: Path) -> None:
    source = tmp_path / "rows.jsonl"
    source.write_text(
        '{"id": "a", "text": "abcdefgh"}\n{"id": "b", "text": null}\n{"id": "c", "text": "abcd"}\nnot json\n'
    )
    job = job_with(tmp_path, source, input={"id_column": "id", "keep_columns": [], "batch_size": 1})
    plan = plan_run(job)
    builder = RequestBuilder(job.request, prompt_column="text")

    count = count_prompts(plan, builder, keep_ids=1)

    # one user message: chars // 4 + 4 + 3
    assert (count.rows, count.bad_rows, count.prompt_tokens) == (4, 2, (2 + 7) + (1 + 7))
    assert count.by_id == {"a": 9}


def test_extrapolation_from_a_sample(tmp_path: Path, reviews: Callable[[int], Path]) -> None:
    job = job_with(
        tmp_path,
        reviews(1),
        limits={"concurrency": 10, "requests_per_minute": 600, "tokens_per_minute": 60_000},
    )
    count = PromptCount(rows=1000, bad_rows=0, prompt_tokens=50_000, by_id={})
    est = extrapolate(job, count, PRICE, sample())

    assert est.prompt_tokens == 55_000  # x 1.1
    assert est.output_bound == 32_000  # max_tokens 32
    assert est.output_typical == 20_000  # 20 a row
    # 25% cached: 41,250 * 1 + 13,750 * 0.5 + 20,000 * 2 = 88,125 micro-dollars
    assert est.cost_typical == pytest.approx(0.088125)
    assert est.cost_bound == pytest.approx((55_000 + 64_000) / 1e6)
    # 1000 rows at 600/min: 100 s; 87,000 tokens at 60,000/min: 87 s; 1000 x 0.5 s / 10: 50 s
    assert est.limit_floor_s == pytest.approx(100.0)
    assert est.duration_s == pytest.approx(100.0)


def test_without_sample_or_price_or_limits(tmp_path: Path, reviews: Callable[[int], Path]) -> None:
    job = job_with(tmp_path, reviews(1), request={"model": "m", "max_tokens": 100})
    est = extrapolate(job, PromptCount(rows=10, bad_rows=2, prompt_tokens=400, by_id={}), None)

    assert (est.prompt_tokens, est.output_bound, est.output_typical) == (400, 800, 400)
    assert est.cost_typical is None
    assert est.duration_s is None
    text = render(est, job)
    assert "10 (2 cannot become requests)" in text
    assert "cost            unknown: no price for model 'm'" in text
    assert "latency unknown: --sample N measures it" in text


def test_estimate_sends_nothing_without_a_sample(
    tmp_path: Path,
    fake_server: FakeFactory,
    reviews: Callable[[int], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = fake_server()
    job = write_job(tmp_path, make_job(reviews(40), server.base_url, tmp_path / "o.parquet"))

    assert main(["estimate", str(job)]) == 0

    out = capsys.readouterr().out
    assert server.stats.received == 0
    assert "rows            40\n" in out
    assert "at most 1,280 (max_tokens 32)" in out
    assert "[gpt-4o-mini: $0.15 in, $0.075 cached, $0.6 out per million tokens" in out
    assert not (tmp_path / "o.parquet").exists()


def test_a_sample_that_gets_no_answer_falls_back_to_offline_figures(
    tmp_path: Path,
    fake_server: FakeFactory,
    reviews: Callable[[int], Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = fake_server(api_key="sk-right")
    monkeypatch.setenv("TEST_API_KEY", "sk-wrong")
    job = make_job(
        reviews(40),
        server.base_url,
        tmp_path / "o.parquet",
        endpoint={"api_key_env": "TEST_API_KEY"},
    )

    assert main(["estimate", str(write_job(tmp_path, job)), "--sample", "10", "--limit", "30"]) == 0

    out = capsys.readouterr().out
    assert "rows            30\n" in out
    assert "0 answered" in out
    assert "the sample stopped early: the endpoint refuses every request" in out
    assert "no row was answered: the figures above are offline guesses" in out
    assert "offline: about 4 characters a token" in out
    assert server.stats.received <= 10


def _prompt_tokens(text: str) -> int:
    match = re.search(r"prompt tokens +~([\d,]+)", text)
    assert match, text
    return int(match.group(1).replace(",", ""))


def test_sampled_estimate_is_within_ten_percent_on_the_demo_data(
    tmp_path: Path, fake_server: FakeFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo job (its data, request and limits) against a fault-free fake server."""
    server = fake_server(cached_share=0.2)
    demo = tomllib.loads((REPO / "jobs" / "demo.toml").read_text())
    demo["input"]["path"] = str(REPO / demo["input"]["path"])
    demo["endpoint"]["base_url"] = server.base_url
    del demo["fake"]
    out = tmp_path / "demo.parquet"
    demo["output"]["path"] = str(out)
    job = tmp_path / "demo.toml"
    job.write_text(to_toml(demo))

    assert main(["estimate", str(job), "--sample", "20"]) == 0
    estimate = capsys.readouterr().out
    assert server.stats.received == 20
    assert main(["run", str(job)]) == 0

    actual = int(pl.read_parquet(out)["prompt_tokens"].sum())
    estimated = _prompt_tokens(estimate)
    assert abs(estimated - actual) / actual <= 0.10, (estimated, actual)
    # the offline count alone is further off: the sample is what brings it within 10%
    offline = int(re.search(r"offline ([\d,]+) x", estimate).group(1).replace(",", ""))  # type: ignore[union-attr]
    assert offline != estimated

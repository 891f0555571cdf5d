"""Tests of ``pipeline report``: aggregation of a fixed Parquet fixture, the text, the HTML page in a browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from pipeline.cli import main
from pipeline.report import render_html, render_text, summarize
from pipeline.report.summary import bucket_seconds
from tests.helpers import FakeFactory, make_job, write_job

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
EVIL = "<script>alert(1)</script>"


@pytest.fixture
def output(tmp_path: Path) -> Path:
    """11 rows with known numbers: 6 gpt-4o-mini, 2 o3-mini (retried), 1 unpriced, 2 errors."""
    fields = (
        "model",
        "prompt",
        "completion",
        "cached",
        "reasoning",
        "cost",
        "attempts",
        "billed",
        "latency",
        "error",
    )
    table = [
        *[
            ("gpt-4o-mini", 100, 50, 20, 0, 0.001, 1, 0, float(ms), None)
            for ms in (100, 200, 300, 400, 500, 600)
        ],
        *[("o3-mini", 200, 300, 0, 200, 0.01, 2, 1, float(ms), None) for ms in (1000, 2000)],
        (EVIL, 10, 10, 0, 0, None, 1, 0, 50.0, None),
        (None, None, None, None, None, 0.0, 3, 3, None, "timeout"),
        (None, None, None, None, None, 0.0, 6, 0, None, "server_error"),
    ]
    rows = [dict(zip(fields, row, strict=True)) for row in table]
    path = tmp_path / "fixture.parquet"
    pl.DataFrame(
        {
            "id": [f"r{i}" for i in range(len(rows))],
            "status": ["ok" if r["error"] is None else "error" for r in rows],
            "model": [r["model"] for r in rows],
            "prompt_tokens": [r["prompt"] for r in rows],
            "completion_tokens": [r["completion"] for r in rows],
            "cached_tokens": [r["cached"] for r in rows],
            "reasoning_tokens": [r["reasoning"] for r in rows],
            "cost_usd": [r["cost"] for r in rows],
            "attempts": pl.Series([r["attempts"] for r in rows], dtype=pl.Int32),
            "possibly_billed_attempts": pl.Series([r["billed"] for r in rows], dtype=pl.Int32),
            "latency_ms": [r["latency"] for r in rows],
            "error_type": [r["error"] for r in rows],
            "started_at": [T0 + timedelta(seconds=i) for i in range(len(rows))],
            "finished_at": [T0 + timedelta(seconds=i + 1) for i in range(len(rows))],
        },
        schema_overrides={
            "prompt_tokens": pl.Int64,
            "cost_usd": pl.Float64,
            "latency_ms": pl.Float64,
            "model": pl.String,
            "error_type": pl.String,
        },
    ).write_parquet(path)
    return path


def test_aggregation_of_a_fixed_fixture(output: Path) -> None:
    report = summarize(output)

    assert report.rows == 11
    assert report.by_status == {"ok": 9, "error": 2}
    assert report.by_error_type == {"server_error": 1, "timeout": 1}
    assert (report.prompt_tokens, report.completion_tokens, report.total_tokens) == (
        1010,
        910,
        1920,
    )
    assert (report.cached_tokens, report.reasoning_tokens) == (120, 400)
    assert report.cost_usd == pytest.approx(0.026)
    assert report.unpriced_rows == 1
    assert (report.requests, report.possibly_billed_attempts) == (20, 5)
    by_model = [
        (m.model, m.rows, m.prompt_tokens, round(m.cost_usd, 6), m.unpriced_rows)
        for m in report.cost_by_model
    ]
    assert by_model == [
        ("o3-mini", 2, 400, 0.02, 0),
        ("gpt-4o-mini", 6, 600, 0.006, 0),
        ("(none)", 2, 0, 0.0, 0),
        (EVIL, 1, 10, 0.0, 1),
    ]
    # latencies 50 100 200 300 400 500 600 1000 2000, linear between ranks
    assert report.latency_ms == pytest.approx(
        {"p50": 400.0, "p90": 1200.0, "p99": 1920.0, "mean": 5150 / 9, "max": 2000.0}
    )
    histogram = report.latency_histogram
    assert len(histogram) == 24
    assert (histogram[0].low, histogram[-1].high) == pytest.approx((50.0, 2000.0))
    assert [b.count for b in histogram][:2] == [2, 1]  # 50 and 100 | 200
    assert sum(b.count for b in histogram) == 9
    assert report.duration_s == 11.0
    assert report.rows_per_s == pytest.approx(1.0)
    assert report.bucket_s == 1
    assert [(b.ok, b.error) for b in report.timeline] == [(0, 0)] + [(1, 0)] * 9 + [(0, 1)] * 2
    assert [b.requests for b in report.timeline][-2:] == [3, 6]


def test_outputs_without_cost_columns_still_report(tmp_path: Path) -> None:
    path = tmp_path / "old.parquet"
    pl.DataFrame({"id": ["a"], "status": ["ok"], "prompt_tokens": [5]}).write_parquet(path)
    report = summarize(path)
    assert (report.rows, report.prompt_tokens, report.cost_usd, report.timeline) == (1, 5, 0.0, [])
    assert "latency     no answered rows" in render_text(report)


@pytest.mark.parametrize(
    ("span_s", "width"),
    [(0, 1), (11, 1), (100, 5), (3600, 120), (10 * 86400, 21600), (100 * 86400, 3 * 86400)],
)
def test_bucket_widths_are_round(span_s: float, width: int) -> None:
    assert bucket_seconds(span_s) == width


def test_text_summary(output: Path) -> None:
    text = render_text(summarize(output))
    assert "11 rows" in text
    assert "status      ok 9, error 2 (errors: server_error 1, timeout 1)" in text
    assert "prompt 1,010 (cached 120), completion 910 (reasoning 400), total 1,920" in text
    assert (
        "cost        $0.0260 + 1 answered rows without a price; 20 requests, 5 possibly billed"
        in text
    )
    assert re.search(r"o3-mini +2 +400 +600 +\$0\.0200", text)
    assert "latency     p50 400 ms, p90 1,200 ms, p99 1,920 ms" in text
    assert "throughput  1.0 rows/s, 10,473 tokens/min over 11.0 s" in text


def _svg(html: str, chart_id: str) -> str:
    match = re.search(rf'<svg id="{chart_id}".*?</svg>', html, re.S)
    assert match, chart_id
    return match.group(0)


def test_html_is_self_contained_and_escaped(output: Path) -> None:
    html = render_html(summarize(output))
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert not re.search(r"\b(src|href)=|url\(|@import", html)
    assert _svg(html, "cost-by-model").count('<rect class="bar"') == 4
    assert _svg(html, "error-types").count('<rect class="bar"') == 2
    assert _svg(html, "latency-histogram").count('<rect class="bar"') == 24
    timeline = _svg(html, "timeline")
    assert timeline.count('<rect class="bar ok"') == 12
    assert timeline.count('<rect class="bar error"') == 2
    assert "<polyline" in timeline


def test_report_command(output: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "sub" / "report.html"
    assert main(["report", str(output), "--html", str(page)]) == 0
    printed = capsys.readouterr().out
    assert "status      ok 9, error 2" in printed
    assert f"html report: {page}" in printed
    assert page.read_text().startswith("<!DOCTYPE html>")

    assert main(["report", str(tmp_path / "missing.parquet")]) == 2
    assert "missing.parquet: no such output file" in capsys.readouterr().err


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def _headless(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", *args,
        ],
        capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip


def test_html_renders_in_a_headless_browser(output: Path, tmp_path: Path) -> None:
    browser = _browser()
    if browser is None:
        pytest.skip(
            "no chromium or chrome on this machine (.ci/run installs Debian's chromium where apt-get works)"
        )
    page = tmp_path / "report.html"
    page.write_text(render_html(summarize(output)), encoding="utf-8")

    dom = _headless(browser, tmp_path / "profile-dom", "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert _svg(dom.stdout, "cost-by-model").count('<rect class="bar"') == 4
    assert _svg(dom.stdout, "timeline").count('<rect class="bar') == 14
    assert "<script" not in dom.stdout.replace("&lt;script", "")

    shot = tmp_path / "report.png"
    done = _headless(
        browser,
        tmp_path / "profile-shot",
        f"--screenshot={shot}",
        "--window-size=1200,1600",
        page.as_uri(),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(data[16:20], "big") == 1200
    assert len(data) > 30_000  # a blank page compresses to a few kB


def test_report_reads_an_unfinished_runs_part_files(
    tmp_path: Path,
    fake_server: FakeFactory,
    reviews: Callable[[int], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = fake_server()
    out = tmp_path / "out.parquet"
    job = make_job(
        reviews(60), server.base_url, out, limits={"max_cost_usd": 0.0003, "concurrency": 2}
    )
    assert main(["run", str(write_job(tmp_path, job))]) == 6  # budget stop: parts, no output
    assert not out.exists()
    manifest = json.loads(out.with_name("out.manifest.json").read_text())
    capsys.readouterr()

    assert main(["report", str(out)]) == 0
    text = capsys.readouterr().out
    first = text.splitlines()[0]
    assert re.fullmatch(
        rf"{re.escape(str(out))} \(unfinished run: \d+ part files? in {re.escape(str(out))}\.parts\): (\d+) rows",
        first,
    )
    assert first.endswith(f": {manifest['rows_by_status']['ok']} rows")
    assert main(["report", str(out.with_name("out.parquet.parts"))]) == 0
    assert "(unfinished run: " in capsys.readouterr().out
    assert main(["report", str(tmp_path / "never.parquet")]) == 2
    assert "never.parquet: no such output file" in capsys.readouterr().err

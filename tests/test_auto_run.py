"""End to end: ``concurrency = "auto"`` against the fake server's capacity model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeline import report
from pipeline.fake import FakeServer
from tests.helpers import FakeFactory, Reviews, make_job, run_job

AUTO = {"concurrency": "auto"}


def manifest(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(out.with_name(out.stem + ".manifest.json").read_text())
    return data


def run_auto(
    tmp_path: Path, server: FakeServer, source: Path, limits: dict[str, Any], **sections: Any
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run the job; return the manifest's concurrency record and the ``concurrency.changed`` events."""
    out = tmp_path / "out.parquet"
    job = make_job(source, server.base_url, out, limits=AUTO | limits, **sections)
    job["request"]["max_tokens"] = 16
    log = tmp_path / "log.jsonl"
    df = run_job(tmp_path, job, "--log-file", str(log))
    assert df["status"].unique().to_list() == ["ok"]
    events = [json.loads(line) for line in log.read_text().splitlines()]
    changed = [entry for entry in events if entry["event"] == "concurrency.changed"]
    record: dict[str, Any] = manifest(out)["concurrency"]
    return record, changed


def test_it_finds_the_slots_of_a_batching_server(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews
) -> None:
    server = fake_server(slots=4, token_s=0.005, batch_slowdown=0.1)
    record, changed = run_auto(tmp_path, server, reviews(300), {})
    assert 3 <= record["limit"] <= 8
    assert record["high"] >= 5  # it probed above the slots...
    assert server.capacity is not None
    assert server.capacity.peak_queue <= 16  # ...without piling up a queue
    assert changed  # logged when it changed...
    assert len(changed) == record["changes"] < 300 / 8  # ...not per request
    assert {"previous", "limit", "reason"} <= changed[0].keys()


def test_the_summary_and_the_report_show_the_limit_over_time(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews, capsys: pytest.CaptureFixture[str]
) -> None:
    server = fake_server(latency_s=0.03)
    record, _ = run_auto(tmp_path, server, reviews(120), {"max_concurrency": 16})
    low, high, changes = record["low"], record["high"], record["changes"]
    assert (
        f"concurrency auto: limit {record['limit']} at the end (between {low} and {high}, {changes} changes)"
        in capsys.readouterr().out
    )
    out = tmp_path / "out.parquet"
    summary = report.summarize(out)
    assert [list(point) for point in summary.concurrency_history] == record["history"]
    assert f"concurrency auto: limit {record['limit']} at the end" in report.render_text(summary)
    page = report.render_html(summary)
    chart = page[page.index('<svg id="concurrency-limit"') :]
    chart = chart[: chart.index("</svg>")]
    assert chart.count('class="change"') == len(record["history"]) == record["changes"] + 1
    assert f"limit {record['limit']}</title>" in chart
    fixed = tmp_path / "fixed"
    fixed.mkdir()
    job = make_job(reviews(20), server.base_url, fixed / "out.parquet")
    run_job(fixed, job)
    assert 'id="concurrency-limit"' not in report.render_html(
        report.summarize(fixed / "out.parquet")
    )
    assert (
        "concurrency" not in manifest(fixed / "out.parquet")
        or not manifest(fixed / "out.parquet")["concurrency"]
    )


def test_it_never_exceeds_max_concurrency(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews
) -> None:
    server = fake_server(latency_s=0.05)
    record, _ = run_auto(tmp_path, server, reviews(300), {"max_concurrency": 6})
    assert record["limit"] == record["high"] == 6  # latency never grows: it goes to the top
    assert server.stats.peak_in_flight <= 6


def test_it_backs_off_on_503s_and_the_rows_still_end_ok(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews
) -> None:
    server = fake_server(slots=2, token_s=0.002, queue_limit=0)
    record, changed = run_auto(tmp_path, server, reviews(200), {"min_concurrency": 1})
    assert server.stats.overflowed > 0
    assert any(entry["reason"] == "overloaded" for entry in changed)
    assert record["low"] <= 2
    assert server.stats.overflowed < 60  # cut at once, not after dozens of refusals


@pytest.mark.slow
def test_it_backs_off_on_timeouts(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews
) -> None:
    server = fake_server(slots=2, token_s=0.002, queue_limit=0, queue_overflow="hang", hang_s=30.0)
    record, changed = run_auto(tmp_path, server, reviews(120), {}, endpoint={"timeout_s": 0.5})
    assert server.stats.hung > 0
    assert any(entry["reason"] == "overloaded" for entry in changed)
    assert record["limit"] <= 3
    assert server.stats.hung < 20


def test_it_stays_under_the_rate_limits_and_does_not_grow_what_it_cannot_use(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews
) -> None:
    server = fake_server(latency_s=0.02, requests_per_minute=3000, limit_window_s=0.5)
    record, _ = run_auto(
        tmp_path, server, reviews(150), {"requests_per_minute": 3000, "max_concurrency": 256}
    )
    assert server.stats.by_status[429] == 0
    assert record["high"] <= 16  # 50 req/s x 20 ms: about one in flight


@pytest.mark.slow
def test_it_follows_a_capacity_drop_and_recovers(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews
) -> None:
    server = fake_server(slots=8, token_s=0.005, batch_slowdown=0.05, slots_schedule="2:2,7:8")
    record, _ = run_auto(tmp_path, server, reviews(800), {})
    history = [(at, limit) for at, limit in record["history"]]
    before = [limit for at, limit in history if at < 2.0]
    during = [limit for at, limit in history if 2.0 <= at < 7.0]
    after = [limit for at, limit in history if at >= 7.0]
    assert max(before) >= 6, history
    assert min(during) <= 5, history  # followed the drop...
    assert max([*after, record["limit"]]) >= 6, history  # ...and came back (by the end at least)

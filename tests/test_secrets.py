"""A canary API key never reaches a file a run writes, nor its printed lines, even from an
endpoint that echoes the key (whole and OpenAI-masked) into every string it returns."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pipeline.cli import main
from pipeline.fake.leak import masked
from pipeline.redact import Scrubber
from tests.helpers import FakeFactory, make_job, write_job

CANARY = "sk-proj-CANARYc4n4ryC4NARYcanary0123456789abcd"
TOOL = {
    "type": "function",
    "function": {
        "name": "rate",
        "parameters": {"type": "object", "properties": {"stars": {"type": "integer"}}},
    },
}


def _leaks(text: str) -> list[str]:
    """Which forms of the canary appear in ``text``."""
    forms = {"whole": CANARY, "masked": masked(CANARY), "middle": CANARY[8:-4]}
    return [name for name, form in forms.items() if form in text]


@pytest.mark.parametrize(
    "request_extra",
    [{}, {"stream": True}, {"tools": [TOOL]}],
    ids=["plain", "stream", "tools"],
)
def test_canary_key_is_in_no_file_a_run_writes(
    tmp_path: Path,
    fake_server: FakeFactory,
    reviews: Callable[[int], Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    request_extra: dict[str, Any],
) -> None:
    monkeypatch.setenv("CANARY_KEY", CANARY)
    server = fake_server(
        api_key=CANARY, leak_key=True, bad_request_rate=0.2, error_500_rate=0.2, fault_seed=3
    )
    out_dir = tmp_path / "out"
    job = make_job(
        reviews(40),
        server.base_url,
        out_dir / "o.parquet",
        endpoint={"api_key_env": "CANARY_KEY"},
        request=request_extra,
        retry={"max_attempts": 2},
    )
    job_file = write_job(tmp_path, job)
    log_file = out_dir / "run.log"

    code = main(["run", str(job_file), "--log-file", str(log_file)])
    assert main(["report", str(out_dir / "o.parquet"), "--html", str(out_dir / "r.html")]) == 0

    assert code == 0
    frame = pl.read_parquet(out_dir / "o.parquet")
    assert (frame["status"] == "ok").sum() > 0  # the endpoint answered, key and all
    assert (frame["error_type"] == "bad_request").sum() > 0
    assert server.stats.by_status[200] > 0
    written = [p for p in out_dir.rglob("*") if p.is_file()]
    assert {p.name for p in written} >= {"o.parquet", "o.manifest.json", "run.log", "r.html"}
    for path in written:
        assert _leaks(path.read_bytes().decode("utf-8", "replace")) == [], path
    for column in frame.columns:
        assert _leaks(str(frame[column].to_list())) == [], column
    printed = capsys.readouterr()
    assert _leaks(printed.out + printed.err) == []
    assert "***" in "".join(frame["content"].drop_nulls().to_list() + frame["model"].to_list())


def test_scrubber_catches_the_key_whole_and_masked() -> None:
    scrub = Scrubber([CANARY])
    assert scrub(f"got {CANARY}.") == "got ***."
    assert scrub(f"Incorrect API key provided: {masked(CANARY)}.") == (
        "Incorrect API key provided: ***."
    )
    assert scrub(f"key {CANARY[:8]}...{CANARY[-4:]} and {CANARY[:8]}…{CANARY[-4:]}") == (
        "key *** and ***"
    )
    assert (
        scrub("sk-proj- is a prefix; abcd is a suffix") == "sk-proj- is a prefix; abcd is a suffix"
    )
    assert Scrubber(["short"])("a short key") == "a *** key"
    assert Scrubber([None, ""])("nothing to hide") == "nothing to hide"

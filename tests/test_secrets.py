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


def test_an_input_row_cannot_send_a_file_outside_image_dir(
    tmp_path: Path, fake_server: FakeFactory
) -> None:
    server = fake_server(record_requests=True)
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$SECRETHASH:19000:0:99999:7:::\n")
    images = tmp_path / "img"
    images.mkdir()
    (images / "innocent.png").symlink_to(secret)
    (images / "cat.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 8)
    (images / "fake.png").write_text("root:$6$SECRETHASH")
    rows = {
        "review_id": ["a", "b", "c", "d"],
        "text": ["look"] * 4,
        "product_id": ["p"] * 4,
        "image": ["innocent.png", "cat.png", str(secret), "fake.png"],
    }
    pl.DataFrame(rows).write_parquet(tmp_path / "in.parquet")
    job = make_job(
        tmp_path / "in.parquet",
        server.base_url,
        tmp_path / "o.parquet",
        request={"image_column": "image", "image_dir": str(images)},
    )

    assert main(["run", str(write_job(tmp_path, job))]) == 0

    frame = pl.read_parquet(tmp_path / "o.parquet").sort("id")
    assert frame["status"].to_list() == ["error", "ok", "error", "error"]
    assert "outside [request] image_dir" in frame["error_message"][0]
    assert "outside [request] image_dir" in frame["error_message"][2]
    assert "not a PNG, JPEG, GIF or WebP image" in frame["error_message"][3]
    assert server.stats.received == 1
    assert all(b"SECRETHASH" not in r.body for r in server.stats.requests)
    sent = str(server.stats.requests[0].body)
    assert "data:image/png;base64," in sent


def test_image_files_need_an_image_dir(
    tmp_path: Path, fake_server: FakeFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    server = fake_server()
    (tmp_path / "cat.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    pl.DataFrame(
        {"review_id": ["a"], "text": ["x"], "product_id": ["p"], "image": ["cat.png"]}
    ).write_parquet(tmp_path / "in.parquet")
    job = make_job(
        tmp_path / "in.parquet", server.base_url, tmp_path / "o.parquet",
        request={"image_column": "image"},
    )  # fmt: skip
    assert main(["run", str(write_job(tmp_path, job))]) == 0
    frame = pl.read_parquet(tmp_path / "o.parquet")
    assert "local files are read only inside [request] image_dir" in frame["error_message"][0]
    job["request"]["image_dir"] = str(tmp_path / "nope")
    assert (
        main(["run", str(write_job(tmp_path, job)), "--output", str(tmp_path / "p.parquet")]) == 2
    )
    assert "[request] image_dir" in capsys.readouterr().err
    assert server.stats.received == 0


@pytest.mark.parametrize(
    ("host", "warns"),
    [("127.0.0.1", False), ("::1", False), ("localhost", False), ("127.0.0.2", False),
     ("0.0.0.0", True), ("::", True), ("192.168.1.5", True), ("myhost", True)],
)  # fmt: skip
def test_fake_server_warns_when_not_on_loopback(host: str, warns: bool) -> None:
    from pipeline.fake.cli import exposure_warning

    warning = exposure_warning(host)
    assert (warning is not None) == warns
    if warning is not None:
        assert warning.startswith(f"warning: listening on {host}, not a loopback address")


def test_canary_key_is_in_no_part_file_of_a_stopped_run(
    tmp_path: Path,
    fake_server: FakeFactory,
    reviews: Callable[[int], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CANARY_KEY", CANARY)
    server = fake_server(api_key=CANARY, leak_key=True, bad_request_rate=0.2, fault_seed=5)
    out_dir = tmp_path / "out"
    job = make_job(
        reviews(60),
        server.base_url,
        out_dir / "o.parquet",
        endpoint={"api_key_env": "CANARY_KEY"},
        limits={"max_cost_usd": 0.0003, "concurrency": 2},
    )
    assert main(["run", str(write_job(tmp_path, job)), "--log-file", str(out_dir / "run.log")]) == 6

    parts = list((out_dir / "o.parquet.parts").glob("*.parquet"))
    assert parts  # the stopped run's checkpoint
    for path in [p for p in out_dir.rglob("*") if p.is_file()]:
        assert _leaks(path.read_bytes().decode("utf-8", "replace")) == [], path
    frame = pl.read_parquet(parts)
    assert "***" in "".join(frame["response_id"].drop_nulls().to_list())

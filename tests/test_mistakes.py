"""Every user mistake we could think of, through ``pipeline run``: one line, exit 2, no
traceback, nothing sent, nothing written at the output path.

``test_cli.py`` holds the job-file mistakes (unknown keys, bad values, missing columns);
this file adds the mistakes around files, paths, flags and the environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from tests.helpers import REPO, FakeFactory, make_job, write_job, write_jsonl

Job = dict[str, Any]
Mistake = Callable[[Job, Path], list[str]]
"""Changes the job dict (and writes files under the test's folder); returns extra argv."""


def _input_as_output(job: Job, _: Path) -> list[str]:
    return ["--output", job["input"]["path"]]


def _jsonl_input_as_output(job: Job, tmp: Path) -> list[str]:
    path = write_jsonl(tmp / "in.jsonl", [{"review_id": "a", "text": "x", "product_id": "p"}])
    job["input"]["path"] = str(path)
    return ["--output", str(path)]


def _foreign_parquet_at_output(job: Job, tmp: Path) -> list[str]:
    pq.write_table(pa.table({"a": [1, 2]}), tmp / "theirs.parquet")
    return ["--output", str(tmp / "theirs.parquet")]


def _text_file_at_output(job: Job, tmp: Path) -> list[str]:
    (tmp / "notes.parquet").write_text("my notes\n")
    return ["--output", str(tmp / "notes.parquet")]


def _directory_as_output(job: Job, tmp: Path) -> list[str]:
    (tmp / "outdir").mkdir()
    return ["--output", str(tmp / "outdir")]


def _unreadable_jsonl(job: Job, tmp: Path) -> list[str]:
    # reading /proc/self/mem at offset 0 fails with EIO even for root
    (tmp / "broken.jsonl").symlink_to("/proc/self/mem")
    job["input"]["path"] = str(tmp / "broken.jsonl")
    return []


def _non_ascii_key(job: Job, _: Path) -> list[str]:
    job["endpoint"]["api_key_env"] = "TEST_KEY_WITH_NBSP"
    return []


def _empty_jsonl(job: Job, tmp: Path) -> list[str]:
    (tmp / "empty.jsonl").write_text("\n\n")
    job["input"]["path"] = str(tmp / "empty.jsonl")
    return []


def _zero_row_parquet(job: Job, tmp: Path) -> list[str]:
    schema = pa.schema(
        [("review_id", pa.string()), ("text", pa.string()), ("product_id", pa.string())]
    )
    pq.write_table(schema.empty_table(), tmp / "none.parquet")
    job["input"]["path"] = str(tmp / "none.parquet")
    return []


def _garbage_parquet(job: Job, tmp: Path) -> list[str]:
    (tmp / "garbage.parquet").write_bytes(b"PAR1 not really")
    job["input"]["path"] = str(tmp / "garbage.parquet")
    return []


def _csv_input(job: Job, tmp: Path) -> list[str]:
    (tmp / "in.csv").write_text("review_id,text\na,x\n")
    return ["--input", str(tmp / "in.csv")]


def _directory_as_input(job: Job, tmp: Path) -> list[str]:
    (tmp / "indir.parquet").mkdir()
    return ["--input", str(tmp / "indir.parquet")]


def _log_file_under_a_file(job: Job, tmp: Path) -> list[str]:
    (tmp / "afile").write_text("x")
    return ["--log-file", str(tmp / "afile" / "run.log")]


def _missing_price_file(job: Job, tmp: Path) -> list[str]:
    return ["--prices", str(tmp / "nope.json")]


def _non_ascii_header(job: Job, _: Path) -> list[str]:
    job["endpoint"]["headers"] = {"x-team": "caf\u00e9"}
    return []


def _unknown_output_placeholder(job: Job, tmp: Path) -> list[str]:
    job["output"]["path"] = str(tmp / "{when}.parquet")
    return []


def _missing_schema_file(job: Job, tmp: Path) -> list[str]:
    job["request"]["json_schema"] = str(tmp / "absent.json")
    return []


def _jsonl_of_non_objects(job: Job, tmp: Path) -> list[str]:
    write_jsonl(tmp / "lists.jsonl", ["[1, 2]", "[3]"])
    job["input"]["path"] = str(tmp / "lists.jsonl")
    return []


def _jsonl_output(job: Job, tmp: Path) -> list[str]:
    return ["--output", str(tmp / "results.jsonl")]


def _binary_job_file(job: Job, tmp: Path) -> list[str]:
    (tmp / "binary.toml").write_bytes(b"\xff\xfe\x00 not text")
    return ["--job-file-instead", str(tmp / "binary.toml")]


MISTAKES: list[tuple[str, Mistake, str]] = [
    ("output is the parquet input", _input_as_output, "the output path is the input file"),
    ("output is the jsonl input", _jsonl_input_as_output, "the output path is the input file"),
    ("foreign parquet at output", _foreign_parquet_at_output, "is not a pipeline output"),
    ("text file at output", _text_file_at_output, "is not a pipeline output"),
    ("directory as output", _directory_as_output, "the output path is a directory"),
    ("unreadable jsonl", _unreadable_jsonl, "broken.jsonl: cannot read"),
    ("non-ascii api key", _non_ascii_key, "non-ASCII character U+00A0"),
    ("empty jsonl", _empty_jsonl, "empty.jsonl: the input has no rows"),
    ("zero-row parquet", _zero_row_parquet, "none.parquet: the input has no rows"),
    ("garbage parquet", _garbage_parquet, "not a readable Parquet file"),
    ("csv input", _csv_input, "unsupported input type '.csv'"),
    ("empty directory as input", _directory_as_input, "no .parquet or .jsonl files found"),
    ("log file under a file", _log_file_under_a_file, "a part of its folder is a file"),
    ("missing price file", _missing_price_file, "cannot read price file"),
    ("non-ascii header value", _non_ascii_header, "must be plain ASCII"),
    ("unknown output placeholder", _unknown_output_placeholder, "unknown placeholder 'when'"),
    ("missing schema file", _missing_schema_file, "cannot read"),
    ("jsonl of non-objects", _jsonl_of_non_objects, "column 'review_id' not found"),
    ("jsonl output", _jsonl_output, "the output is a Parquet file; name it .parquet"),
    ("binary job file", _binary_job_file, "binary.toml: not a job file: byte 0 is not UTF-8"),
]


@pytest.mark.parametrize(("case", "mistake", "expected"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_user_mistakes_are_one_line_exit_2_no_traceback_nothing_sent(
    tmp_path: Path,
    fake_server: FakeFactory,
    reviews: Callable[[int], Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    mistake: Mistake,
    expected: str,
) -> None:
    server = fake_server()
    monkeypatch.setenv("TEST_KEY_WITH_NBSP", "sk-abc\u00a0def")
    out = tmp_path / "o.parquet"
    job = make_job(reviews(5), server.base_url, out)
    argv = mistake(job, tmp_path)
    job_file = write_job(tmp_path, job)
    if argv[:1] == ["--job-file-instead"]:
        job_file, argv = Path(argv[1]), []
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}

    assert main(["run", str(job_file), *argv]) == 2

    err = capsys.readouterr().err.strip()
    assert expected in err
    assert err.startswith("error: ")
    assert len(err.splitlines()) == 1
    assert "Traceback" not in err
    assert "sk-abc" not in err
    assert server.stats.received == 0
    after = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert after == {k: v for k, v in before.items() if k in after}
    assert set(after) <= set(before)  # no output, lock or parts folder was created


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_permission_denied_jsonl_is_one_line(
    tmp_path: Path, fake_server: FakeFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    server = fake_server()
    path = write_jsonl(
        tmp_path / "locked.jsonl", [{"review_id": "a", "text": "x", "product_id": "p"}]
    )
    path.chmod(0)
    job = make_job(path, server.base_url, tmp_path / "o.parquet")
    assert main(["run", str(write_job(tmp_path, job))]) == 2
    assert "locked.jsonl: cannot read: Permission denied" in capsys.readouterr().err
    assert server.stats.received == 0


def _pipeline(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_report_into_a_closed_pipe_is_one_line_not_a_traceback(
    tmp_path: Path, fake_server: FakeFactory, reviews: Callable[[int], Path]
) -> None:
    server = fake_server()
    out = tmp_path / "o.parquet"
    assert main(["run", str(write_job(tmp_path, make_job(reviews(5), server.base_url, out)))]) == 0
    reader, writer = os.pipe()
    os.close(reader)  # `| head` that already exited
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", "report", str(out)],
            cwd=REPO,
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(writer)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: standard output was closed early (broken pipe)"


def test_a_run_into_a_closed_pipe_keeps_its_own_exit_code(
    tmp_path: Path, fake_server: FakeFactory, reviews: Callable[[int], Path]
) -> None:
    server = fake_server()
    out = tmp_path / "o.parquet"
    job = write_job(tmp_path, make_job(reviews(5), server.base_url, out))
    reader, writer = os.pipe()
    os.close(reader)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", "run", str(job)],
            cwd=REPO,
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(writer)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert out.exists()


def test_version_flag() -> None:
    done = _pipeline("--version")
    assert done.returncode == 0
    assert done.stdout.startswith("pipeline ")
    from pipeline import __version__

    assert done.stdout.strip() == f"pipeline {__version__}"


def test_date_without_a_date_placeholder_warns(
    tmp_path: Path,
    fake_server: FakeFactory,
    reviews: Callable[[int], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = fake_server()
    job = write_job(tmp_path, make_job(reviews(3), server.base_url, tmp_path / "o.parquet"))
    assert main(["run", str(job), "--date", "2026-01-02"]) == 0
    err = capsys.readouterr().err
    assert "warning: --date 2026-01-02 has no effect: [output] path has no {date}" in err
    dated = make_job(reviews(3), server.base_url, tmp_path / "{date}.parquet")
    assert main(["run", str(write_job(tmp_path, dated, "dated.toml")), "--date", "2026-01-02"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert (tmp_path / "2026-01-02.parquet").exists()


def test_grace_flag_must_be_a_finite_non_negative_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for bad in ["-1", "nan", "inf", "soon"]:
        with pytest.raises(SystemExit) as exited:
            main(["run", str(tmp_path / "job.toml"), "--grace-s", bad])
        assert exited.value.code == 2
        assert "--grace-s" in capsys.readouterr().err


def test_every_fake_server_flag_has_help_text() -> None:
    from pipeline.fake.cli import _parser

    for action in _parser()._actions:
        assert action.help, action.option_strings

"""The command line: validate, user errors as one line with exit code 2, nothing sent."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pipeline.cli import main
from tests.helpers import FakeFactory, make_job, write_job, write_jsonl


def test_validate_accepts_a_good_job(
    tmp_path: Path,
    fake_server: FakeFactory,
    reviews: Callable[[int], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = fake_server()
    job = write_job(tmp_path, make_job(reviews(12), server.base_url, tmp_path / "o.parquet"))

    assert main(["validate", str(job)]) == 0

    assert "ok: 12 rows" in capsys.readouterr().out
    assert server.stats.received == 0


def _duplicate_ids(tmp_path: Path) -> Path:
    path = tmp_path / "dupes.parquet"
    pl.DataFrame(
        {"review_id": ["a", "b", "a"], "text": ["x", "y", "z"], "product_id": ["p"] * 3}
    ).write_parquet(path)
    return path


def _no_text_column(tmp_path: Path) -> Path:
    path = tmp_path / "notext.parquet"
    pl.DataFrame({"review_id": ["a"], "body": ["x"], "product_id": ["p"]}).write_parquet(path)
    return path


BAD_JOBS: list[tuple[str, Callable[[dict[str, Any], Path], None], str]] = [
    ("unknown key", lambda j, _: j["limits"].update(bogus=1), "[limits] bogus: unknown key"),
    ("zero concurrency", lambda j, _: j["limits"].update(concurrency=0), "[limits] concurrency"),
    (
        "negative rpm",
        lambda j, _: j["limits"].update(requests_per_minute=-5),
        "[limits] requests_per_minute",
    ),
    ("wrong type", lambda j, _: j["request"].update(max_tokens="many"), "[request] max_tokens"),
    (
        "missing input",
        lambda j, t: j["input"].update(path=str(t / "nope.parquet")),
        "input file not found",
    ),
    (
        "missing column",
        lambda j, t: j["input"].update(path=str(_no_text_column(t))),
        "column 'text' not found",
    ),
    (
        "missing keep column",
        lambda j, _: j["input"].update(keep_columns=["nope"]),
        "column 'nope' not found",
    ),
    (
        "missing template column",
        lambda j, _: j["request"].update(template="{nope}"),
        "column 'nope' not found",
    ),
    (
        "duplicate ids",
        lambda j, t: j["input"].update(path=str(_duplicate_ids(t))),
        "duplicate id 'a'",
    ),
    (
        "unset key variable",
        lambda j, _: j["endpoint"].update(api_key_env="SURELY_UNSET_KEY_VAR"),
        "SURELY_UNSET_KEY_VAR",
    ),
    (
        "key with a line ending",
        lambda j, _: j["endpoint"].update(api_key_env="TEST_KEY_WITH_CR"),
        "control character",
    ),
    ("keep clashes", lambda j, _: j["input"].update(keep_columns=["text", "status"]), "'status'"),
    (
        "keep clashes optional",
        lambda j, _: j["input"].update(keep_columns=["ttft_ms"]),
        "'ttft_ms' is already an output column",
    ),
    (
        "missing header column",
        lambda j, _: j["endpoint"].update(headers={"x-trace": "{id}-{trace}"}),
        "column 'trace' not found",
    ),
    (
        "missing image column",
        lambda j, _: j["request"].update(image_column="picture"),
        "column 'picture' not found",
    ),
    (
        "missing seed column",
        lambda j, _: j["request"].update(seed_column="s"),
        "column 's' not found",
    ),
    (
        "missing model column",
        lambda j, _: j["request"].pop("model") and j["request"].update(model_column="m"),
        "column 'm' not found",
    ),
]


@pytest.mark.parametrize(("case", "mutate", "expected"), BAD_JOBS, ids=[c[0] for c in BAD_JOBS])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_user_errors_are_one_line_exit_2_and_send_nothing(
    tmp_path: Path,
    fake_server: FakeFactory,
    reviews: Callable[[int], Path],
    capsys: pytest.CaptureFixture[str],
    command: str,
    case: str,
    mutate: Callable[[dict[str, Any], Path], None],
    expected: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if command == "validate" and "key" in case:
        pytest.skip("validate sends nothing and needs no key: test_validate_needs_no_key")
    server = fake_server()
    monkeypatch.setenv("TEST_KEY_WITH_CR", "sk-abc\r")
    out = tmp_path / "o.parquet"
    job = make_job(reviews(5), server.base_url, out)
    mutate(job, tmp_path)

    assert main([command, str(write_job(tmp_path, job))]) == 2

    err = capsys.readouterr().err.strip()
    assert expected in err
    assert len(err.splitlines()) == 1
    assert "Traceback" not in err
    assert server.stats.received == 0
    assert not out.exists()


def _bad_rows(tmp_path: Path) -> Path:
    return write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"review_id": "a", "text": "fine", "product_id": "p"},
            {"review_id": "b", "text": None, "product_id": "p"},
            "{not json",
            {"review_id": "c", "text": "  ", "product_id": "p"},
            {"review_id": "d", "text": None, "product_id": "p"},
            "[1, 2]",
            {"review_id": "e", "text": "fine", "product_id": "p", "seed": "x"},
        ],
    )


def test_validate_builds_every_request_and_counts_bad_rows_by_reason(
    tmp_path: Path, fake_server: FakeFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    server = fake_server()
    job = make_job(_bad_rows(tmp_path), server.base_url, tmp_path / "o.parquet")
    job["endpoint"]["api_key_env"] = "SURELY_UNSET_KEY_VAR"
    path = write_job(tmp_path, job)

    assert main(["validate", str(path)]) == 0
    captured = capsys.readouterr()
    assert "5 bad rows: 7 rows from" in captured.out
    lines = captured.out.splitlines()
    assert lines[1] == "5 rows will be error rows (bad_input), never sent:"
    assert lines[2].split() == [
        "2", "prompt", "column", "'text'", "is", "null", "(first:", f"{tmp_path}/mixed.jsonl:", "line", "2)"
    ]  # fmt: skip
    assert "not valid JSON (first:" in captured.out
    assert "prompt column 'text' is empty" in captured.out
    assert "not a JSON object" in captured.out
    assert "note: environment variable SURELY_UNSET_KEY_VAR" in captured.err
    assert main(["validate", str(path), "--strict"]) == 2
    assert server.stats.received == 0


def test_validate_counts_rows_a_run_turns_into_bad_input(
    tmp_path: Path, fake_server: FakeFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    server = fake_server()
    job = make_job(_bad_rows(tmp_path), server.base_url, tmp_path / "o.parquet")
    path = write_job(tmp_path, job)
    assert main(["validate", str(path)]) == 0
    said = int(capsys.readouterr().out.split(" bad rows")[0].rsplit(" ", 1)[-1])

    assert main(["run", str(path)]) == 0

    frame = pl.read_parquet(tmp_path / "o.parquet")
    assert said == (frame["error_type"] == "bad_input").sum()
    assert server.stats.received == len(frame) - said


def test_unwritable_output_is_caught_before_sending(
    tmp_path: Path,
    fake_server: FakeFactory,
    reviews: Callable[[int], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = fake_server()
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    job = write_job(tmp_path, make_job(reviews(5), server.base_url, blocker / "o.parquet"))

    assert main(["run", str(job)]) == 2

    assert "cannot write output" in capsys.readouterr().err
    assert server.stats.received == 0


def test_bad_toml_and_missing_job_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("name = \n")
    assert main(["validate", str(broken)]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "absent.toml")]) == 2
    assert "cannot read job file" in capsys.readouterr().err


def test_bad_limit_flag_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", str(tmp_path / "job.toml"), "--limit", "0"])
    assert exited.value.code == 2
    assert "must be positive" in capsys.readouterr().err


def test_public_surface_is_pinned() -> None:
    import pipeline

    assert sorted(pipeline.__all__) == [
        "JobSpec",
        "Outcome",
        "PipelineError",
        "PromptRow",
        "RunOptions",
        "RunResult",
        "RunSummary",
        "Runner",
        "UserError",
        "__version__",
        "load_job",
        "plan_run",
        "run_job",
        "run_on_ray",
    ]

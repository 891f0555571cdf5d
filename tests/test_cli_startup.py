"""Start-up: each command imports only the machinery it needs (no timing: which modules).

``pipeline --help`` must not load polars, pyarrow, pydantic or the HTTP stack (it took
about a second when ``import pipeline`` imported everything); ``validate`` and
``estimate`` without ``--sample`` send nothing, so they must not load the HTTP stack or
the fake server, nor does ``merge``; a plain run must not load Ray or ``jsonschema``. Each check runs the
CLI in a fresh interpreter and lists what it loaded. The wall times are
``python -m tests.bench i``'s.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pyarrow.parquet as pq
import pytest

import pipeline
import pipeline.runner
from pipeline.absent import UNUSED_IN_A_RUN
from pipeline.cli import main
from tests.helpers import make_job, write_job

HEAVY = (
    "aiohttp",
    "anyio",
    "httpx",
    "jsonschema",
    "numpy",
    "pipeline.client",
    "pipeline.fake",
    "pipeline.runner.lifecycle",
    "pipeline.runner.run",
    "polars",
    "pyarrow",
    "pydantic",
    "ray",
    "structlog",
    "tenacity",
)
"""What ``pipeline --help`` must not import."""

HTTP_STACK = (
    "aiohttp",
    "httpx",
    "jsonschema",
    "pipeline.client",
    "pipeline.fake",
    "pipeline.runner.run",
    "ray",
    "tenacity",
)
"""What ``validate`` and ``estimate`` (a job without a JSON schema, no sample) must not import."""

_PROBE = """
import json, sys
from pipeline.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "loaded": sorted(m for m in %r if m in sys.modules)}))
"""


_PROGRAM = ("code = main(sys.argv[1:])", "code = main()")
"""The probe as the ``pipeline`` program runs: ``main`` reads ``sys.argv`` itself."""


def _loaded(cwd: Path, *argv: str, program: bool = False) -> tuple[int, list[str]]:
    """Run ``pipeline ARGV`` in a fresh interpreter (``program``: as the ``pipeline``
    command does, else as a call of ``main``): its exit code and the HEAVY modules (and
    the HTTP stack's, those a run keeps out) it imported."""
    probe = _PROBE % (tuple(sorted({*HEAVY, *HTTP_STACK, *UNUSED_IN_A_RUN})),)
    if program:
        probe = probe.replace(*_PROGRAM)
    done = subprocess.run(
        [sys.executable, "-c", probe, *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stdout, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    return result["code"], result["loaded"]


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["--version"], ["run", "--help"], ["validate", "--help"], ["cache", "--help"]],
)
def test_help_loads_no_heavy_module(tmp_path: Path, argv: list[str]) -> None:
    code, loaded = _loaded(tmp_path, *argv)

    assert code == 0
    assert [m for m in loaded if m in HEAVY] == []


def test_a_bad_flag_is_rejected_before_anything_heavy_is_loaded(tmp_path: Path) -> None:
    code, loaded = _loaded(tmp_path, "run", "job.toml", "--limit", "0")

    assert code == 2
    assert [m for m in loaded if m in HEAVY] == []


def test_validate_loads_no_http_stack_and_starts_no_fake(
    tmp_path: Path, reviews: Callable[[int], Path]
) -> None:
    job = write_job(tmp_path, make_job(reviews(5), "fake", tmp_path / "out.parquet"))

    code, loaded = _loaded(tmp_path, "validate", str(job))

    assert code == 0
    assert "pyarrow" in loaded  # it did read the input: the probe sees what is imported
    assert [m for m in loaded if m in HTTP_STACK] == []


def test_estimate_without_a_sample_loads_no_http_stack(
    tmp_path: Path, reviews: Callable[[int], Path]
) -> None:
    job = write_job(tmp_path, make_job(reviews(5), "fake", tmp_path / "out.parquet"))

    code, loaded = _loaded(tmp_path, "estimate", str(job))

    assert code == 0
    assert [m for m in loaded if m in HTTP_STACK] == []


def test_a_run_loads_no_ray_and_no_jsonschema_without_a_schema(
    tmp_path: Path, reviews: Callable[[int], Path]
) -> None:
    output = tmp_path / "out.parquet"
    job = write_job(tmp_path, make_job(reviews(1), "fake", output))

    code, loaded = _loaded(tmp_path, "run", str(job))

    assert code == 0
    assert output.exists()
    assert {"aiohttp", "httpx", "pipeline.fake"} <= set(loaded)
    assert "ray" not in loaded
    assert "jsonschema" not in loaded


def test_merge_loads_no_http_stack(tmp_path: Path, reviews: Callable[[int], Path]) -> None:
    job = write_job(tmp_path, make_job(reviews(4), "fake", tmp_path / "out.parquet"))
    for index in range(2):
        assert main(["run", str(job), "--shard", f"{index}/2"]) == 0

    code, loaded = _loaded(tmp_path, "merge", str(job), program=True)

    assert code == 0
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 4
    assert [m for m in loaded if m in HTTP_STACK] == []
    assert [m for m in loaded if m in UNUSED_IN_A_RUN] == []


def test_the_run_program_keeps_unused_modules_out(
    tmp_path: Path, reviews: Callable[[int], Path]
) -> None:
    # pyarrow would load numpy and pandas when installed (the [ray] extra installs them)
    output = tmp_path / "out.parquet"
    job = write_job(tmp_path, make_job(reviews(3), "fake", output))

    code, loaded = _loaded(tmp_path, "run", str(job), program=True)

    assert code == 0
    assert pq.read_table(output).num_rows == 3
    assert "pyarrow" in loaded
    assert [m for m in loaded if m in UNUSED_IN_A_RUN] == []


@pytest.mark.skipif(importlib.util.find_spec("pandas") is None, reason="needs pandas installed")
def test_main_called_from_python_leaves_numpy_and_pandas_importable(
    tmp_path: Path, reviews: Callable[[int], Path]
) -> None:
    output = tmp_path / "out.parquet"
    job = write_job(tmp_path, make_job(reviews(1), "fake", output))
    probe = (
        "import sys; from pipeline.cli import main; main(sys.argv[1:]); "
        "import pyarrow, pandas; print(pyarrow.table({'a': [1]}).to_pandas().shape)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, "run", str(job)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "(1, 1)"


def test_keep_out_makes_a_module_look_not_installed() -> None:
    probe = (
        "import sys; from pipeline.absent import keep_out; keep_out(['os', 'csv']);"
        "import os;\n"
        "try:\n import csv\nexcept ModuleNotFoundError as e: print('absent', e.name)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )

    assert done.stdout.strip() == "absent csv"  # os was loaded already: it stays


def test_import_pipeline_loads_nothing_heavy() -> None:
    probe = f"import pipeline, sys; print([m for m in {HEAVY!r} if m in sys.modules])"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )

    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("package", [pipeline, pipeline.runner])
def test_every_lazy_public_name_resolves(package: ModuleType) -> None:
    names: list[str] = package.__all__

    for name in names:
        assert getattr(package, name) is not None, name
    assert set(names) <= set(dir(package))


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        _ = pipeline.no_such_name  # type: ignore[attr-defined]
    from pipeline import fake  # a submodule is still found as one

    assert fake.__name__ == "pipeline.fake"


def test_the_lazy_names_are_the_modules_objects() -> None:
    from pipeline.cli import run_job
    from pipeline.runner.lifecycle import RunOptions
    from pipeline.spec import JobSpec

    assert pipeline.run_job is run_job
    assert pipeline.JobSpec is JobSpec
    assert pipeline.runner.RunOptions is RunOptions
    assert pipeline.RunOptions is RunOptions

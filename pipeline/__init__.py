"""Asynchronous batch pipeline for OpenAI-compatible chat completions.

``run_job`` runs a job from Python as ``pipeline run`` does (lock, manifest, exit code);
``run_on_ray`` as ``pipeline run --engine ray`` does, on a path or a Ray Dataset.

The names are imported on first use (``pipeline.lazy``): every ``pipeline`` command
imports this package first, and ``pipeline --help`` needs none of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pipeline.allocators  # noqa: F401  (first, before pyarrow loads: its pool, one malloc arena)
from pipeline.lazy import lazy_exports

if TYPE_CHECKING:
    from pipeline.cli import run_job, run_on_ray
    from pipeline.errors import PipelineError, UserError
    from pipeline.records import Outcome, PromptRow, RunSummary
    from pipeline.runner import Runner, RunOptions, RunResult, plan_run
    from pipeline.spec import JobSpec, load_job
    from pipeline.version import __version__

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "pipeline.cli": ("run_job", "run_on_ray"),
        "pipeline.errors": ("PipelineError", "UserError"),
        "pipeline.records": ("Outcome", "PromptRow", "RunSummary"),
        "pipeline.runner": ("Runner", "RunOptions", "RunResult", "plan_run"),
        "pipeline.spec": ("JobSpec", "load_job"),
        "pipeline.version": ("__version__",),
    },
)

__all__ = [
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

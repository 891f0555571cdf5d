"""Asynchronous batch pipeline for OpenAI-compatible chat completions.

``run_job`` runs a job from Python as ``pipeline run`` does (lock, manifest, exit code);
``run_on_ray`` as ``pipeline run --engine ray`` does, on a path or a Ray Dataset.
"""

import pipeline.allocators  # noqa: F401  (first, before pyarrow loads: its pool, one malloc arena)
from pipeline.cli import run_job, run_on_ray
from pipeline.errors import PipelineError, UserError
from pipeline.records import Outcome, PromptRow, RunSummary
from pipeline.runner import Runner, RunOptions, RunResult, plan_run
from pipeline.spec import JobSpec, load_job
from pipeline.version import __version__

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

"""Asynchronous batch pipeline for OpenAI-compatible chat completions.

``run_job`` runs a job from Python as ``pipeline run`` does (lock, manifest, exit code);
``run_on_ray`` as ``pipeline run --engine ray`` does, on a path or a Ray Dataset.
"""

import os

# Before pyarrow loads (it reads this once): Arrow's default pool, mimalloc, kept about
# 60 MB of thread-cached pages through a 20,000-row merge while Arrow itself held 3 MB;
# the system allocator gives them back. A value the user set wins.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

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

"""Asynchronous batch pipeline for OpenAI-compatible chat completions."""

__version__ = "0.1.0"  # first: modules imported below read it

from pipeline.errors import PipelineError, UserError
from pipeline.records import Outcome, PromptRow, RunSummary
from pipeline.runner import Runner, plan_run
from pipeline.spec import JobSpec, load_job

__all__ = [
    "JobSpec",
    "Outcome",
    "PipelineError",
    "PromptRow",
    "RunSummary",
    "Runner",
    "UserError",
    "__version__",
    "load_job",
    "plan_run",
]

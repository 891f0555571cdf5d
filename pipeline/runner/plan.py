"""Everything resolved before the first request: the input checked, the output path filled in,
the API key and the price table looked up."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.budget import budget_price
from pipeline.errors import JobError, OutputError
from pipeline.prices import PriceTable
from pipeline.requests import split_headers, template_fields
from pipeline.results import RESERVED_COLUMNS, shard_output
from pipeline.sources import DatasetSource, Shard, Source, open_source
from pipeline.spec import JobSpec, LimitsSpec
from pipeline.structured import Extraction, load_extraction


@dataclass(frozen=True, slots=True)
class RunPlan:
    """Everything resolved before the first request: paths, source, row count."""

    job: JobSpec
    input_path: Path
    output_path: Path
    source: Source
    rows: int
    limit: int | None
    run_id: str
    extraction: Extraction | None = None
    warnings: tuple[str, ...] = field(default=())
    """Things the user should hear about before the run (printed as ``warning: ...``)."""
    shard: Shard | None = None
    """The shard this run is (its output is the shard's, beside the job's)."""
    input_files: tuple[Path, ...] = ()
    """Every file of the input (all shards'), for the manifest's fingerprint."""


def new_run_id(now: datetime | None = None) -> str:
    """A run id that sorts by time: ``20261123T010203Z-1a2b3c``."""
    moment = now or datetime.now(UTC)
    return f"{moment:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def resolve_output(template: str, name: str, *, run_id: str, day: date | None = None) -> Path:
    """Fill ``{name}``, ``{date}`` (UTC today, or ``day``), ``{datetime}`` and ``{run_id}``."""
    now = datetime.now(UTC)
    values = {
        "name": name,
        "date": (day or now.date()).isoformat(),
        "datetime": now.strftime("%Y-%m-%dT%H%M%SZ"),
        "run_id": run_id,
    }
    try:
        return Path(template.format_map(values))
    except (KeyError, ValueError) as exc:
        raise JobError(
            f"[output] path: unknown placeholder {exc} (use {{name}}, {{date}}, {{datetime}} or {{run_id}})"
        ) from None


def value_columns(job: JobSpec) -> list[str]:
    """Input columns the request builder reads (so each is checked to exist before the run)."""
    names: list[str] = []
    if job.input.messages_column:
        names.append(job.input.messages_column)
    if job.input.prompt_column:
        names.append(job.input.prompt_column)
    if job.request.template:
        names.extend(template_fields(job.request.template))
    request = job.request
    names.extend(c for c in (request.model_column, request.seed_column, request.image_column) if c)
    _, header_templates = split_headers(job.endpoint.headers)
    if header_templates is not None:
        names.extend(header_templates.columns())
    return list(dict.fromkeys(names))


def optional_columns(job: JobSpec) -> list[str]:
    """The optional output columns this job fills: choices (n > 1), tool_calls, ttft_ms."""
    request = job.request
    wanted = {
        "choices": request.choices > 1,
        "tool_calls": request.tools is not None,
        "ttft_ms": request.stream,
    }
    return [name for name, on in wanted.items() if on]


def plan_run(
    job: JobSpec,
    *,
    input_path: Path | None = None,
    output_path: Path | None = None,
    limit: int | None = None,
    day: date | None = None,
    shard: Shard | None = None,
) -> RunPlan:
    """Open and check the input (only the shard's share of it), resolve the output (the
    shard's); raises ``UserError`` on any mistake."""
    extraction = load_extraction(job.request)
    taken = set(RESERVED_COLUMNS) | set(extraction.output_schema.names if extraction else ())
    clash = sorted(set(job.input.keep_columns) & taken)
    if clash:
        raise JobError(f"[input] keep_columns: {clash[0]!r} is already an output column")
    image_dir = job.request.image_dir
    if image_dir is not None and not Path(image_dir).is_dir():
        raise JobError(f"[request] image_dir: {image_dir} is not a folder")
    source_path = input_path or Path(job.input.path)
    source = open_source(
        source_path,
        id_column=job.input.id_column,
        value_columns=value_columns(job),
        keep_columns=job.input.keep_columns,
        batch_size=job.input.batch_size,
        shard=shard,
    )
    if shard is not None:
        _check_shardable(job, output_path, limit)
    preflight = source.preflight(limit)
    run_id = new_run_id()
    output = output_path or resolve_output(job.output.path, job.name, run_id=run_id, day=day)
    if shard is not None:
        output = shard_output(output, shard.name)
    files = source.files if isinstance(source, DatasetSource) else [source_path]
    for file in files:
        check_output(output, file)
    warnings: list[str] = []
    if day is not None and (output_path is not None or "{date}" not in job.output.path):
        where = "--output" if output_path is not None else "[output] path"
        warnings.append(f"--date {day.isoformat()} has no effect: {where} has no {{date}}")
    return RunPlan(
        job,
        source_path,
        output,
        source,
        preflight.rows,
        limit,
        run_id,
        extraction,
        warnings=tuple(warnings),
        shard=shard,
        input_files=tuple(files),
    )


_OTHER_FORMATS = frozenset({".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".txt", ".toml"})
"""Output suffixes of formats the pipeline does not write."""
_OUTPUT_MARKS = frozenset({"id", "status", "request_hash"})
"""Columns every pipeline output has: a Parquet file without them is someone else's."""


def check_output(output: Path, input_path: Path) -> None:
    """The output path is writable as a pipeline output: not the input, not a directory, and
    not a file that some other program wrote (it would be replaced). Raises ``OutputError``."""
    if output.is_dir():
        raise OutputError(f"{output}: the output path is a directory; name a .parquet file")
    if output.exists() and input_path.exists() and output.samefile(input_path):
        raise OutputError(f"{output}: the output path is the input file; choose another path")
    if output.suffix.lower() in _OTHER_FORMATS:
        raise OutputError(
            f"{output}: the output is a Parquet file; name it .parquet, not {output.suffix}"
        )
    if not output.exists():
        return
    try:
        names = set(pq.read_schema(output).names)
    except (OSError, pa.ArrowInvalid):
        names = set()
    if not _OUTPUT_MARKS.issubset(names):
        raise OutputError(
            f"{output}: exists and is not a pipeline output (it would be replaced);"
            " move it away or choose another output path"
        )


def _check_shardable(job: JobSpec, output_path: Path | None, limit: int | None) -> None:
    """Every shard must agree on the output: no per-run placeholders, no ``--limit``."""
    if limit is not None:
        raise JobError("--limit cannot be combined with --shard (it counts rows of one process)")
    if output_path is None and any(p in job.output.path for p in ("{datetime}", "{run_id}")):
        raise JobError(
            "[output] path: {datetime} and {run_id} differ between shards; use {date} or --output"
        )


def shared_limits(job: JobSpec, share: float) -> JobSpec:
    """The job with ``share`` of its requests/min, tokens/min and budget (a shard's part)."""
    limits = job.limits

    def part(value: int | None) -> int | None:
        return None if value is None else max(1, int(value * share))

    scaled = LimitsSpec.model_validate(
        {
            **limits.model_dump(),
            "requests_per_minute": part(limits.requests_per_minute),
            "tokens_per_minute": part(limits.tokens_per_minute),
            "max_cost_usd": None if limits.max_cost_usd is None else limits.max_cost_usd * share,
        }
    )
    return job.model_copy(update={"limits": scaled})


def models_of(job: JobSpec) -> list[str | None]:
    """The models each row is sent to: ``models``, else one (``model``, or per row: None)."""
    return [*job.request.models] if job.request.models else [None]


def api_key_for(job: JobSpec) -> str | None:
    """The API key from the variable the job names; a missing variable is a user error."""
    name = job.endpoint.api_key_env
    if name is None:
        return None
    value = os.environ.get(name)
    if not value:
        raise JobError(f"environment variable {name} (named by [endpoint] api_key_env) is not set")
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise JobError(
            f"environment variable {name} holds a control character (a line ending from an env file?)"
        )
    odd = next((char for char in value if not char.isascii()), None)
    if odd is not None:
        raise JobError(
            f"environment variable {name} holds a non-ASCII character U+{ord(odd):04X}"
            " (pasted from a web page?); API keys are plain ASCII"
        )
    return value


def job_prices(job: JobSpec, price_file: Path | None) -> PriceTable:
    """The run's price table; a budget for a model without a price is a user error."""
    prices = PriceTable.for_job(job.prices, price_file)
    for model in [job.request.model] if job.request.model else job.request.models or []:
        budget_price(job.limits.max_cost_usd, model, prices)
    return prices

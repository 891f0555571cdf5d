"""Aggregation of an output file with polars: what ``pipeline report`` prints and draws.

Only the columns the report needs are read. Outputs written before a column existed
(``cost_usd`` and friends) read as nulls. Percentiles interpolate linearly between
ranks; latency covers rows that have one (answered rows). Throughput is rows and
tokens over the span from the first row's start to the last row's finish, which
spans every run that contributed rows to the file. The in-flight limit over time
(``concurrency = "auto"``) is the manifest's, so that of the last run only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from pipeline.errors import InputError
from pipeline.manifest import read_manifest
from pipeline.results import parts_dir

_COLUMNS: dict[str, pl.DataType] = {
    "id": pl.String(),
    "status": pl.String(),
    "model": pl.String(),
    "prompt_tokens": pl.Int64(),
    "completion_tokens": pl.Int64(),
    "cached_tokens": pl.Int64(),
    "reasoning_tokens": pl.Int64(),
    "cost_usd": pl.Float64(),
    "attempts": pl.Int64(),
    "possibly_billed_attempts": pl.Int64(),
    "latency_ms": pl.Float64(),
    "error_type": pl.String(),
    "started_at": pl.Datetime("us", "UTC"),
    "finished_at": pl.Datetime("us", "UTC"),
    "cache_hit": pl.Boolean(),
    "cached_cost_usd": pl.Float64(),
}
_NICE_SECONDS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)
MAX_BUCKETS = 48
HISTOGRAM_BINS = 24
NO_MODEL = "(none)"


@dataclass(frozen=True, slots=True)
class ModelCost:
    """One model's rows, tokens and cost."""

    model: str
    rows: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    unpriced_rows: int


@dataclass(frozen=True, slots=True)
class LatencyBin:
    """One bin ``[low, high)`` ms of the latency histogram (the last one also holds everything above)."""

    low: float
    high: float
    count: int


@dataclass(frozen=True, slots=True)
class TimeBin:
    """One bin ``[start_s, start_s + bucket_s)`` of the timeline: rows finished in it, and the requests they took."""

    start_s: float
    ok: int
    error: int
    requests: int


@dataclass(frozen=True, slots=True)
class Report:
    """Everything the text summary and the HTML page show."""

    path: str
    rows: int
    by_status: dict[str, int]
    by_error_type: dict[str, int]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    cost_usd: float
    unpriced_rows: int
    requests: int
    possibly_billed_attempts: int
    cost_by_model: list[ModelCost]
    latency_ms: dict[str, float]
    latency_histogram: list[LatencyBin]
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float
    timeline: list[TimeBin]
    bucket_s: int
    cache_hits: int = 0
    cache_saved_usd: float = 0.0
    """Rows answered from the response cache, and what their answers cost when bought."""
    concurrency_history: tuple[tuple[float, int], ...] = ()
    """The in-flight limit of the last run with ``concurrency = "auto"``: (seconds since that
    run started, limit) at each change, from the manifest beside the output (empty: none)."""

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    @property
    def rows_per_s(self) -> float:
        """Rows finished per second over the run's span."""
        return self.rows / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def tokens_per_min(self) -> float:
        """Tokens per minute over the run's span."""
        return self.total_tokens / self.duration_s * 60 if self.duration_s > 0 else 0.0


def result_files(path: Path) -> list[Path]:
    """The files holding ``path``'s results: the output file; or, for a run that has not
    finished (no output file yet), its part files in ``<output>.parts/`` (the folder itself
    may be given), oldest first."""
    if path.is_dir() and path.name.endswith(".parts"):
        folder = path
    elif not path.exists() and parts_dir(path).is_dir():
        folder = parts_dir(path)
    elif not path.exists():
        raise InputError(f"{path}: no such output file (and no {parts_dir(path).name} folder)")
    else:
        return [path]
    parts = sorted(folder.glob("part-*.parquet"))
    if not parts:
        raise InputError(f"{path}: no output file and no part files in {folder}")
    return parts


def read_output(path: Path) -> pl.DataFrame:
    """The report's columns of an output file (or of an unfinished run's part files: the
    latest result of each row and request hash); ``InputError`` when it is not one."""
    files = result_files(path)
    frames = [_read_file(file) for file in files]
    frame = pl.concat(frames) if len(frames) > 1 else frames[0]
    if len(files) > 1 or files[0] != path:
        frame = frame.unique(subset=["id", "_hash"], keep="last", maintain_order=True)
    return frame.drop("_hash")


def _read_file(path: Path) -> pl.DataFrame:
    try:
        names = set(pq.read_schema(path).names)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read as Parquet: {exc}") from None
    missing = {"id", "status"} - names
    if missing:
        raise InputError(f"{path}: not a pipeline output (no {sorted(missing)[0]!r} column)")
    present = [name for name in _COLUMNS if name in names]
    frame = pl.read_parquet(
        path, columns=present + (["request_hash"] if "request_hash" in names else [])
    )
    return frame.with_columns(
        [pl.col(n).cast(t) for n, t in _COLUMNS.items() if n in names]
        + [pl.lit(None, dtype=t).alias(n) for n, t in _COLUMNS.items() if n not in names]
        + [
            (pl.col("request_hash") if "request_hash" in names else pl.lit(None))
            .cast(pl.String)
            .alias("_hash")
        ]
    ).select([*_COLUMNS, "_hash"])


def _counts(frame: pl.DataFrame, column: str) -> dict[str, int]:
    rows = frame.group_by(column).len().sort(["len", column], descending=[True, False]).iter_rows()
    return {str(key): int(count) for key, count in rows}


def _int(value: object) -> int:
    return int(value) if isinstance(value, int | float) else 0


def bucket_seconds(span_s: float, buckets: int = MAX_BUCKETS) -> int:
    """The smallest round bucket width that splits ``span_s`` into at most ``buckets``."""
    for width in _NICE_SECONDS:
        if span_s / width <= buckets:
            return width
    return math.ceil(span_s / buckets / 86400) * 86400


def latency_histogram(latency: pl.Series, bins: int = HISTOGRAM_BINS) -> list[LatencyBin]:
    """Equal bins from the smallest latency to the largest, or to 1.5 x p99 when a long tail would squash the rest."""
    values = latency.drop_nulls()
    if values.is_empty():
        return []
    low, top = float(values.min()), float(values.max())  # type: ignore[arg-type]
    p99 = float(values.quantile(0.99, "linear") or top)
    high = p99 * 1.5 if top - low > (p99 - low) * 3 else top
    width = (high - low) / bins if high > low else 1.0
    index = ((values - low) / width).floor().clip(0, bins - 1).cast(pl.Int64)
    counts = dict(index.value_counts().iter_rows())
    return [
        LatencyBin(low + i * width, low + (i + 1) * width, int(counts.get(i, 0)))
        for i in range(bins)
    ]


def summarize(path: Path) -> Report:
    """Read an output file (or an unfinished run's part files) and aggregate it."""
    df = read_output(path)
    files = result_files(path)
    label = str(path)
    if files != [path]:
        count = f"{len(files)} part file{'s' if len(files) != 1 else ''}"
        label += f" (unfinished run: {count} in {files[0].parent})"
    totals = _totals(df)
    latency = df["latency_ms"].drop_nulls()
    started, finished = totals["started_at"], totals["finished_at"]
    span = (
        (finished - started).total_seconds()
        if started is not None and finished is not None
        else 0.0
    )
    width = bucket_seconds(span)
    return Report(
        path=label,
        rows=df.height,
        by_status=_counts(df, "status"),
        by_error_type=_error_types(df),
        prompt_tokens=_int(totals["prompt_tokens"]),
        completion_tokens=_int(totals["completion_tokens"]),
        cached_tokens=_int(totals["cached_tokens"]),
        reasoning_tokens=_int(totals["reasoning_tokens"]),
        cost_usd=float(totals["cost_usd"] or 0.0),
        unpriced_rows=_int(totals["unpriced"]),
        requests=_int(totals["attempts"]),
        possibly_billed_attempts=_int(totals["possibly_billed_attempts"]),
        cost_by_model=_cost_by_model(df),
        latency_ms=_latency_stats(latency),
        latency_histogram=latency_histogram(latency),
        started_at=started,
        finished_at=finished,
        duration_s=span,
        timeline=_timeline(df, started, width),
        bucket_s=width,
        cache_hits=_int(totals["cache_hits"]),
        cache_saved_usd=float(totals["cached_cost_usd"] or 0.0),
        concurrency_history=concurrency_history(path),
    )


def concurrency_history(path: Path) -> tuple[tuple[float, int], ...]:
    """The auto concurrency limit over time of the run that wrote ``path`` last (its manifest)."""
    manifest = read_manifest(path)
    record = manifest.concurrency if manifest is not None else None
    if not isinstance(record, dict) or not isinstance(record.get("history"), list):
        return ()
    points = []
    for point in record["history"]:
        if isinstance(point, list) and len(point) == 2:
            at, limit = point
            if isinstance(at, int | float) and isinstance(limit, int):
                points.append((float(at), limit))
    return tuple(points)


def _unpriced() -> pl.Expr:
    """Rows answered without a cost (a model missing from the price table)."""
    return (pl.col("cost_usd").is_null() & (pl.col("status") == "ok")).sum().alias("unpriced")


def _totals(frame: pl.DataFrame) -> dict[str, Any]:
    """Token, cost and request sums, and the first start and last finish."""
    return frame.select(
        pl.col("prompt_tokens").sum(),
        pl.col("completion_tokens").sum(),
        pl.col("cached_tokens").sum(),
        pl.col("reasoning_tokens").sum(),
        pl.col("cost_usd").sum(),
        _unpriced(),
        pl.col("attempts").sum(),
        pl.col("possibly_billed_attempts").sum(),
        pl.col("started_at").min(),
        pl.col("finished_at").max(),
        pl.col("cache_hit").sum().alias("cache_hits"),
        pl.col("cached_cost_usd").sum(),
    ).row(0, named=True)


def _error_types(frame: pl.DataFrame) -> dict[str, int]:
    """Rows not ok per error type (``unknown`` when none was recorded)."""
    failed = frame.filter(pl.col("status") != "ok")
    return _counts(failed.with_columns(pl.col("error_type").fill_null("unknown")), "error_type")


def _cost_by_model(frame: pl.DataFrame) -> list[ModelCost]:
    """Rows, tokens and cost per model, dearest first."""
    by_model = (
        frame.with_columns(pl.col("model").fill_null(NO_MODEL))
        .group_by("model")
        .agg(
            pl.len().alias("rows"),
            pl.col("prompt_tokens").sum(),
            pl.col("completion_tokens").sum(),
            pl.col("cost_usd").sum(),
            _unpriced(),
        )
        .sort(["cost_usd", "rows", "model"], descending=[True, True, False])
    )
    return [
        ModelCost(str(m), int(r), _int(p), _int(c), float(cost or 0.0), int(u))
        for m, r, p, c, cost, u in by_model.iter_rows()
    ]


def _latency_stats(latency: pl.Series) -> dict[str, float]:
    """p50, p90, p99, mean and max of the latencies (nothing when there are none)."""
    stats: dict[str, float] = {}
    if latency.is_empty():
        return stats
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        stats[name] = float(latency.quantile(q, "linear") or 0.0)
    stats["mean"] = float(latency.mean() or 0.0)  # type: ignore[arg-type]
    stats["max"] = float(latency.max() or 0.0)  # type: ignore[arg-type]
    return stats


def _timeline(frame: pl.DataFrame, started: datetime | None, width: int) -> list[TimeBin]:
    """Rows finished per ``width``-second bucket since ``started``, empty buckets included."""
    if started is None:
        return []
    buckets = (
        frame.filter(pl.col("finished_at").is_not_null())
        .with_columns(
            (
                (pl.col("finished_at") - started).dt.total_microseconds() // (width * 1_000_000)
            ).alias("b")
        )
        .group_by("b")
        .agg(
            (pl.col("status") == "ok").sum().alias("ok"),
            (pl.col("status") != "ok").sum().alias("error"),
            pl.col("attempts").sum().alias("requests"),
        )
    )
    found = {int(b): (int(ok), int(err), int(req)) for b, ok, err, req in buckets.iter_rows()}
    timeline: list[TimeBin] = []
    for b in range(max(found, default=-1) + 1):
        ok, err, req = found.get(b, (0, 0, 0))
        timeline.append(TimeBin(b * width, ok, err, req))
    return timeline

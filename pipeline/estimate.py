"""``pipeline estimate``: rows, tokens, cost and duration of a job before running it.

Without a sample nothing is sent: the input is streamed through the job's request
builder and each prompt is counted offline at about four characters a token plus
per-message overheads (``requests.estimate_prompt_tokens``, the figure the rate
limiter starts from). No BPE tokenizer is used: ``tiktoken`` downloads its
vocabulary at run time, and no offline one ships inside a wheel we depend on.

``--sample N`` runs the job for real on its first N rows (same client, limiter and
retries, into the job's own output location as part files that the real run reuses),
then scales the offline count by the ratio of
measured to estimated prompt tokens on those rows, and takes the typical output
length, the share of cached prompt tokens and the latency from them.

Output tokens are bounded by ``max_tokens`` per row; the typical figure is the
sample's mean, or without a sample a guess (half of ``max_tokens``, else 256).
The cost range runs from typical output with the sample's caching to every row
using ``max_tokens`` with nothing cached. Duration is the slowest of: rows /
requests_per_minute, tokens charged (prompt + ``max_tokens``) / tokens_per_minute,
and rows x latency / concurrency (latency from the sample, or the fake server's
settings; else unknown).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import anyio
import polars as pl

from pipeline.cost import Price, attempt_ceiling, tokens_cost
from pipeline.errors import BadRowError
from pipeline.humanize import clock, usd
from pipeline.lock import OutputLock
from pipeline.prices import PriceTable
from pipeline.requests import RequestBuilder, estimate_prompt_tokens
from pipeline.runner import RunPlan, plan_run
from pipeline.spec import JobSpec

_GUESS_WITHOUT_MAX_TOKENS = 256


@dataclass(frozen=True, slots=True)
class PromptCount:
    """What streaming the input through the request builder found."""

    rows: int
    bad_rows: int
    prompt_tokens: int
    by_id: dict[str, int]


@dataclass(frozen=True, slots=True)
class Sample:
    """What N real requests measured."""

    rows: int
    ok_rows: int
    requests: int
    prompt_tokens: int
    estimated_prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    latency_s: float | None
    cost_usd: float | None
    model: str | None
    stopped: str | None = None

    @property
    def prompt_ratio(self) -> float:
        """Measured prompt tokens per estimated one."""
        return (
            self.prompt_tokens / self.estimated_prompt_tokens
            if self.estimated_prompt_tokens
            else 1.0
        )

    @property
    def completion_mean(self) -> float:
        """Output tokens per answered row."""
        return self.completion_tokens / self.ok_rows if self.ok_rows else 0.0

    @property
    def cached_share(self) -> float:
        """Share of prompt tokens the server reported as cached."""
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


@dataclass(frozen=True, slots=True)
class Estimate:
    """The figures ``pipeline estimate`` prints."""

    rows: int
    bad_rows: int
    prompt_tokens: int
    offline_prompt_tokens: int
    output_bound: int | None
    output_typical: int
    price: Price | None
    cost_typical: float | None
    cost_bound: float | None
    duration_s: float | None
    limit_floor_s: float
    latency_s: float | None
    latency_source: str | None
    sample: Sample | None


def count_prompts(plan: RunPlan, builder: RequestBuilder, *, keep_ids: int = 0) -> PromptCount:
    """Stream the input; offline prompt tokens in total (and per id for the first ``keep_ids`` rows)."""
    rows = bad = tokens = 0
    by_id: dict[str, int] = {}
    for batch in plan.source.batches(plan.limit):
        for row in batch:
            rows += 1
            if row.problem is not None:
                bad += 1
                continue
            try:
                count = estimate_prompt_tokens(builder.messages(row))
            except BadRowError:
                bad += 1
                continue
            tokens += count
            if len(by_id) < keep_ids:
                by_id[row.id] = count
    return PromptCount(rows, bad, tokens, by_id)


async def run_sample(
    plan: RunPlan, n: int, *, api_key: str | None, prices: PriceTable, base_url: str | None = None
) -> Sample:
    """Send the job's first ``n`` rows for real and measure them.

    The answers are paid for, so they are kept: the sample runs into the job's own
    output location, under its lock, as part files (not merged), which the real run
    reuses like those of an interrupted run; results already there are reused, not sent.
    """
    from pipeline.runner import Runner  # the HTTP stack: only when a sample is sent

    job = plan.job
    builder = RequestBuilder.for_job(job)
    limit = min(n, plan.limit) if plan.limit is not None else n
    sample_plan = plan_run(
        job, input_path=plan.input_path, output_path=plan.output_path, limit=limit
    )
    counted = await anyio.to_thread.run_sync(
        partial(count_prompts, sample_plan, builder, keep_ids=limit)
    )
    estimated = counted.by_id
    with OutputLock(plan.output_path):
        runner = Runner(sample_plan, api_key=api_key, base_url=base_url, prices=prices, merge=False)
        summary = await runner.run()
        df = await anyio.to_thread.run_sync(
            _sampled_results, runner.writer.earlier_results(), list(estimated)
        )
    ok = df.filter(
        pl.col("prompt_tokens").is_not_null() & pl.col("completion_tokens").is_not_null()
    )
    models = ok["model"].drop_nulls().mode().to_list()
    return Sample(
        rows=df.height,
        ok_rows=ok.height,
        requests=summary.requests_sent,
        prompt_tokens=int(ok["prompt_tokens"].sum()),
        estimated_prompt_tokens=sum(estimated.get(i, 0) for i in ok["id"].to_list()),
        completion_tokens=int(ok["completion_tokens"].sum()),
        cached_tokens=int(ok["cached_tokens"].fill_null(0).sum()),
        latency_s=float(ok["latency_ms"].mean()) / 1000.0 if ok.height else None,  # type: ignore[arg-type]
        cost_usd=None if df["cost_usd"].null_count() else float(df["cost_usd"].sum()),
        model=models[0] if models else None,
        stopped=None if summary.complete else summary.reason,
    )


_SAMPLE_COLUMNS = {
    "id": pl.String,
    "status": pl.String,
    "model": pl.String,
    "prompt_tokens": pl.Int64,
    "completion_tokens": pl.Int64,
    "cached_tokens": pl.Int64,
    "latency_ms": pl.Float64,
    "cost_usd": pl.Float64,
}


def _sampled_results(files: list[Path], ids: list[str]) -> pl.DataFrame:
    """The latest result of each sampled row among the output's results files."""
    wanted = pl.Series(ids, dtype=pl.String)
    frames = [pl.DataFrame(schema=_SAMPLE_COLUMNS)]
    for path in files:
        names = pl.read_parquet_schema(path)
        frames.append(
            pl.scan_parquet(path)
            .filter(pl.col("id").is_in(wanted))
            .select(
                (pl.col(name) if name in names else pl.lit(None)).cast(kind).alias(name)
                for name, kind in _SAMPLE_COLUMNS.items()
            )
            .collect()
        )
    return pl.concat(frames).unique(subset="id", keep="last", maintain_order=True)


def extrapolate(
    job: JobSpec, count: PromptCount, price: Price | None, sample: Sample | None = None
) -> Estimate:
    """The estimate for the whole input from the offline count and, if any, the sample."""
    sendable = count.rows - count.bad_rows
    prompt = round(
        count.prompt_tokens * (sample.prompt_ratio if sample and sample.ok_rows else 1.0)
    )
    max_tokens = job.request.max_tokens
    bound = sendable * max_tokens if max_tokens is not None else None
    if sample is not None and sample.ok_rows:
        typical = round(sendable * sample.completion_mean)
    else:
        typical = sendable * (
            max_tokens // 2 if max_tokens is not None else _GUESS_WITHOUT_MAX_TOKENS
        )
    cost_typical = cost_bound = None
    if price is not None:
        cached = prompt * (sample.cached_share if sample else 0.0)
        cost_typical = tokens_cost(price, prompt, typical, cached_tokens=cached)
        if bound is not None:
            cost_bound = attempt_ceiling(price, prompt, bound)
    latency, source = _latency(job, sample)
    limits = job.limits
    floors = [0.0]
    if limits.requests_per_minute:
        floors.append(sendable / limits.requests_per_minute * 60.0)
    if limits.tokens_per_minute:
        charged = prompt + (bound if bound is not None else typical)
        floors.append(charged / limits.tokens_per_minute * 60.0)
    floor = max(floors)
    duration = (
        max(floor, sendable * latency / limits.most_in_flight) if latency is not None else None
    )
    return Estimate(
        rows=count.rows,
        bad_rows=count.bad_rows,
        prompt_tokens=prompt,
        offline_prompt_tokens=count.prompt_tokens,
        output_bound=bound,
        output_typical=typical,
        price=price,
        cost_typical=cost_typical,
        cost_bound=cost_bound,
        duration_s=duration,
        limit_floor_s=floor,
        latency_s=latency,
        latency_source=source,
        sample=sample,
    )


def _latency(job: JobSpec, sample: Sample | None) -> tuple[float | None, str | None]:
    if sample is not None and sample.latency_s is not None:
        return sample.latency_s, "measured in the sample"
    if job.endpoint.is_fake:
        return (job.fake.latency_ms + job.fake.jitter_ms / 2) / 1000.0, "the fake server's settings"
    return None, None


def render(estimate: Estimate, job: JobSpec) -> str:
    """The estimate as the lines ``pipeline estimate`` prints."""
    lines = [
        _rows_line(estimate),
        _prompt_line(estimate),
        _output_line(estimate, job),
        _cost_line(estimate, job),
        _duration_line(estimate, job),
    ]
    if estimate.sample is not None:
        lines += _sample_lines(estimate.sample)
    return "\n".join(lines)


def _rows_line(estimate: Estimate) -> str:
    bad = f" ({estimate.bad_rows:,} cannot become requests)" if estimate.bad_rows else ""
    return f"rows            {estimate.rows:,}{bad}"


def _prompt_line(estimate: Estimate) -> str:
    sample = estimate.sample
    if sample is not None and sample.ok_rows:
        how = f"offline {estimate.offline_prompt_tokens:,} x {sample.prompt_ratio:.3f} measured on {sample.ok_rows} sampled rows"
    else:
        how = "offline: about 4 characters a token; --sample N measures it"
    return f"prompt tokens   ~{estimate.prompt_tokens:,} ({how})"


def _output_line(estimate: Estimate, job: JobSpec) -> str:
    sample = estimate.sample
    if sample is not None and sample.ok_rows:
        typical_how = f"sample mean {sample.completion_mean:.1f} a row"
    elif job.request.max_tokens is not None:
        typical_how = "a guess: half of max_tokens"
    else:
        typical_how = f"a guess: {_GUESS_WITHOUT_MAX_TOKENS} a row"
    bound = (
        f"at most {estimate.output_bound:,} (max_tokens {job.request.max_tokens})"
        if estimate.output_bound is not None
        else "no upper bound (set request.max_tokens)"
    )
    return f"output tokens   {bound}; typical ~{estimate.output_typical:,} ({typical_how})"


def _cost_line(estimate: Estimate, job: JobSpec) -> str:
    price = estimate.price
    if price is None or estimate.cost_typical is None:
        return f"cost            unknown: no price for model {job.request.model!r} (add it under [prices] or --prices FILE)"
    high = (
        f" to {usd(estimate.cost_bound)}"
        if estimate.cost_bound is not None
        else " (no upper bound without max_tokens)"
    )
    caveat = " (uncertain figures)" if price.uncertain else ""
    return (
        f"cost            ~{usd(estimate.cost_typical)}{high}  [{price.model}: ${price.input:g} in, ${price.cached_input:g} cached,"
        f" ${price.output:g} out per million tokens, as of {price.as_of or 'unknown'}{caveat}]"
    )


def batch_cost_line(estimate: Estimate, job: JobSpec) -> str:
    """The cost line of the same job in batch mode (``estimate`` made with batch prices)."""
    price = estimate.price
    if price is None or estimate.cost_typical is None:
        return f"batch cost      unknown: no price for model {job.request.model!r}"
    high = f" to {usd(estimate.cost_bound)}" if estimate.cost_bound is not None else ""
    return (
        f"batch cost      ~{usd(estimate.cost_typical)}{high}  [Batch API: ${price.input:g} in,"
        f" ${price.cached_input:g} cached, ${price.output:g} out per million tokens;"
        f" done within the {job.batch.completion_window} completion window]"
    )


def _limits_text(job: JobSpec) -> str:
    """The job's concurrency and rate limits, as the duration line quotes them."""
    limits = job.limits
    rates = ", ".join(
        text
        for text in (
            f"{limits.requests_per_minute:,} req/min" if limits.requests_per_minute else "",
            f"{limits.tokens_per_minute:,} tok/min" if limits.tokens_per_minute else "",
        )
        if text
    )
    concurrency = (
        f"concurrency auto (at most {limits.max_concurrency})"
        if limits.auto
        else f"concurrency {limits.concurrency}"
    )
    return concurrency + (f", {rates}" if rates else "")


def _duration_line(estimate: Estimate, job: JobSpec) -> str:
    where = _limits_text(job)
    if estimate.duration_s is not None and estimate.latency_s is not None:
        return f"duration        ~{clock(estimate.duration_s)} ({where}; latency {estimate.latency_s:.2f} s, {estimate.latency_source})"
    floor = (
        f"at least {clock(estimate.limit_floor_s)} under the rate limits; "
        if estimate.limit_floor_s
        else ""
    )
    return f"duration        {floor}latency unknown: --sample N measures it ({where})"


def _sample_lines(sample: Sample) -> list[str]:
    cost = f", cost {usd(sample.cost_usd)}" if sample.cost_usd is not None else ""
    lines = [
        f"sample          {sample.rows} rows sent ({sample.requests} requests, {sample.ok_rows} answered{cost})"
    ]
    if sample.stopped:
        lines.append(f"                the sample stopped early: {sample.stopped}")
    if not sample.ok_rows:
        lines.append("                no row was answered: the figures above are offline guesses")
    return lines

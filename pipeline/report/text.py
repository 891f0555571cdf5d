"""The terminal summary of a report."""

from __future__ import annotations

from pipeline.humanize import usd
from pipeline.report.summary import Report


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def render_text(report: Report) -> str:
    """Rows by status and error type, tokens, cost by model, latency, throughput."""
    status = ", ".join(f"{name} {count:,}" for name, count in report.by_status.items())
    errors = ", ".join(f"{name} {count:,}" for name, count in report.by_error_type.items())
    lines = [
        f"{report.path}: {report.rows:,} rows",
        f"status      {status}" + (f" (errors: {errors})" if errors else ""),
        f"tokens      prompt {report.prompt_tokens:,} (cached {report.cached_tokens:,}),"
        f" completion {report.completion_tokens:,} (reasoning {report.reasoning_tokens:,}), total {report.total_tokens:,}",
    ]
    cost = f"cost        {usd(report.cost_usd)}"
    if report.unpriced_rows:
        cost += f" + {report.unpriced_rows:,} answered rows without a price"
    cost += f"; {report.requests:,} requests, {report.possibly_billed_attempts:,} possibly billed (sent, never answered in full)"
    lines.append(cost)
    if report.cache_hits:
        lines.append(
            f"cache       {report.cache_hits:,} rows answered from the cache,"
            f" saved {usd(report.cache_saved_usd)} (what they cost when bought)"
        )
    if report.cost_by_model:
        width = max(len("model"), *(len(m.model) for m in report.cost_by_model))
        lines.append(
            f"  {'model':<{width}}  {'rows':>9}  {'prompt':>12}  {'completion':>12}  {'cost':>10}"
        )
        for m in report.cost_by_model:
            unpriced = f"  ({m.unpriced_rows:,} without a price)" if m.unpriced_rows else ""
            lines.append(
                f"  {m.model:<{width}}  {m.rows:>9,}  {m.prompt_tokens:>12,}  {m.completion_tokens:>12,}  {usd(m.cost_usd):>10}{unpriced}"
            )
    if report.latency_ms:
        lat = report.latency_ms
        lines.append(
            f"latency     p50 {lat['p50']:,.0f} ms, p90 {lat['p90']:,.0f} ms, p99 {lat['p99']:,.0f} ms"
            f" (mean {lat['mean']:,.0f}, max {lat['max']:,.0f})"
        )
    else:
        lines.append("latency     no answered rows")
    lines.append(
        f"throughput  {report.rows_per_s:,.1f} rows/s, {report.tokens_per_min:,.0f} tokens/min over {_seconds(report.duration_s)}"
    )
    if report.concurrency_history:
        limits = [limit for _, limit in report.concurrency_history]
        lines.append(
            f"concurrency auto: limit {limits[-1]} at the end of the last run"
            f" (between {min(limits)} and {max(limits)}, {len(limits) - 1} changes)"
        )
    return "\n".join(lines)

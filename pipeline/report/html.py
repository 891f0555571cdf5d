"""A self-contained HTML report: inline CSS and SVG drawn here, no scripts, nothing fetched.

Charts (each an ``<svg>`` with an id, one ``<rect class="bar">`` per bar, a
``<title>`` tooltip on each): ``cost-by-model`` and ``error-types`` (horizontal
bars), ``latency-histogram``, ``timeline`` (rows ok and in error per time bucket,
stacked, with the requests they took as a line), and for ``concurrency = "auto"`` runs
``concurrency-limit`` (the in-flight limit over time, a step line). Every text from
the data is escaped.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from html import escape

from pipeline.humanize import clock, usd
from pipeline.report.summary import LatencyBin, Report, TimeBin

WIDTH = 520
WIDE = 1080
_OK, _ERROR, _COST, _LATENCY, _REQUESTS = "#2f9e44", "#e03131", "#1971c2", "#7048e8", "#f08c00"
_LIMIT = "#0c8599"

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#212529;background:#f8f9fa;margin:0}
main{max-width:1120px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:0 0 8px}
.sub{color:#6c757d;margin:0 0 20px;word-break:break-all}
.kpis{display:grid;grid-template-columns:repeat(6,1fr);gap:12px;margin-bottom:20px}
.kpi{background:#fff;border:1px solid #dee2e6;border-radius:8px;padding:10px 12px}
.kpi b{display:block;font-size:20px}.kpi span{color:#6c757d;font-size:12px}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:16px;align-items:start}
.card{background:#fff;border:1px solid #dee2e6;border-radius:8px;padding:14px;margin-bottom:16px}
.wide{grid-column:1/-1}
svg{display:block;max-width:100%;height:auto}svg text{font:11px system-ui,sans-serif;fill:#495057}
table{border-collapse:collapse;width:100%}th,td{padding:4px 8px;border-bottom:1px solid #e9ecef;text-align:right}
th:first-child,td:first-child{text-align:left}th{color:#6c757d;font-weight:600}
.legend span{display:inline-block;margin-right:14px;font-size:12px}.legend i{display:inline-block;width:10px;height:10px;margin-right:4px}
"""

_LEGEND = (
    f'<div class="legend"><span><i style="background:{_OK}"></i>rows ok</span>'
    f'<span><i style="background:{_ERROR}"></i>rows in error</span>'
    f'<span><i style="background:{_REQUESTS}"></i>requests sent</span></div>'
)


def _nice(value: float) -> float:
    """The smallest 1, 2 or 5 x 10^k at least ``value`` (1 for nothing)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return float(step * power)
    return float(10 * power)


def _num(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:g}" if value == int(value) else f"{value:.3g}"


def _empty(chart_id: str, width: int, text: str) -> str:
    return (
        f'<svg id="{chart_id}" viewBox="0 0 {width} 60" width="{width}" height="60" role="img">'
        f'<text x="{width / 2}" y="34" text-anchor="middle">{escape(text)}</text></svg>'
    )


def hbars(chart_id: str, items: list[tuple[str, float, str]], color: str, empty: str) -> str:
    """Horizontal bars: (label, value, value as text) each."""
    if not items:
        return _empty(chart_id, WIDTH, empty)
    label_w, value_w, row_h, top = 170, 80, 26, 8
    height = top * 2 + row_h * len(items)
    scale = max(value for _, value, _ in items) or 1.0
    span = WIDTH - label_w - value_w
    parts = [
        f'<svg id="{chart_id}" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" role="img">'
    ]
    for i, (label, value, shown) in enumerate(items):
        y = top + i * row_h
        w = max(1.0, span * value / scale) if value > 0 else 0.0
        short = label if len(label) <= 26 else label[:25] + "\u2026"
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end">{escape(short)}</text>'
            f'<rect class="bar" x="{label_w}" y="{y + 4}" width="{w:.1f}" height="{row_h - 8}" fill="{color}" rx="2">'
            f"<title>{escape(label)}: {escape(shown)}</title></rect>"
            f'<text x="{label_w + w + 6:.1f}" y="{y + 17}">{escape(shown)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _axes(left: int, top: int, plot_w: float, plot_h: float, y_max: float) -> list[str]:
    ticks = 4 if f"{y_max:e}".startswith("2") else 5  # steps of 0.5, or 0.2 and 1: round labels
    parts = []
    for t in range(ticks + 1):
        value = y_max * t / ticks
        y = top + plot_h - plot_h * t / ticks
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e9ecef"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_num(value)}</text>'
        )
    return parts


def histogram(chart_id: str, bins: list[LatencyBin]) -> str:
    """Latency histogram: rows per latency bin (ms)."""
    if not bins:
        return _empty(chart_id, WIDTH, "no answered rows")
    left, top, bottom, height = 46, 10, 34, 240
    plot_w, plot_h = WIDTH - left - 10, height - top - bottom
    y_max = _nice(max(b.count for b in bins))
    bar_w = plot_w / len(bins)
    parts = [
        f'<svg id="{chart_id}" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" role="img">'
    ]
    parts += _axes(left, top, plot_w, plot_h, y_max)
    for i, b in enumerate(bins):
        h = plot_h * b.count / y_max
        x = left + i * bar_w
        last = "+" if i == len(bins) - 1 else ""
        parts.append(
            f'<rect class="bar" x="{x + 1:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" fill="{_LATENCY}">'
            f"<title>{b.low:,.0f}-{b.high:,.0f}{last} ms: {b.count:,} rows</title></rect>"
        )
    for i in range(0, len(bins), max(1, len(bins) // 6)):
        edge = bins[0].low + (bins[-1].high - bins[0].low) * i / len(bins)
        parts.append(
            f'<text x="{left + i * bar_w:.1f}" y="{height - bottom + 16}" text-anchor="middle">{edge:,.0f}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle">latency (ms)</text></svg>'
    )
    return "".join(parts)


def timeline(chart_id: str, buckets: list[TimeBin], bucket_s: int) -> str:
    """Rows ok and in error per time bucket (stacked bars) and requests sent for them (line)."""
    if not buckets:
        return _empty(chart_id, WIDE, "no rows")
    left, top, bottom, height = 50, 10, 34, 260
    plot_w, plot_h = WIDE - left - 10, height - top - bottom
    y_max = _nice(max(max(b.ok + b.error, b.requests) for b in buckets))
    bar_w = plot_w / len(buckets)
    parts = [
        f'<svg id="{chart_id}" viewBox="0 0 {WIDE} {height}" width="{WIDE}" height="{height}" role="img">'
    ]
    parts += _axes(left, top, plot_w, plot_h, y_max)
    points = []
    for i, b in enumerate(buckets):
        x = left + i * bar_w
        ok_h, err_h = plot_h * b.ok / y_max, plot_h * b.error / y_max
        base = top + plot_h
        when = f"{clock(b.start_s)}-{clock(b.start_s + bucket_s)}"
        parts.append(
            f'<rect class="bar ok" x="{x + 1:.1f}" y="{base - ok_h:.1f}" width="{max(1.0, bar_w - 2):.1f}" height="{ok_h:.1f}" fill="{_OK}">'
            f"<title>{when}: {b.ok:,} ok</title></rect>"
        )
        if b.error:
            parts.append(
                f'<rect class="bar error" x="{x + 1:.1f}" y="{base - ok_h - err_h:.1f}" width="{max(1.0, bar_w - 2):.1f}"'
                f' height="{err_h:.1f}" fill="{_ERROR}"><title>{when}: {b.error:,} errors</title></rect>'
            )
        points.append(f"{x + bar_w / 2:.1f},{base - plot_h * b.requests / y_max:.1f}")
    parts.append(
        f'<polyline class="requests" points="{" ".join(points)}" fill="none" stroke="{_REQUESTS}" stroke-width="2"/>'
    )
    for i in range(0, len(buckets), max(1, len(buckets) // 8)):
        parts.append(
            f'<text x="{left + i * bar_w:.1f}" y="{height - bottom + 16}" text-anchor="middle">{clock(i * bucket_s)}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle">time since the first row started'
        f" (buckets of {bucket_s} s)</text></svg>"
    )
    return "".join(parts)


def limit_chart(chart_id: str, history: tuple[tuple[float, int], ...]) -> str:
    """The in-flight limit over time: a step line, one ``<circle class="change">`` per change."""
    if not history:
        return _empty(chart_id, WIDE, "fixed concurrency (no limit history)")
    left, top, bottom, height = 50, 10, 34, 220
    plot_w, plot_h = WIDE - left - 10, height - top - bottom
    y_max = _nice(max(limit for _, limit in history))
    end = max(history[-1][0], 1e-9)
    x_max = _nice(end)

    def x(at: float) -> float:
        return left + plot_w * at / x_max

    def y(limit: int) -> float:
        return top + plot_h - plot_h * limit / y_max

    parts = [
        f'<svg id="{chart_id}" viewBox="0 0 {WIDE} {height}" width="{WIDE}" height="{height}" role="img">'
    ]
    parts += _axes(left, top, plot_w, plot_h, y_max)
    points = []
    for i, (at, limit) in enumerate(history):
        if i:
            points.append(f"{x(at):.1f},{y(history[i - 1][1]):.1f}")
        points.append(f"{x(at):.1f},{y(limit):.1f}")
        parts.append(
            f'<circle class="change" cx="{x(at):.1f}" cy="{y(limit):.1f}" r="2.5" fill="{_LIMIT}">'
            f"<title>{clock(at)}: limit {limit}</title></circle>"
        )
    parts.append(
        f'<polyline class="limit" points="{" ".join(points)}" fill="none" stroke="{_LIMIT}" stroke-width="2"/>'
    )
    for i in range(6):
        at = x_max * i / 5
        parts.append(
            f'<text x="{x(at):.1f}" y="{height - bottom + 16}" text-anchor="middle">{clock(at)}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle">'
        "time since the run started (the last run of this output)</text></svg>"
    )
    return "".join(parts)


def _kpi(value: str, label: str) -> str:
    return f'<div class="kpi"><b>{escape(value)}</b><span>{escape(label)}</span></div>'


def _table(head: list[str], rows: list[list[str]]) -> str:
    cells = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def render_html(report: Report, generated: datetime | None = None) -> str:
    """The whole page."""
    when = (generated or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    latency_rows = [[k, f"{v:,.1f} ms"] for k, v in report.latency_ms.items()]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>Report: {escape(report.path)}</title><style>{_CSS}</style></head>
<body><main>
<h1>Batch run report</h1>
<p class="sub">{escape(report.path)} &middot; {escape(_span(report))} &middot; generated {escape(when)}</p>
<div class="kpis">{_kpis(report)}</div>
<div class="grid">
<section class="card"><h2>Cost by model</h2>{_cost_chart(report)}</section>
<section class="card"><h2>Latency distribution</h2>{histogram("latency-histogram", report.latency_histogram)}</section>
<section class="card wide"><h2>Rows and errors over time</h2>{_LEGEND}{timeline("timeline", report.timeline, report.bucket_s)}</section>
<section class="card"><h2>Error types</h2>{_error_chart(report)}</section>{_limit_card(report)}
<section class="card"><h2>Latency</h2>{_table(["statistic", "value"], latency_rows)}</section>
<section class="card wide"><h2>Models</h2>{_models_table(report)}</section>
</div>
</main></body></html>
"""


def _limit_card(report: Report) -> str:
    """The in-flight limit over time, for outputs of ``concurrency = "auto"`` runs."""
    if not report.concurrency_history:
        return ""
    chart = limit_chart("concurrency-limit", report.concurrency_history)
    return f'\n<section class="card wide"><h2>In-flight limit over time (concurrency auto)</h2>{chart}</section>'


def _span(report: Report) -> str:
    """When the rows ran, first start to last finish (empty when unknown)."""
    if report.started_at and report.finished_at:
        return f"{report.started_at:%Y-%m-%d %H:%M:%S} to {report.finished_at:%H:%M:%S} UTC"
    return ""


def _kpis(report: Report) -> str:
    """The row of headline figures at the top of the page."""
    ok = report.by_status.get("ok", 0)
    errors = report.rows - ok
    lat = report.latency_ms
    cost = usd(report.cost_usd) + ("+?" if report.unpriced_rows else "")
    unpriced = f" ({report.unpriced_rows:,} rows without a price)" if report.unpriced_rows else ""
    return "".join(
        [
            _kpi(f"{report.rows:,}", f"rows: {ok:,} ok, {errors:,} error"),
            _kpi(cost, "cost" + unpriced),
            _kpi(f"{report.total_tokens:,}", f"tokens ({report.cached_tokens:,} cached)"),
            _kpi(
                f"{lat['p50']:,.0f} ms" if lat else "-",
                f"latency p50 (p99 {lat['p99']:,.0f} ms)" if lat else "latency",
            ),
            _kpi(f"{report.rows_per_s:,.1f}/s", f"rows/s, {report.tokens_per_min:,.0f} tokens/min"),
            _kpi(
                f"{report.possibly_billed_attempts:,}",
                f"possibly billed of {report.requests:,} requests",
            ),
            _kpi(
                f"{report.cache_hits:,}",
                f"answered from the cache, saved {usd(report.cache_saved_usd)}",
            )
            if report.cache_hits
            else "",
        ]
    )


def _cost_chart(report: Report) -> str:
    items = [
        (m.model, m.cost_usd, usd(m.cost_usd) + ("+?" if m.unpriced_rows else ""))
        for m in report.cost_by_model
    ]
    return hbars("cost-by-model", items, _COST, "no rows")


def _error_chart(report: Report) -> str:
    items = [(name, float(n), f"{n:,}") for name, n in report.by_error_type.items()]
    return hbars("error-types", items, _ERROR, "no errors")


def _models_table(report: Report) -> str:
    return _table(
        ["model", "rows", "prompt tokens", "completion tokens", "cost", "rows without a price"],
        [
            [
                m.model,
                f"{m.rows:,}",
                f"{m.prompt_tokens:,}",
                f"{m.completion_tokens:,}",
                usd(m.cost_usd),
                f"{m.unpriced_rows:,}",
            ]
            for m in report.cost_by_model
        ],
    )

"""``pipeline report``: aggregate an output file (polars), print a summary, draw an HTML page.

summary.py  read the output, aggregate: rows by status and error type, tokens,
            cost by model, latency percentiles and histogram, rows over time
text.py     the terminal summary
html.py     a self-contained HTML page with inline SVG charts (no scripts, no network)
"""

from pipeline.report.html import render_html
from pipeline.report.summary import Report, summarize
from pipeline.report.text import render_text

__all__ = ["Report", "render_html", "render_text", "summarize"]

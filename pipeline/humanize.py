"""Amounts of money and time written for people: the progress line, the estimate, the report.

Bottom layer: imports nothing from ``pipeline``.
"""

from __future__ import annotations


def clock(seconds: float) -> str:
    """``05:07``, ``2:46:40``: whole seconds (cut, not rounded; negative counts as 0)."""
    whole = int(max(0, seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def usd(value: float) -> str:
    """``$0.0123``, ``$4.56``, ``$1,234``: four decimals under a dollar, none from a hundred."""
    if value >= 100:
        return f"${value:,.0f}"
    return f"${value:,.2f}" if value >= 1 else f"${value:.4f}"

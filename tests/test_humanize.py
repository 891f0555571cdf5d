"""Tests of the money and time formats shared by the progress line, the estimate and the report."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import humanize
from pipeline.humanize import clock, usd


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "00:00"),
        (6, "00:06"),
        (59.9, "00:59"),  # cut, not rounded
        (307, "05:07"),
        (3599, "59:59"),
        (3600, "1:00:00"),
        (10_000, "2:46:40"),
        (-5, "00:00"),
    ],
)
def test_clock(seconds: float, text: str) -> None:
    assert clock(seconds) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "$0.0000"),
        (0.01234, "$0.0123"),
        (0.99, "$0.9900"),
        (1.0, "$1.00"),
        (4.5, "$4.50"),
        (99.99, "$99.99"),
        (100.0, "$100"),
        (1234.4, "$1,234"),
    ],
)
def test_usd(value: float, text: str) -> None:
    assert usd(value) == text


def test_humanize_is_the_bottom_layer() -> None:
    source = Path(humanize.__file__).read_text(encoding="utf-8")
    assert "from pipeline" not in source
    assert "import pipeline" not in source

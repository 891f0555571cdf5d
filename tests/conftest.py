"""Shared fixtures: fake servers on loopback, and a Parquet input of reviews.

Plain helpers (job files from dicts, input writers, the ``FakeFactory`` type) are in
``tests/helpers.py``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import structlog

from pipeline.fake import FakeConfig, FakeServer, serve_in_thread
from tests.helpers import FakeFactory, Reviews


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """Each test starts with structlog's defaults: a test that ran ``main`` leaves logging
    pointed at a stream (its captured stderr, a log file) that is closed afterwards."""
    yield
    structlog.reset_defaults()


@pytest.fixture
def fake_server() -> Iterator[FakeFactory]:
    """Start fake servers (each on a free loopback port) that stop after the test."""
    with contextlib.ExitStack() as stack:

        def start(**config: Any) -> FakeServer:
            return stack.enter_context(serve_in_thread(FakeConfig(**config)))

        yield start


@pytest.fixture
def reviews(tmp_path: Path) -> Reviews:
    """Write a Parquet input of N rows (id, text, product_id) and return its path."""

    def make(rows: int) -> Path:
        path = tmp_path / f"reviews-{rows}.parquet"
        table = pa.table(
            {
                "review_id": [f"r{i:06d}" for i in range(rows)],
                "text": [
                    f"Review number {i}: the product works, mostly, and arrived on time."
                    for i in range(rows)
                ],
                "product_id": [f"P-{i % 7}" for i in range(rows)],
            }
        )
        pq.write_table(table, path)
        return path

    return make

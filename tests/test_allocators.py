"""The allocator settings ``pipeline`` applies on import, before pyarrow loads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_PROBE = "import pipeline, pyarrow; print(pyarrow.default_memory_pool().backend_name)"


def _pool(**env: str) -> str:
    """Arrow's default pool in a fresh interpreter that imported ``pipeline`` first."""
    environment = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env={**environment, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def test_arrow_uses_the_system_allocator() -> None:
    assert _pool() == "system"


@pytest.mark.parametrize("chosen", ["mimalloc", "jemalloc"])
def test_the_users_choice_of_arrow_pool_wins(chosen: str) -> None:
    assert _pool(ARROW_DEFAULT_MEMORY_POOL=chosen) == chosen

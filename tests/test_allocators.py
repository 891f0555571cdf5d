"""The allocator settings ``pipeline`` applies on import, before pyarrow loads."""

from __future__ import annotations

import ctypes
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


_MMAP_PROBE = """
import ctypes, pipeline

class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.free(libc.malloc(4 << 20))  # glibc's moving threshold would rise to 4 MB here
block = libc.malloc(1 << 20)
print(libc.mallinfo2().hblkhd >= 1 << 20)  # still served by mmap, not from the heap
"""


def _served_by_mmap(**env: str) -> bool:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run(
        [sys.executable, "-c", _MMAP_PROBE],
        env={**environment, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip() == "True"


def _has_mallinfo2() -> bool:
    try:
        ctypes.CDLL(None).mallinfo2  # noqa: B018
    except (OSError, AttributeError):
        return False
    return sys.platform == "linux"


@pytest.mark.skipif(not _has_mallinfo2(), reason="glibc 2.33+ only")
def test_large_blocks_stay_on_mmap_after_a_larger_one_is_freed() -> None:
    assert _served_by_mmap()


@pytest.mark.skipif(not _has_mallinfo2(), reason="glibc 2.33+ only")
def test_the_users_mmap_threshold_wins() -> None:
    assert not _served_by_mmap(MALLOC_MMAP_THRESHOLD_=str(8 << 20))

"""Keeping modules a run never uses out of its process.

pyarrow imports numpy when it is installed (11 MB) and, at its first array, pandas (51 MB
and 0.25 s of a one-row run); structlog imports rich for its console tracebacks, httpx
click, pygments and rich for its command line (6 MB, 0.08 s). A run uses none of them (its
errors are one line; structlog falls back to plain tracebacks; httpx skips its command
line), and pyarrow works without numpy and pandas.
``keep_out`` makes them look absent to every later import. Only the ``pipeline`` program
does this, for a local run and a merge (``cli.main`` without arguments): code that imports
the pipeline keeps its modules.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType

UNUSED_IN_A_RUN = ("numpy", "pandas", "rich", "click")
"""What ``pipeline run`` keeps out (a Ray run needs numpy and pandas: it keeps them)."""


class _Absent(importlib.abc.MetaPathFinder):
    """Finds the named top-level packages (and their modules) missing."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


def keep_out(names: Sequence[str] = UNUSED_IN_A_RUN) -> None:
    """Make ``names`` look not installed to later imports (those already loaded stay)."""
    missing = frozenset(name for name in names if name not in sys.modules)
    if missing and not any(isinstance(finder, _Absent) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Absent(missing))

"""A package's public names imported on first use (PEP 562), so importing it is cheap.

``pipeline --help`` imports ``pipeline`` and ``pipeline.runner`` (every submodule import
runs its package's ``__init__`` first); with their names resolved lazily, neither loads
polars, pyarrow or the HTTP stack until a name that needs them is asked for. A package
lists each name's module once (``exports``), and repeats the imports under
``TYPE_CHECKING`` for type checkers::

    __getattr__, __dir__ = lazy_exports(__name__, {"pipeline.spec": ("JobSpec", "load_job")})
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence


def lazy_exports(
    package: str, exports: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The package's ``__getattr__`` and ``__dir__``: ``exports`` maps a module to the
    names the package takes from it; a name, once imported, is kept in the package."""
    homes = {name: module for module, names in exports.items() for name in names}
    namespace = vars(sys.modules[package])

    def attribute(name: str) -> object:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        namespace[name] = value
        return value

    def names() -> list[str]:
        return sorted({*namespace, *homes})

    return attribute, names

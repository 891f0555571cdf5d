"""Where a sharded run's results live: ``<output>.shards/<I>-of-<N>/<output name>``.

Each shard is a normal run with its own output file (which keeps the ``_seq`` input
position column, so shards merge back in input order), parts, lock and manifest.
"""

from __future__ import annotations

import re
from pathlib import Path

_SHARD_DIR = re.compile(r"^(\d+)-of-(\d+)$")


def shards_dir(output: Path) -> Path:
    """``out/x.parquet`` -> ``out/x.parquet.shards``."""
    return output.with_name(output.name + ".shards")


def shard_output(output: Path, name: str) -> Path:
    """The output file of shard ``name`` (``"I-of-N"``) of ``output``."""
    return shards_dir(output) / name / output.name


def shard_counts(output: Path) -> dict[int, list[int]]:
    """Shard folders found beside ``output``: shard count -> indexes present, sorted."""
    found: dict[int, list[int]] = {}
    root = shards_dir(output)
    if not root.is_dir():
        return found
    for folder in root.iterdir():
        match = _SHARD_DIR.match(folder.name)
        if match and folder.is_dir():
            found.setdefault(int(match[2]), []).append(int(match[1]))
    return {count: sorted(indexes) for count, indexes in sorted(found.items())}

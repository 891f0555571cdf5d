"""The run manifest: a JSON file beside the output that monitoring can read.

Written at the end of every run, finished or not (also after a bug, exit 1, and a
write failure, exit 5): ``<stem>.manifest.json`` holds the latest run (replaced
atomically), and ``<stem>.runs.jsonl`` keeps every run, one JSON object a line, oldest
first. It holds no secrets: the job file's hash, never its environment.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


def manifest_path(output: Path) -> Path:
    """``out/x/2026-01-01.parquet`` -> ``out/x/2026-01-01.manifest.json``."""
    return output.with_name(output.stem + ".manifest.json")


def history_path(output: Path) -> Path:
    """``out/x/2026-01-01.parquet`` -> ``out/x/2026-01-01.runs.jsonl``: every run, a line each."""
    return output.with_name(output.stem + ".runs.jsonl")


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def input_fingerprint(path: Path, files: Sequence[Path] = ()) -> dict[str, Any]:
    """What identifies an input cheaply: its resolved path, size and modification time;
    for many files (a directory, a glob) their count, total size, latest modification
    and a digest of every file's name, size and time."""
    if not files or list(files) == [path]:
        stat = path.stat()
        return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    digest = hashlib.sha256()
    size = mtime = 0
    for file in files:
        stat = file.stat()
        size, mtime = size + stat.st_size, max(mtime, stat.st_mtime_ns)
        digest.update(f"{file.resolve()}\x1f{stat.st_size}\x1f{stat.st_mtime_ns}\n".encode())
    return {
        "path": str(path.absolute()),
        "files": len(files),
        "size": size,
        "mtime_ns": mtime,
        "sha256": digest.hexdigest(),
    }


@dataclass
class Manifest:
    """One run's record."""

    run_id: str
    job_name: str
    job_file: str
    job_sha256: str
    input: dict[str, Any]
    input_rows: int
    limit: int | None
    output: str
    complete: bool
    exit_code: int
    exit_reason: str
    rows_by_status: dict[str, int]
    rows_by_error_type: dict[str, int]
    rows_sent: int
    rows_reused: int
    requests_sent: int
    prompt_tokens: int
    completion_tokens: int
    duration_s: float
    started_at: str
    finished_at: str
    pipeline_version: str
    extra: dict[str, Any] = field(default_factory=dict)
    cost_usd: float | None = None
    earlier_cost_usd: float = 0.0
    unpriced_rows: int = 0
    possibly_billed_attempts: int = 0
    max_cost_usd: float | None = None
    cache_path: str | None = None
    cache_hits: int = 0
    cache_saved_usd: float = 0.0
    concurrency: dict[str, Any] | None = None
    """With ``concurrency = "auto"``: ``limit`` at the end, ``low`` and ``high`` reached,
    ``changes``, and ``history``: [seconds since the run started, limit] at each change."""

    def same_work(self, job_sha256: str, fingerprint: dict[str, Any], limit: int | None) -> bool:
        """Whether this manifest describes a complete run of exactly this job on this input."""
        return (
            self.complete
            and self.job_sha256 == job_sha256
            and self.input == fingerprint
            and self.limit == limit
        )


def write_manifest(output: Path, manifest: Manifest) -> Path:
    """Append the run to the history, then write the manifest atomically (temp file, fsync,
    rename)."""
    with history_path(output).open("a", encoding="utf-8") as history:
        history.write(json.dumps(asdict(manifest), sort_keys=True) + "\n")
        history.flush()
        os.fsync(history.fileno())
    path = manifest_path(output)
    temp = path.with_name(f".{path.name}.tmp")
    with temp.open("w", encoding="utf-8") as handle:
        json.dump(asdict(manifest), handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    temp.replace(path)
    return path


def read_history(output: Path) -> list[Manifest]:
    """Every run recorded for ``output``, oldest first (unreadable lines skipped)."""
    try:
        lines = history_path(output).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    runs = []
    for line in lines:
        try:
            runs.append(Manifest(**json.loads(line)))
        except (ValueError, TypeError):
            continue
    return runs


def read_manifest(output: Path) -> Manifest | None:
    """The manifest beside ``output``, if there is a readable one."""
    try:
        data = json.loads(manifest_path(output).read_text(encoding="utf-8"))
        return Manifest(**data)
    except (OSError, ValueError, TypeError):
        return None

"""``run --catch-up``: the earlier nights of a ``{date}`` job that did not finish.

A night is found by what its run left beside its output path (``[output] path`` with
``{date}`` filled): a manifest, or a ``.parts`` folder (a run killed before it could write
its manifest). It is unfinished when its latest manifest says ``complete = false``, or
when it has part files and no manifest at all. Finished nights, and nights that never
ran, are left alone.
"""

from __future__ import annotations

import glob
import re
from datetime import date
from pathlib import Path

from pipeline.errors import JobError
from pipeline.manifest import manifest_path, read_manifest
from pipeline.results import parts_dir
from pipeline.spec import JobSpec

_MARK = "\x00"
_DAY = r"(\d{4}-\d{2}-\d{2})"


def _dated_paths(template: str) -> list[tuple[str, str]]:
    """(glob pattern, regex) pairs for the manifest and the parts folder of any day."""
    output = Path(template)
    pairs = []
    for path in (str(manifest_path(output)), str(parts_dir(output))):
        pieces = path.split(_MARK)
        pairs.append(("*".join(map(glob.escape, pieces)), _DAY.join(map(re.escape, pieces))))
    return pairs


def unfinished_days(job: JobSpec, before: date) -> list[date]:
    """The days before ``before`` whose run of this job did not finish, oldest first.

    Raises ``JobError`` when the output path has no ``{date}`` or has ``{datetime}`` or
    ``{run_id}`` (every run then writes a new path: there is nothing to resume)."""
    spec = job.output.path
    if "{date}" not in spec or "{datetime}" in spec or "{run_id}" in spec:
        raise JobError(
            "--catch-up needs an [output] path with {date} (and without {datetime} or {run_id})"
        )
    try:
        template = spec.format_map({"name": job.name, "date": _MARK})
    except (KeyError, ValueError) as exc:
        raise JobError(f"[output] path: unknown placeholder {exc}") from None
    days: set[date] = set()
    for pattern, regex in _dated_paths(template):
        for found in glob.glob(pattern):  # noqa: PTH207 (absolute or relative, * anywhere)
            match = re.fullmatch(regex, found)
            if match is None:
                continue
            try:
                days.add(date.fromisoformat(match.group(1)))
            except ValueError:
                continue
    unfinished = []
    for day in sorted(d for d in days if d < before):
        output = Path(template.replace(_MARK, day.isoformat()))
        manifest = read_manifest(output)
        parts = parts_dir(output)
        if (manifest is not None and not manifest.complete) or (
            manifest is None and any(parts.glob("part-*.parquet"))
        ):
            unfinished.append(day)
    return unfinished

"""The batch journal: ``<output>.batches.jsonl``, beside ``<output>.parts/``.

One JSON object a line, appended and fsynced before the run goes on, so that after a
crash at any moment the next run knows every batch it may have submitted::

    intent    shard, digest, model, file name, custom_ids, at   (before the upload)
    uploaded  shard, file_id                                     (the input file exists)
    created   shard, batch_id                                    (the batch exists)
    abandoned shard                                              (it never became a batch)
    collected shard                                              (every line is in the output)

An ``intent`` without ``created`` is looked for with ``GET /batches`` (newest first, back
to ``at``) by its metadata before its lines may be submitted again.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pipeline.errors import OutputError


def journal_path(output: Path) -> Path:
    """Where the journal of ``output`` lives: ``<output>.batches.jsonl``."""
    return output.with_name(output.name + ".batches.jsonl")


@dataclass
class Shard:
    """One submission: an input file and (once created) its batch."""

    shard: int
    digest: str
    model: str
    file_name: str
    custom_ids: list[str]
    at: float
    file_id: str | None = None
    batch_id: str | None = None
    abandoned: bool = False
    collected: bool = False
    status: str | None = field(default=None, compare=False)
    """The batch's status as last seen (not journaled)."""

    @property
    def settled(self) -> bool:
        """Nothing more will come of it: abandoned or collected."""
        return self.abandoned or self.collected


class BatchJournal:
    """Reads and appends the journal (blocking I/O: call from a thread)."""

    def __init__(self, output: Path) -> None:
        self.path = journal_path(output)

    def load(self) -> list[Shard]:
        """Every shard the journal knows, in submission order; a torn last line is ignored."""
        shards: dict[int, Shard] = {}
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        if raw and not raw.endswith(b"\n"):  # torn by a crash mid-append: cut it off, so
            raw = raw[: raw.rfind(b"\n") + 1]  # the next record starts on a line of its own
            with self.path.open("r+b") as handle:
                handle.truncate(len(raw))
                os.fsync(handle.fileno())
        for line in raw.splitlines():
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a line torn by a crash mid-append: its step is redone
            _apply(shards, record)
        return [shards[n] for n in sorted(shards)]

    def append(self, record: dict[str, Any]) -> None:
        """One record, written and fsynced before returning."""
        data = orjson.dumps(record) + b"\n"
        try:
            with self.path.open("ab") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise OutputError(
                f"{self.path}: cannot write the batch journal: {exc.strerror}"
            ) from None

    def intent(self, shard: Shard) -> None:
        """Record what is about to be uploaded and submitted."""
        self.append(
            {
                "event": "intent",
                "shard": shard.shard,
                "digest": shard.digest,
                "model": shard.model,
                "file_name": shard.file_name,
                "custom_ids": shard.custom_ids,
                "at": shard.at,
            }
        )

    def event(self, event: str, shard: int, **values: str) -> None:
        """Record a step of one shard (``uploaded``, ``created``, ``abandoned``, ``collected``)."""
        self.append({"event": event, "shard": shard, "time": time.time(), **values})


def _apply(shards: dict[int, Shard], record: Any) -> None:
    if not isinstance(record, dict) or not isinstance(record.get("shard"), int):
        return
    number, event = record["shard"], record.get("event")
    if event == "intent":
        shards[number] = Shard(
            number,
            str(record["digest"]),
            str(record["model"]),
            str(record["file_name"]),
            [str(c) for c in record["custom_ids"]],
            float(record["at"]),
        )
        return
    shard = shards.get(number)
    if shard is None:
        return
    if event == "uploaded":
        shard.file_id = str(record["file_id"])
    elif event == "created":
        shard.batch_id = str(record["batch_id"])
    elif event == "abandoned":
        shard.abandoned = True
    elif event == "collected":
        shard.collected = True

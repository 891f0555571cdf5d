"""The output format, with one owner: part files, their naming, ``_seq``, the merge, and
reading earlier results back (for resume, the budget and the estimate's sample).

    schema.py    the fixed output columns, optional columns, an outcome's Arrow values
    parts.py     PartWriter: part files in ``<output>.parts/`` as a run goes, then finalize;
                 earlier results outside the output kept in ``<output>.earlier/``
    merge.py     merge part files and carried earlier results in input order, windowed
    shards.py    where the results of each shard of a sharded run live
    earlier.py   DoneIndex (what earlier runs finished, by (id, request hash)), their cost
"""

from pipeline.results.earlier import (
    NOT_DONE_ERRORS,
    Carried,
    DoneIndex,
    completion_key,
    recorded_cost,
    resend_hint,
)
from pipeline.results.merge import Piece, conform, merge_pieces
from pipeline.results.parts import PartWriter, archive_dir, parts_dir, read_results
from pipeline.results.schema import (
    OPTIONAL_COLUMNS,
    OUTPUT_COLUMNS,
    OUTPUT_SCHEMA,
    RESERVED_COLUMNS,
    SEQ,
    TOOL_CALL,
    output_schema,
)
from pipeline.results.shards import shard_counts, shard_output, shards_dir

__all__ = [
    "NOT_DONE_ERRORS",
    "OPTIONAL_COLUMNS",
    "OUTPUT_COLUMNS",
    "OUTPUT_SCHEMA",
    "RESERVED_COLUMNS",
    "SEQ",
    "TOOL_CALL",
    "Carried",
    "DoneIndex",
    "PartWriter",
    "Piece",
    "archive_dir",
    "completion_key",
    "conform",
    "merge_pieces",
    "output_schema",
    "parts_dir",
    "read_results",
    "recorded_cost",
    "resend_hint",
    "shard_counts",
    "shard_output",
    "shards_dir",
]

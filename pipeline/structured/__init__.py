"""Structured extraction: JSON mode and JSON Schema answers as typed Parquet columns.

    schema_arrow.py   JSON Schema -> Arrow type; a validated value -> a value of that type
    parse.py          load and check the job's schema; parse, validate and normalise answers

The runner sends ``Extraction.response_format()`` with every request, hands each
answer to ``Extraction.parse`` and writes what it returns in ``Extraction.column``.
"""

from pipeline.structured.parse import Extraction, load_extraction, load_schema
from pipeline.structured.schema_arrow import Node, NotFit, schema_node

__all__ = ["Extraction", "Node", "NotFit", "load_extraction", "load_schema", "schema_node"]

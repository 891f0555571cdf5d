"""Row + request spec -> chat-completions body; the derived seed; the request hash.

Seed derivation (stable across runs, processes and machines)::

    seed = int(sha256(f"{base_seed}:{row_id}".encode("utf-8")).hexdigest()[:8], 16) & 0x7FFFFFFF

i.e. the first 32 bits of the SHA-256 of ``"<base seed>:<row id>"``, masked to a
non-negative 31-bit integer, which every OpenAI-compatible server accepts. It depends
on the row id only, so with several ``models`` a row is sent with the same seed to
each. With ``seed_column`` the row's own value is sent instead.

In JSON mode an unusable answer is asked again (``json_retries``) with a new seed;
re-ask ``k`` (1, 2, ...) of a row uses ``derive_seed(base_seed, f"{row_id}#json{k}")``
(with ``seed_column``, the row's value is the base seed), so re-asks are as
reproducible as first asks and never repeat the first seed.

The body is encoded canonically (keys sorted, compact, UTF-8) and that exact byte
string is both what is sent and what ``request_hash`` (SHA-256 hex) is taken of, so
the same job on the same row always sends the same bytes and the same hash. One
exception: the value of ``response_format`` keeps its key order, because OpenAI's
structured outputs generate an object's properties in the order the schema lists them.

    template.py   {column} placeholders (prompt template and header values)
    headers.py    header values filled per row
    images.py     image column value -> image_url (URL, or a file as a data URL)
    request.py    RequestBuilder: messages, model, seed, body, hash
"""

from pipeline.requests.headers import HeaderTemplates, split_headers
from pipeline.requests.images import image_url
from pipeline.requests.request import (
    RequestBuilder,
    derive_seed,
    encode_body,
    estimate_prompt_tokens,
    reask_seed,
    request_hash,
)
from pipeline.requests.template import render_template, template_fields

__all__ = [
    "HeaderTemplates",
    "RequestBuilder",
    "derive_seed",
    "encode_body",
    "estimate_prompt_tokens",
    "image_url",
    "reask_seed",
    "render_template",
    "request_hash",
    "split_headers",
    "template_fields",
]

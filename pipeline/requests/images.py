"""An ``image_column`` value -> the ``url`` of an ``image_url`` content part.

An ``http(s)://`` URL or a ``data:`` URL is passed as is; anything else is a local file
path (relative to the working directory), read and sent as ``data:<mime>;base64,...``
with the MIME type guessed from the extension. Reading is blocking file I/O: the runner
builds requests of an image job in a worker thread, never on the event loop, and only
for rows about to be sent, so at most ``concurrency`` images are held in memory.
"""

from __future__ import annotations

import base64
import mimetypes
from pathlib import Path

from pipeline.errors import BadRowError

MAX_IMAGE_BYTES = 20 * 1024 * 1024
"""Larger files are bad input (OpenAI's own per-image limit)."""


def image_url(value: object, column: str) -> str:
    """The URL to send for one row's image; raises ``BadRowError`` naming the path."""
    if value is None:
        raise BadRowError(f"image column {column!r} is null")
    if not isinstance(value, str) or not value.strip():
        raise BadRowError(f"image column {column!r} must hold a URL or a file path, got {value!r}")
    if value[:8].lower().startswith(("http://", "https://", "data:")):
        return value
    mime, _ = mimetypes.guess_type(value)
    if mime is None or not mime.startswith("image/"):
        raise BadRowError(f"image file {value}: cannot tell an image type from its extension")
    path = Path(value)
    try:
        size = path.stat().st_size
        if size > MAX_IMAGE_BYTES:
            raise BadRowError(
                f"image file {value}: {size:,} bytes is over the {MAX_IMAGE_BYTES:,}-byte limit"
            )
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadRowError(f"image file not found: {value}") from None
    except OSError as exc:
        raise BadRowError(f"image file {value}: cannot read: {exc.strerror or exc}") from None
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"

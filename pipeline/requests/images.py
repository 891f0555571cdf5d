"""An ``image_column`` value -> the ``url`` of an ``image_url`` content part.

An ``http(s)://`` URL or a ``data:`` URL is passed as is. Anything else is a local file,
read only when the job opts in with ``[request] image_dir`` (input rows must not be able
to send any file the process can read): the path is taken relative to that folder,
resolved (symlinks followed) and must stay inside it; the file must be at most
``MAX_IMAGE_BYTES`` and start with the magic bytes of a PNG, JPEG, GIF or WebP image,
whose type (not the extension) names the ``data:<mime>;base64,...`` URL sent. Reading
is blocking file I/O: the runner builds requests of an image job in a worker thread,
never on the event loop, and only for rows about to be sent, so at most
``concurrency`` images are held in memory.
"""

from __future__ import annotations

import base64
from pathlib import Path

from pipeline.errors import BadRowError

MAX_IMAGE_BYTES = 20 * 1024 * 1024
"""Larger files are bad input (OpenAI's own per-image limit)."""

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def image_type(head: bytes) -> str | None:
    """The MIME type the first bytes of a file announce, or None when not a known image."""
    for magic, mime in _MAGIC:
        if head.startswith(magic):
            return mime
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def image_url(value: object, column: str, image_dir: Path | None = None) -> str:
    """The URL to send for one row's image; raises ``BadRowError`` naming the path."""
    if value is None:
        raise BadRowError(f"image column {column!r} is null")
    if not isinstance(value, str) or not value.strip():
        raise BadRowError(f"image column {column!r} must hold a URL or a file path, got {value!r}")
    if value[:8].lower().startswith(("http://", "https://", "data:")):
        return value
    if image_dir is None:
        raise BadRowError(
            f"image file {value}: local files are read only inside [request] image_dir (not set)"
        )
    data = _read_inside(value, image_dir)
    mime = image_type(data[:12])
    if mime is None:
        raise BadRowError(f"image file {value}: not a PNG, JPEG, GIF or WebP image")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _read_inside(value: str, image_dir: Path) -> bytes:
    """The bytes of ``value`` (relative to ``image_dir``), which must resolve inside it."""
    base = image_dir.resolve()
    try:
        path = (base / value).resolve(strict=True)
    except FileNotFoundError:
        raise BadRowError(f"image file not found: {value}") from None
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise BadRowError(f"image file {value}: cannot resolve: {exc}") from None
    if not path.is_relative_to(base):
        raise BadRowError(f"image file {value}: outside [request] image_dir {image_dir}")
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_IMAGE_BYTES + 1)
    except OSError as exc:
        raise BadRowError(f"image file {value}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise BadRowError(f"image file {value}: over the {MAX_IMAGE_BYTES:,}-byte limit")
    return data

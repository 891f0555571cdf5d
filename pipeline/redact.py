"""Secrets out of text: the API key, whole or in the masked form servers print.

OpenAI's "Incorrect API key provided: sk-proj-********abcd" shows a key's first 8 and
last 4 characters around a mask; other servers mask with ``...`` or ``…``. ``Scrubber``
replaces the key itself and any run of non-blank characters that starts with its first
8 characters and ends with its last 4 (for keys of at least 16 characters: a shorter
key's ends say too little to match on).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "***"
_MIN_MASKABLE = 16


class Scrubber:
    """Replaces every secret (and its masked forms) in a text with ``***``."""

    def __init__(self, secrets: Iterable[str | None]) -> None:
        patterns = []
        for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
            patterns.append(re.escape(secret))
            if len(secret) >= _MIN_MASKABLE:
                patterns.append(rf"{re.escape(secret[:8])}\S{{0,512}}?{re.escape(secret[-4:])}")
        self._pattern = re.compile("|".join(patterns)) if patterns else None

    def __bool__(self) -> bool:
        return self._pattern is not None

    def __call__(self, text: str) -> str:
        """``text`` without the secrets."""
        if self._pattern is None:
            return text
        return self._pattern.sub(REDACTED, text)

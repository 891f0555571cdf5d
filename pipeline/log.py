"""structlog setup: console renderer on a terminal, JSON lines otherwise or to ``--log-file``.

Every event passes a redaction processor that replaces known secret values (the
API key) wherever they appear, so a key can never reach a log line.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from pipeline.redact import Scrubber


class Redactor:
    """Replaces each secret value (whole or masked, ``pipeline.redact``) found in any string
    of an event, nested ones in lists, tuples and dicts included."""

    def __init__(self, secrets: list[str]) -> None:
        self.secrets = [s for s in secrets if s]
        self._scrub = Scrubber(self.secrets)

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._scrub(value)
        if isinstance(value, dict):
            return {self._clean(k): self._clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._clean(v) for v in value]
        return value

    def __call__(self, logger: WrappedLogger, name: str, event: EventDict) -> EventDict:
        if not self.secrets:
            return event
        cleaned: MutableMapping[str, Any] = {k: self._clean(v) for k, v in event.items()}
        return dict(cleaned)


def configure_logging(
    *,
    secrets: list[str] | None = None,
    stream: TextIO | None = None,
    level: int = logging.INFO,
) -> None:
    """Set up structlog for this process: events go to ``stream`` (default stderr)."""
    target = stream or sys.stderr
    console = target.isatty()
    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        Redactor(secrets or []),
    ]
    if console:
        processors.append(structlog.dev.ConsoleRenderer(colors=True))
    else:
        processors.extend(
            [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
        )
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(target),
        cache_logger_on_first_use=False,
    )

"""structlog setup: JSON when stdout is not a TTY, console otherwise; secret fields redacted."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

REDACTED = "***"
# Field names whose values never reach a log line, whatever their nesting.
_SECRET_KEY_RE = re.compile(r"(pass(word|wd|phrase)?|secret|token|community|auth_key|priv_key|private_key|credential)", re.I)


def is_secret_key(name: str) -> bool:
    return bool(_SECRET_KEY_RE.search(name))


def redact(value: Any) -> Any:
    """Return a copy of ``value`` with every secret-named field replaced by ``***``."""
    if isinstance(value, dict):
        return {k: (REDACTED if isinstance(k, str) and is_secret_key(k) and v not in (None, "")
                    else redact(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value


def _redact_processor(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    return redact(event_dict)


def configure(fmt: str = "auto", level: str = "info", stream: Any = None) -> None:
    """Configure structlog once for the process. ``fmt`` is auto, json or console."""
    stream = stream or sys.stdout
    if fmt == "auto":
        fmt = "console" if getattr(stream, "isatty", lambda: False)() else "json"
    renderer: Any = (structlog.processors.JSONRenderer(sort_keys=False) if fmt == "json"
                     else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact_processor,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str | None = None, **bound: Any) -> Any:
    log = structlog.get_logger(name) if name else structlog.get_logger()
    return log.bind(**bound) if bound else log

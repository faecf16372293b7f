"""Logging: one line per event with level, service and message, plus key-value context.

Pairing codes go through ``redact`` outside development (``../shared/spec/operations.md``,
Logging). Public keys, dead drops, chunk data, nonces, HMACs, tokens and secrets are never
logged in any environment: code that logs must not pass them.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Literal


def redact(code: str) -> str:
    """``ABC123`` → ``A****3``; empty or shorter than 3 → ``****``."""
    if len(code) < 3:
        return "****"
    return f"{code[0]}****{code[-1]}"


class CodeRedactor:
    """Renders pairing codes for logs: in full in development, redacted elsewhere."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, code: str | None) -> str:
        if code is None:
            return "-"
        return redact(code) if self.enabled else code


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        context = getattr(record, "context", None) or {}
        extra = "".join(f" {key}={value}" for key, value in context.items())
        line = f"{stamp}.{int(record.msecs):03d}Z {record.levelname} {record.name}: "
        line += record.getMessage() + extra
        # One line per event: line breaks (a traceback, a message) are escaped.
        if record.exc_info:
            line += " exception=" + self.formatException(record.exc_info)
        return line.replace("\n", "\\n")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created * 1000),
            "level": record.levelname.lower(),
            "service": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "context", None) or {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str, fmt: Literal["text", "json"] = "text") -> None:
    """Send every ``zajel`` log line to stderr in ``fmt`` at ``level`` and above."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger("zajel")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # hypercorn's own logs (access, errors) follow the same level and format.
    for name in ("hypercorn.error",):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(max(logging.getLevelName(level), logging.INFO))
        logger.propagate = False


def context(**values: Any) -> dict[str, Any]:
    """``logger.info("…", extra=context(code=…))``: structured context for one line."""
    return {"context": values}

r"""Logging: one line per event with level, service and message, plus key-value context.

Whatever a client sends, an event stays one line and its pairs stay its own
(``docs/operations.md``, Logging). In ``text``, the message and every context value are escaped: a
backslash is written ``\\``; line feed, carriage return and tab ``\n``, ``\r``, ``\t``; every
other character Python does not count printable (C0 and C1 controls, line and paragraph
separators, spaces other than ASCII's, format characters, surrogates, unassigned code points)
``\xNN``, ``\uNNNN`` or ``\UNNNNNNNN``. A value that is empty or holds a space, ``=`` or ``"`` is
quoted, with ``\"`` for a quote inside, and so is a message that is empty or holds ``=`` or
``"``: a bare message runs up to the first `` key=``. The traceback of an exception is the quoted
value of ``exception``. In ``json`` the encoder escapes every control and non-ASCII character.

Pairing codes go through ``redact`` outside development (``docs/operations.md``, "Redaction").
Public keys, dead drops, chunk data, nonces, HMACs, tokens and secrets are never logged in any
environment: code that logs must not pass them.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Final, Literal

_SIMPLE_ESCAPES: Final = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


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


def escape(text: str) -> str:
    """``text`` with a backslash and every character that is not printable escaped: it cannot
    break a line, hide a character or fake a space."""
    if text.isprintable() and "\\" not in text:
        return text  # the common case, checked at C speed
    return "".join(_escape_char(char) for char in text)


def _escape_char(char: str) -> str:
    simple = _SIMPLE_ESCAPES.get(char)
    if simple is not None:
        return simple
    if char.isprintable():
        return char
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _quoted(text: str) -> str:
    return '"' + escape(text).replace('"', '\\"') + '"'


def _value(value: Any) -> str:
    """One context value: bare when it is one token, else quoted."""
    text = str(value)
    if not text or any(char in text for char in ' ="'):
        return _quoted(text)
    return escape(text)


def _message(text: str) -> str:
    """The message: bare text up to the first ``key=`` unless it holds ``=`` or ``"``."""
    if not text or "=" in text or '"' in text:
        return _quoted(text)
    return escape(text)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = f"{stamp}.{int(record.msecs):03d}Z {record.levelname} {record.name}: "
        line += _message(record.getMessage())
        context = getattr(record, "context", None) or {}
        line += "".join(f" {escape(str(key))}={_value(value)}" for key, value in context.items())
        if record.exc_info:
            line += " exception=" + _quoted(self.formatException(record.exc_info))
        return line


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

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

Every logger writes through the one handler ``configure`` installs: the server's own
(``zajel.*``) at the configured level, every other library's (trio, hypercorn, quart,
trio-websocket, coredis) at ``info`` or above, all in the same format. hypercorn's
``hypercorn.error`` logger, which also carries its info lines, is written as ``hypercorn``.

Pairing codes go through ``redact`` outside development (``docs/operations.md``, "Redaction").
Clients' public keys, dead drops, chunk data, nonces, HMACs, tokens and secrets are never logged
in any environment: code that logs must not pass them. The only public keys logged are the
server's own (``log_start``, and the ephemeral keys of development).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:
    from zajel.config import Config

_SIMPLE_ESCAPES: Final = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Loggers written under another name: hypercorn logs its info lines too on "hypercorn.error".
_RENAMED: Final = {"hypercorn.error": "hypercorn"}


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
        line = f"{stamp}.{int(record.msecs):03d}Z {record.levelname} {_name(record)}: "
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
            "service": _name(record),
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "context", None) or {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _name(record: logging.LogRecord) -> str:
    return _RENAMED.get(record.name, record.name)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler ``configure`` installs (told apart from others on the root logger)."""


def configure(level: str, fmt: Literal["text", "json"] = "text") -> None:
    """Send every log line to stderr in ``fmt``: the ``zajel`` loggers' at ``level`` and above,
    every other logger's (trio, hypercorn, quart, ...) at ``level`` or ``info``, whichever is
    higher. Calling it again replaces the previous set-up."""
    handler = _Handler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    own = logging.getLogger("zajel")
    own.handlers[:] = [handler]
    own.setLevel(level)
    own.propagate = False
    # Every other library's logger propagates to the root; a library's debug lines are not the
    # server's. Other handlers on the root (a test runner's) are left in place.
    root = logging.getLogger()
    root.handlers[:] = [old for old in root.handlers if not isinstance(old, _Handler)] + [handler]
    root.setLevel(max(logging.getLevelName(level), logging.INFO))
    # hypercorn's logger had a handler of its own before; it now goes through the root's.
    hypercorn = logging.getLogger("hypercorn.error")
    hypercorn.handlers[:] = []
    hypercorn.setLevel(logging.NOTSET)
    hypercorn.propagate = True


def log_start(config: Config) -> None:
    """What an operator checks at start (docs/operations.md, "What is logged"): each unknown
    ``ZAJEL_*`` variable, and in production and qa the public keys the server signs with (never
    the seeds)."""
    log = logging.getLogger("zajel.server")
    for warning in config.warnings:
        log.warning(warning)
    if config.env == "development":
        return  # development without keys logs its ephemeral ones as it makes them
    for setting, public_key in config.signing_public_keys().items():
        log.info("signing key", extra=context(setting=setting, public_key=public_key))


def context(**values: Any) -> dict[str, Any]:
    """``logger.info("…", extra=context(code=…))``: structured context for one line."""
    return {"context": values}

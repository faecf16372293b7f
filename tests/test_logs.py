"""Logging and redaction (operations.md, Logging)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from zajel import logs
from zajel.logs import CodeRedactor, context, redact


@pytest.mark.parametrize(
    ("code", "shown"),
    [
        ("ABC123", "A****3"),
        ("ABC", "A****C"),
        ("AB", "****"),
        ("A", "****"),
        ("", "****"),
        ("XYZ789QRS", "X****S"),
    ],
)
def test_redact(code, shown):
    assert redact(code) == shown


def test_code_redactor():
    assert CodeRedactor(enabled=True)("ABC123") == "A****3"
    assert CodeRedactor(enabled=False)("ABC123") == "ABC123"
    assert CodeRedactor(enabled=True)(None) == "-"
    assert CodeRedactor(enabled=False)(None) == "-"


def test_context_is_the_extra_of_one_line():
    assert context(code="A****3", conn=4) == {"context": {"code": "A****3", "conn": 4}}


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """``configure`` changes process-wide loggers; put them back as they were."""
    saved = {}
    for name in ("zajel", "hypercorn.error"):
        logger = logging.getLogger(name)
        saved[name] = (logger.handlers[:], logger.level, logger.propagate)
    try:
        yield
    finally:
        for name, (handlers, level, propagate) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate


def test_json_format_emits_one_object_per_line(capsys, restore_logging):
    logs.configure("INFO", "json")
    log = logging.getLogger("zajel.signaling")
    log.info("pair matched", extra=context(requester="A****3", responder="B****4"))
    log.debug("not shown at info")
    log.warning('odd "quoted"\nmessage', extra=context(conn=7))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "info"
    assert first["service"] == "zajel.signaling"
    assert first["message"] == "pair matched"
    assert first["requester"] == "A****3"
    assert first["responder"] == "B****4"
    assert isinstance(first["ts"], int)
    assert second["level"] == "warning"
    assert second["message"] == 'odd "quoted"\nmessage'
    assert second["conn"] == 7


def test_json_format_carries_exceptions_inside_the_object(capsys, restore_logging):
    logs.configure("DEBUG", "json")
    try:
        raise RuntimeError("kaput")
    except RuntimeError:
        logging.getLogger("zajel.x").exception("request failed", extra=context(request="Ping"))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["level"] == "error"
    assert entry["request"] == "Ping"
    assert "RuntimeError: kaput" in entry["exception"]


def test_text_format_has_level_service_message_and_context(capsys, restore_logging):
    logs.configure("DEBUG", "text")
    logging.getLogger("zajel.signaling").debug("registered", extra=context(code="A****3", conn=1))
    line = capsys.readouterr().err.strip()
    assert line.endswith("Z DEBUG zajel.signaling: registered code=A****3 conn=1")


def test_configure_sets_the_level(capsys, restore_logging):
    logs.configure("WARNING", "text")
    logging.getLogger("zajel.a").info("hidden")
    logging.getLogger("zajel.a").error("shown")
    err = capsys.readouterr().err
    assert "hidden" not in err
    assert "ERROR zajel.a: shown" in err


def test_text_format_keeps_one_line_per_event(capsys, restore_logging):
    logs.configure("DEBUG", "text")
    try:
        raise RuntimeError("kaput")
    except RuntimeError:
        logging.getLogger("zajel.x").exception("request\nfailed", extra=context(conn=3))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert "ERROR zajel.x: request\\nfailed conn=3 exception=Traceback" in lines[0]
    assert "RuntimeError: kaput" in lines[0]

"""Logging and redaction (docs/operations.md, "Logging")."""

from __future__ import annotations

import json
import logging
import re

import pytest

from zajel import logs
from zajel.config import Config
from zajel.crypto import public_key_b64, signing_key
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
    assert 'ERROR zajel.x: request\\nfailed conn=3 exception="Traceback' in lines[0]
    assert "RuntimeError: kaput" in lines[0]


def parse_text_line(line: str) -> tuple[str, str, str, dict[str, str]]:
    """A ``text`` line read back by the format's rules alone: ``(level, logger, message,
    context)``, every value unquoted and unescaped.

    The message is quoted, or bare text holding no ``=``; every later token is ``key=value``, a
    bare value running to the next space and a quoted one to its closing quote.
    """
    stamp, level, rest = line.split(" ", 2)
    assert stamp.endswith("Z"), line
    logger, _, rest = rest.partition(": ")
    if rest.startswith('"'):
        message, rest = _quoted(rest)
    elif "=" in rest:
        cut = rest.rindex(" ", 0, rest.index("="))  # the space before the first key
        message, rest = rest[:cut], rest[cut + 1 :]
    else:
        message, rest = rest, ""
    pairs: dict[str, str] = {}
    while rest:
        key, _, rest = rest.partition("=")
        assert key, line
        assert " " not in key, line
        assert key not in pairs, line
        if rest.startswith('"'):
            pairs[key], rest = _quoted(rest)
        else:
            value, _, rest = rest.partition(" ")
            pairs[key] = unescape(value)
    return level, logger, unescape(message), pairs


def _quoted(text: str) -> tuple[str, str]:
    """The quoted token that opens ``text``, unescaped, and what follows its space."""
    index = 1
    while text[index] != '"':
        index += 2 if text[index] == "\\" else 1
    rest = text[index + 1 :]
    assert rest == "" or rest.startswith(" "), text
    return unescape(text[1:index]), rest[1:]


_ESCAPE = re.compile(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|.)")
_SIMPLE = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"'}


def unescape(text: str) -> str:
    """The text a value of the ``text`` format was escaped from."""

    def one(match: re.Match[str]) -> str:
        code = match.group(1)
        if len(code) == 1:
            return _SIMPLE[code]
        return chr(int(code[1:], 16))

    return _ESCAPE.sub(one, text)


FORGED = "\r\n2026-01-01T00:00:00.000Z INFO zajel.server: stopped status=200 error=none"
HOSTILE = [
    "a\rb",
    "a\nb",
    "a\r\nb",
    "a\x00b\x1bc\x7fd",
    "a\x85b",  # NEL, a C1 control some readers break lines on
    "a\u2028b\u2029c",
    "a\x0bb\x0cc\x1cd\x1de\x1ef",
    "\ud800 lone surrogate",
    "a\u00a0status=1",  # a space that is not ASCII's
    "a\u202eb\U000e0001c",  # a right-to-left override, a tag: format characters
    'say "hi" x=1',
    "back\\slash \\n not a break",
    "",
    FORGED,
]


@pytest.mark.parametrize("value", HOSTILE)
def test_text_format_keeps_every_hostile_value_on_one_line_and_in_its_own_pair(
    value, capsys, restore_logging
):
    logs.configure("DEBUG", "text")
    logging.getLogger("zajel.web").info(
        "request refused", extra=context(path=value, status=400, error="Invalid server ID")
    )
    err = capsys.readouterr().err
    # One event, one line, whatever the reader takes for a line break.
    assert err.endswith("\n")
    assert len(err.splitlines()) == 1
    line = err[:-1]
    assert line.isprintable()
    level, logger, message, pairs = parse_text_line(line)
    assert (level, logger, message) == ("INFO", "zajel.web", "request refused")
    assert list(pairs) == ["path", "status", "error"]
    assert pairs["status"] == "400"
    assert pairs["error"] == "Invalid server ID"
    assert pairs["path"] == value


@pytest.mark.parametrize("value", HOSTILE)
def test_text_format_escapes_the_message_too(value, capsys, restore_logging):
    logs.configure("DEBUG", "text")
    logging.getLogger("zajel.x").warning("got %s", value, extra=context(conn=3))
    line = capsys.readouterr().err
    assert len(line.splitlines()) == 1
    _, _, message, pairs = parse_text_line(line[:-1])
    assert message == f"got {value}"
    assert pairs == {"conn": "3"}


def test_text_format_quotes_values_with_spaces_equals_or_quotes_only(capsys, restore_logging):
    logs.configure("DEBUG", "text")
    logging.getLogger("zajel.x").info(
        "event",
        extra=context(plain="A****3", spaced="a b", eq="k=v", quoted='x"y', empty="", n=None),
    )
    line = capsys.readouterr().err.strip()
    assert line.endswith(
        'Z INFO zajel.x: event plain=A****3 spaced="a b" eq="k=v" quoted="x\\"y" empty="" n=None'
    )


def test_text_format_quotes_an_exception_and_keeps_it_on_one_line(capsys, restore_logging):
    logs.configure("DEBUG", "text")
    try:
        raise ValueError(f"bad input {FORGED}")
    except ValueError:
        logging.getLogger("zajel.x").exception("request failed", extra=context(conn=3))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    _, _, message, pairs = parse_text_line(lines[0])
    assert message == "request failed"
    assert list(pairs) == ["conn", "exception"]
    traceback = pairs["exception"]
    assert traceback.startswith("Traceback (most recent call last):\n")
    assert traceback.endswith(f"ValueError: bad input {FORGED}")


@pytest.mark.parametrize("value", HOSTILE)
def test_json_format_is_one_ascii_line_whatever_the_values(value, capsys, restore_logging):
    logs.configure("DEBUG", "json")
    logging.getLogger("zajel.web").info("got %s", value, extra=context(path=value))
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err[:-1].isascii()
    assert err[:-1].isprintable()
    entry = json.loads(err)
    assert entry["path"] == value
    assert entry["message"] == f"got {value}"


# -- other libraries' loggers, the start-up lines ------------------------------------------


def test_every_library_logger_goes_through_the_format(capsys, restore_logging):
    """trio's, hypercorn's and any other library's lines are written like the server's own, at
    info or above; hypercorn's "hypercorn.error" is written as "hypercorn"."""
    logs.configure("DEBUG", "text")
    logging.getLogger("hypercorn.error").info("Running on %s", "http://127.0.0.1:1")
    logging.getLogger("trio.serve_listeners").error("accept failed", extra=context(errno=24))
    logging.getLogger("coredis.connection").debug("a library's debug line is not shown")
    logging.getLogger("zajel.web").debug("the server's own is")
    lines = capsys.readouterr().err.splitlines()
    assert [parse_text_line(line) for line in lines] == [
        ("INFO", "hypercorn", "Running on http://127.0.0.1:1", {}),
        ("ERROR", "trio.serve_listeners", "accept failed", {"errno": "24"}),
        ("DEBUG", "zajel.web", "the server's own is", {}),
    ]


def test_hypercorn_is_named_hypercorn_in_json_too_and_configure_replaces_itself(
    capsys, restore_logging
):
    logs.configure("INFO", "text")
    logs.configure("WARNING", "json")  # again: one handler, the last format and level
    logging.getLogger("hypercorn.error").info("hidden below warning")
    logging.getLogger("hypercorn.error").warning("shown")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert (entry["service"], entry["level"], entry["message"]) == ("hypercorn", "warning", "shown")


SEEDS = {"ZAJEL_BOOTSTRAP_SIGNING_KEY": "5e" * 32, "ZAJEL_ATTESTATION_SIGNING_KEY": "6f" * 32}


@pytest.mark.parametrize("env", ["production", "qa"])
def test_production_and_qa_log_the_public_keys_they_sign_with(env, capsys, restore_logging):
    config = Config.from_env({"ZAJEL_ENV": env, "ZAJEL_PORTT": "1", **SEEDS})
    logs.configure("INFO", "json")
    logs.log_start(config)
    err = capsys.readouterr().err
    entries = [json.loads(line) for line in err.splitlines()]
    assert entries == [
        {
            "ts": entries[0]["ts"],
            "level": "warning",
            "service": "zajel.server",
            "message": "unknown setting ZAJEL_PORTT is ignored; did you mean ZAJEL_PORT?",
        },
        *(
            {
                "ts": entry["ts"],
                "level": "info",
                "service": "zajel.server",
                "message": "signing key",
                "setting": setting,
                "public_key": public_key_b64(signing_key(bytes.fromhex(seed))),
            }
            for entry, (setting, seed) in zip(entries[1:], SEEDS.items(), strict=True)
        ),
    ]
    for seed in SEEDS.values():
        assert seed not in err


def test_development_logs_no_configured_key_at_start(capsys, restore_logging):
    logs.configure("DEBUG", "text")
    logs.log_start(Config.from_env(SEEDS))
    assert capsys.readouterr().err == ""

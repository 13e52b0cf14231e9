"""Structured logs: one JSON object per line with the extra fields, errors included."""

from __future__ import annotations

import json
import logging

from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong

from gateway.logs import JsonFormatter, MalformedRequestFilter, configure_logging


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    entry = logging.makeLogRecord(
        {"name": "gateway.calls", "levelname": "INFO", "msg": message, "args": args}
    )
    entry.__dict__.update(extra)
    return entry


def test_a_line_is_json_with_the_extra_fields() -> None:
    line = JsonFormatter().format(
        record("call %s accepted", "c1", tenant="acme", call_id="c1", recording_id="rec_1")
    )
    entry = json.loads(line)
    assert entry["message"] == "call c1 accepted"
    assert entry["level"] == "info"
    assert entry["logger"] == "gateway.calls"
    assert entry["at"].endswith("Z")
    assert (entry["tenant"], entry["call_id"], entry["recording_id"]) == ("acme", "c1", "rec_1")
    assert "\n" not in line


def test_an_exception_goes_into_the_error_field_of_the_same_line() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        import sys

        entry = record("failed")
        entry.exc_info = sys.exc_info()
    line = JsonFormatter().format(entry)
    assert "\n" not in line
    parsed = json.loads(line)
    assert "RuntimeError: boom" in parsed["error"]
    assert "Traceback" in parsed["error"]


def test_a_malformed_request_is_a_warning_without_the_header_it_quotes() -> None:
    """aiohttp logs a request it cannot parse at error level, its traceback quoting the bad
    header line: a token in it would reach the log. The filter keeps the peer and the kind
    of error only, at warning level; other errors of aiohttp's logger pass unchanged."""
    token = "cv_" + "T" * 43
    for error in (
        BadHttpMessage(f"Invalid header value char:\n\n  b'Authorization: Bearer {token}\\x01'"),
        LineTooLong(f"Authorization: Bearer {token}", "8190"),
    ):
        entry = logging.makeLogRecord(
            {
                "name": "aiohttp.server",
                "levelno": logging.ERROR,
                "levelname": "ERROR",
                "msg": "Error handling request from %s",
                "args": ("192.0.2.1",),
                "exc_info": (type(error), error, None),
            }
        )
        assert MalformedRequestFilter().filter(entry)
        line = JsonFormatter().format(entry)
        parsed = json.loads(line)
        assert parsed["level"] == "warning" and "error" not in parsed
        assert parsed["message"].startswith("malformed HTTP request from 192.0.2.1 refused (400")
        assert token not in line
    failure = RuntimeError("a bug")
    other = logging.makeLogRecord(
        {"name": "aiohttp.server", "levelno": logging.ERROR, "levelname": "ERROR", "msg": "x"}
    )
    other.exc_info = (RuntimeError, failure, None)
    assert MalformedRequestFilter().filter(other)
    assert other.levelname == "ERROR" and other.exc_info is not None


def test_a_server_side_http_error_is_not_called_a_malformed_request() -> None:
    """An ``HttpProcessingError`` that is not the parser's (one aiohttp answers with a
    500) stays an error with its traceback: it is the server's fault, not the client's."""
    error = HttpProcessingError(code=500, message="handler state broken")
    entry = logging.makeLogRecord(
        {
            "name": "aiohttp.server",
            "levelno": logging.ERROR,
            "levelname": "ERROR",
            "msg": "Error handling request from %s",
            "args": ("192.0.2.1",),
            "exc_info": (type(error), error, None),
        }
    )
    assert MalformedRequestFilter().filter(entry)
    parsed = json.loads(JsonFormatter().format(entry))
    assert parsed["level"] == "error"
    assert parsed["message"] == "Error handling request from 192.0.2.1"
    assert "handler state broken" in parsed["error"]


def test_serve_logging_filters_aiohttp_server_once() -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    server = logging.getLogger("aiohttp.server")
    before = server.filters[:]
    try:
        configure_logging(json_lines=True)
        configure_logging(json_lines=True)
        assert len([f for f in server.filters if isinstance(f, MalformedRequestFilter)]) == 1
    finally:
        root.handlers[:], root.level = handlers, level
        for f in server.filters[:]:
            if f not in before:
                server.removeFilter(f)

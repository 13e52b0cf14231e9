"""Structured logs: one JSON object per line with the extra fields, errors included."""

from __future__ import annotations

import json
import logging

from gateway.logs import JsonFormatter


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

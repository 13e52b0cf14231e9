"""Structured logs: one JSON object per line, and an access log without query strings.

Secrets must never reach a log line. The gateway never logs tokens or keys itself; the one
place a secret could slip in is a URL (``?token=`` on WebSocket ingest), so the access log
records the path alone, never the query string.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.web import BaseRequest, StreamResponse

from storage.catalog import iso

ACCESS = logging.getLogger("callvault.access")

# Attributes every LogRecord has; anything else was passed in ``extra=`` and is a field.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """``{"at", "level", "logger", "message", ...extra fields, "error"?}`` per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "at": iso(datetime.fromtimestamp(record.created, UTC)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class AccessLogger(AbstractAccessLogger):
    """Method, path (no query string: it may hold a token), status, size and duration; the
    peer's address, and behind a proxy the ``X-Forwarded-For`` it sent (as sent: only a
    proxy that callvault alone can be reached through makes it true)."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        extra: dict[str, object] = {
            "method": request.method,
            "path": request.path,
            "status": response.status,
            "bytes": response.body_length,
            "duration_s": round(time, 4),
            "remote": request.remote,
        }
        if (forwarded := request.headers.get("X-Forwarded-For")) is not None:
            extra["forwarded_for"] = forwarded[:200]
        self.logger.info("%s %s %d", request.method, request.path, response.status, extra=extra)


class MalformedRequestFilter(logging.Filter):
    """Turns aiohttp's log of a request it could not parse into one warning line, without
    the exception's text or traceback.

    aiohttp answers an unparseable request (a control character in a header, a header line
    too long) with a 400 itself, and logs it at error level with a traceback whose message
    quotes the offending header line, so an ``Authorization`` header with a stray byte put
    its token in the log. A client's malformed request is not a server error: it becomes a
    warning that names the peer and the kind of error only. (Found by scanning serve's log
    during the schemathesis run, ``tests/integration/test_schemathesis.py``.) Only the
    parser's errors (``BadHttpMessage`` and its kinds, all 400s) are rewritten: another
    ``HttpProcessingError`` reaching aiohttp's handler (one it answers with a 500, say) is
    the server's and is logged as aiohttp logs it."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, BadHttpMessage):
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else None
            record.msg = "malformed HTTP request from %s refused (%s %s)"
            record.args = (peer, error.code, type(error).__name__)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = None
        return True


def configure_logging(*, json_lines: bool) -> None:
    """Root logging for the CLI: JSON lines for ``serve`` (machines read them), plain text
    for one-shot commands (people read them)."""
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for noisy in ("alembic", "botocore", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestFilter) for f in server.filters):
        server.addFilter(MalformedRequestFilter())

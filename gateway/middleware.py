"""The error middleware: every error of callvault's tree becomes an HTTP answer of one shape.

Every error body is ``{"error": <code>, "message": <sentence>}`` as ../shared/API.md
specifies; unexpected exceptions become a 500 whose body says nothing about internals.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from crypto.errors import CallvaultError
from gateway.errors import LimitExceeded, RangeNotSatisfiable, http_status
from storage.errors import HeldByLegalHold, InvalidInstructions, LimitReached

log = logging.getLogger(__name__)


def error_response(status: int, code: str, message: str, **extra: str) -> web.Response:
    return web.json_response({"error": code, "message": message, **extra}, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except CallvaultError as e:
        status = http_status(e)
        if status >= 500:
            log.warning("%s %s failed: %s", request.method, request.path, e.code)
        extra: dict[str, str] = {}
        if isinstance(e, InvalidInstructions):
            extra["field"] = e.field
        elif isinstance(e, HeldByLegalHold):
            extra["hold"] = e.hold
        elif isinstance(e, LimitExceeded | LimitReached):
            extra["limit"] = e.limit
        response = error_response(status, e.code, e.message, **extra)
        if isinstance(e, LimitExceeded | LimitReached) and e.retry_after_s is not None:
            response.headers["Retry-After"] = str(e.retry_after_s)
        if isinstance(e, RangeNotSatisfiable):
            response.headers["Content-Range"] = f"bytes */{e.size}"
        return response
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = "not_found" if e.status == 404 else e.reason.lower().replace(" ", "_")
        response = error_response(e.status, code, e.reason)
        if "Allow" in e.headers:  # a 405 says which methods the path takes (RFC 9110)
            response.headers["Allow"] = e.headers["Allow"]
        return response
    except Exception:
        log.exception("%s %s failed unexpectedly", request.method, request.path)
        return error_response(500, "internal_error", "The server failed; see its log.")

"""Translation of callvault's exception tree into HTTP answers (one place, one shape).

Every error body is ``{"error": <code>, "message": <sentence>}`` as ../shared/API.md
specifies; unexpected exceptions become a 500 whose body says nothing about internals.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import ValidationError

from crypto.errors import BadRequest, CallvaultError, HeldByLegalHold, InvalidInstructions

log = logging.getLogger(__name__)


def error_response(status: int, code: str, message: str, **extra: str) -> web.Response:
    return web.json_response({"error": code, "message": message, **extra}, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except CallvaultError as e:
        if e.status >= 500:
            log.warning("%s %s failed: %s", request.method, request.path, e.code)
        extra: dict[str, str] = {}
        if isinstance(e, InvalidInstructions):
            extra["field"] = e.field
        elif isinstance(e, HeldByLegalHold):
            extra["hold"] = e.hold
        return error_response(e.status, e.code, e.message, **extra)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = "not_found" if e.status == 404 else e.reason.lower().replace(" ", "_")
        return error_response(e.status, code, e.reason)
    except Exception:
        log.exception("%s %s failed unexpectedly", request.method, request.path)
        return error_response(500, "internal_error", "The server failed; see its log.")


def invalid_body(error: ValidationError, code: str) -> BadRequest:
    """The 400 of a request body that fails its model: ``code`` with the first offending
    field as a dotted path (``(body)`` for the body as a whole) and pydantic's sentence.
    Request handlers and ``gateway.calls.parse_announcement`` both answer through it."""
    first = error.errors(include_url=False)[0]
    field = ".".join(str(part) for part in first["loc"]) or "(body)"
    message = first["msg"]
    if first["type"] in ("model_type", "model_attributes_type", "dict_type"):
        message = "must be a JSON object"  # not pydantic's words, which name the class
    return BadRequest(f"{field}: {message}.", code=code)

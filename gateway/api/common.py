"""Helpers every API handler uses: who is calling, the checked body, timestamps.

``gateway.api.routes`` authenticates the caller, checks its tenant and role, looks up the
path's resource where the role check must wait for it, and validates the body, all before
the handler runs; it leaves what it found in the request under the keys below."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar, cast

import orjson
from aiohttp import web
from pydantic import BaseModel

from gateway.auth import Principal, authenticate, bearer_secret
from gateway.errors import BadRequest
from gateway.state import CLOCK, SERVICES
from storage.catalog import iso as iso  # API timestamps: the one format, UTC with a Z

PRINCIPAL = web.RequestKey("principal", Principal)
TENANT = web.RequestKey("tenant", str)
"""The caller's tenant: the path's ``{tenant}``, else the token's (not set for routes only
the operator may call, which name no tenant)."""
FOUND = web.RequestKey("found", object)
"""The path's resource, for routes whose role is checked only once it was found."""
BODY = web.RequestKey("body", BaseModel)
SUPPLIED_BODY = web.RequestKey("supplied_body", object)
"""The decoded JSON body of a request made inside the gateway (``gateway.api.dispatch``),
read instead of the request's bytes."""

M = TypeVar("M", bound=BaseModel)


def body_of(request: web.Request, model: type[M]) -> M:
    """The request's body, validated against ``model`` by the route table."""
    body = request[BODY]
    if not isinstance(body, model):  # pragma: no cover - a route table mistake
        raise TypeError(f"{request.path}: the route's body is not a {model.__name__}")
    return body


def found(request: web.Request) -> Any:
    """What the route's ``find`` looked up (its type is the finder's)."""
    return cast(Any, request[FOUND])


async def principal_of(request: web.Request) -> Principal:
    """The caller, from ``Authorization: Bearer``; ``Unauthorized`` without a valid token.
    The control API takes no ``?token=`` (query strings end up in proxies' logs)."""
    if PRINCIPAL not in request:
        secret = bearer_secret(request.headers.get("Authorization"))
        request[PRINCIPAL] = await authenticate(
            request.app[SERVICES].catalog, secret, now=request.app[CLOCK].now()
        )
    return request[PRINCIPAL]


async def json_body(request: web.Request) -> Any:
    """The request's JSON body; ``BadRequest`` (``bad_json``) when it is not JSON. orjson
    refuses absurd nesting instead of recursing until the interpreter gives up."""
    if SUPPLIED_BODY in request:
        return request[SUPPLIED_BODY]
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise BadRequest("The body is not valid JSON.", code="bad_json") from None


def query_time(request: web.Request, name: str) -> datetime | None:
    """An ISO-8601 timestamp query parameter with a time zone; ``BadRequest`` naming it."""
    text = request.query.get(name)
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise BadRequest(
            f"{name} must be an ISO-8601 time with a zone, e.g. 2026-11-27T10:00:00Z.",
            code="bad_query",
        )
    return value


def query_int(request: web.Request, name: str, *, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high}.", code="bad_query")
    return value

"""API requests made inside the gateway on a caller's behalf (the browser console's).

The console must give a user exactly what the API gives that user's token: the same roles,
the same 404 for another tenant's resource, the same validation, the same audit events. So
it does not call the handlers' helpers itself; it hands ``dispatch`` the API request it
would have sent (method, path, query, JSON body) and the principal of its session, and the
request goes through the route table as one from outside would: resolved by the app's
router, checked by ``routes.guard`` (token, tenant, ``find``, role, body), served by the
route's handler. Only the transport differs: the principal comes from the console's session
instead of an ``Authorization`` header, and the body is handed over already decoded.

An error is raised, not answered: the caller shows it where it belongs (a field's 422 next
to the field). A response the handler streams (the WAV export, the export ZIP) is written
to the console request's connection, and the caller returns it as its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web
from yarl import URL

from gateway.api.common import PRINCIPAL, SUPPLIED_BODY
from gateway.auth import Principal
from gateway.errors import BadRequest
from storage.errors import NotFound

NO_BODY: Any = object()
UNREAD = web.RequestKey("dispatch_unread", web.Request)
"""A copy of the request made before its body was read (``keep_unread``): aiohttp clones
no request whose body was read, and ``dispatch`` clones."""


def keep_unread(request: web.Request) -> None:
    """Keep a copy of ``request`` for ``dispatch``; call it before reading the body (a
    console form)."""
    if UNREAD not in request:
        request[UNREAD] = request.clone()


async def dispatch(
    request: web.Request,
    principal: Principal,
    method: str,
    path: str,
    *,
    query: Mapping[str, str] | None = None,
    body: Any = NO_BODY,
) -> web.StreamResponse:
    """Serve the API request ``method path?query`` with ``body`` as ``principal`` sent it,
    on the connection of ``request``; the handler's response (the API's errors raised)."""
    if not path.startswith("/v1/"):
        raise ValueError(f"{path!r} is not an API path")
    if any(part in (".", "..") for part in path.split("/")):
        # A path segment taken from a console URL must name a resource, never climb out of
        # the route the console meant (``/v1/recordings/../tenants/...``).
        raise NotFound("No such resource.")
    # Built, not parsed: a "?" or "#" in a segment taken from a console URL is part of
    # that segment (percent-encoded here, decoded again by the router), never a query. A
    # "/" is not encoded: values with one are the caller's to refuse (the console's
    # SEGMENT), since the router decodes "%2F" in a console URL's value to "/".
    url = URL.build(path=path, query=dict(query or {}))
    inner = request.get(UNREAD, request).clone(method=method, rel_url=url)
    match = await request.app.router.resolve(inner)
    if match.http_exception is not None:
        raise NotFound(f"No API route answers {method} {path}.")
    match.add_app(request.app)
    match.freeze()
    # What aiohttp's Application._handle does for a request from outside.
    inner._match_info = match  # noqa: SLF001
    inner[PRINCIPAL] = principal
    if body is not NO_BODY:
        inner[SUPPLIED_BODY] = body
    return await match.handler(inner)


async def dispatch_json(
    request: web.Request,
    principal: Principal,
    method: str,
    path: str,
    *,
    query: Mapping[str, str] | None = None,
    body: Any = NO_BODY,
) -> Any:
    """``dispatch`` for a route that answers JSON: the decoded answer."""
    response = await dispatch(request, principal, method, path, query=query, body=body)
    if not isinstance(response, web.Response) or response.body is None:
        raise BadRequest(f"{method} {path} does not answer JSON.")
    raw = response.body
    if not isinstance(raw, bytes):  # pragma: no cover - json_response always has bytes
        raise TypeError(f"{method} {path}: the answer's body is not bytes")
    return orjson.loads(raw)

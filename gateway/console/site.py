"""The console's frame: its prefix and headers, and ``page``, which every page goes through.

A page asks the API for what it shows, through ``gateway.api.dispatch`` with the session's
principal, so the console can do exactly what the user's token could do through the API
(same roles, same 404 for another tenant's resource, same validation, same audit events),
and nothing else. Every read-only page reads without JavaScript.

``page`` wraps every handler: it refuses a path segment that is not an id's (so that a
value put into an API path cannot reach another route: aiohttp decodes ``%2F`` in a
segment to ``/``), finds the session (none: to the sign-in page), checks a POST's CSRF token
before the handler runs, and turns the API's errors into an error page with the API's
status. Every answer to a console request, including aiohttp's own errors and the WAV and
ZIP that the API's handlers stream for a page, carries the console's headers (a strict
Content-Security-Policy, no caching of pages that show transcripts, no framing), set as it
is prepared (``on_response_prepare``).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp_jinja2
from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import MultiDictProxy

from crypto.errors import CallvaultError
from gateway.api.dispatch import keep_unread
from gateway.console.sessions import (
    CSRF_FIELD,
    SESSION,
    ConsoleSession,
    check_csrf,
    current_session,
)
from gateway.errors import RangeNotSatisfiable, Unauthorized, http_status
from storage.errors import NotFound

STATIC = Path(__file__).resolve().parent / "static"
PREFIX = "/console"
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "media-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}", re.ASCII)
"""What a console URL's path value (a tenant, recording, hold or token id) may be: an id's
characters, never ``/``, ``?``, ``#``, ``%`` or a leading ``.``."""

Page = Callable[[web.Request, ConsoleSession], Awaitable[web.StreamResponse]]
FORM = web.RequestKey("console_form", MultiDictProxy)


def form_of(request: web.Request) -> MultiDictProxy[str]:
    """The POSTed form, read and CSRF-checked by ``page``."""
    return request[FORM]


def render(
    request: web.Request,
    template: str,
    context: Mapping[str, Any],
    *,
    status: int = 200,
    session: ConsoleSession | None = None,
) -> web.Response:
    """An HTML page of ``template`` with the session's user and CSRF token in its context."""
    values = {"session": session, "csrf_field": CSRF_FIELD, **context}
    if session is not None:
        values.setdefault("csrf", session.csrf)
    return aiohttp_jinja2.render_template(template, request, values, status=status)


def error_page(
    request: web.Request, error: CallvaultError, session: ConsoleSession | None
) -> web.Response:
    status = http_status(error)
    context = {"status": status, "code": error.code, "message": error.message}
    response = render(request, "error.html", context, status=status, session=session)
    if isinstance(error, RangeNotSatisfiable):  # the player's range past the WAV's end
        response.headers["Content-Range"] = f"bytes */{error.size}"
    return response


def see_other(location: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(location=location)  # the console headers: console_headers


def page(handler: Page) -> Handler:
    """``handler`` behind the session, the CSRF check and the console's error pages."""

    async def serve(request: web.Request) -> web.StreamResponse:
        session: ConsoleSession | None = None
        try:
            if not all(SEGMENT.fullmatch(value) for value in request.match_info.values()):
                raise NotFound("No such page.")
            session = await current_session(request)
            if request.method == "POST":
                keep_unread(request)
                form = await request.post()
                check_csrf(request, dict(form))
                request[FORM] = form
            response = await handler(request, session)
        except Unauthorized:
            if request.method != "GET":
                raise see_other(f"{PREFIX}/sign-in") from None
            target = quote(request.path_qs, safe="")
            raise see_other(f"{PREFIX}/sign-in?next={target}") from None
        except CallvaultError as e:
            response = error_page(request, e, session)
        return response

    return serve


async def console_headers(request: web.Request, response: web.StreamResponse) -> None:
    """The console's headers on every answer to a console request, as it is prepared:
    pages, redirects, static files, aiohttp's own 404 and 405 (which the error middleware
    answers), and what an API handler streams for a page (its request carries the page's
    session)."""
    if request.path == PREFIX or request.path.startswith(PREFIX + "/") or SESSION in request:
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)


def add_pages(app: web.Application, routes: Iterable[tuple[str, str, Page]]) -> None:
    """Mount ``(method, path, handler)`` pages behind ``page``. A GET page answers no HEAD:
    the WAV or ZIP an API handler streams for it would follow the headers, and be audited."""
    for method, path, handler in routes:
        if method == "GET":
            app.router.add_get(PREFIX + path, page(handler), allow_head=False)
        else:
            app.router.add_route(method, PREFIX + path, page(handler))

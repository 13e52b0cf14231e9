"""The browser console at ``/console/``: pages for tenant admins, processors and the operator.

Server-rendered (aiohttp-jinja2, autoescaped), with one small script and one stylesheet
shipped in the package: no build step, no CDN, and every read-only page readable without
JavaScript. A page asks the API for what it shows, through ``gateway.api.dispatch`` with
the session's principal, so the console can do exactly what the user's token could do
through the API (same roles, same 404 for another tenant's resource, same validation, same
audit events), and nothing else.

``page`` wraps every handler: it finds the session (none: to the sign-in page), checks a
POST's CSRF token before the handler runs, turns the API's errors into an error page with
the API's status, and sets the headers every console answer carries (a strict
Content-Security-Policy, no caching of pages that show transcripts, no framing).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp_jinja2
import jinja2
from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import MultiDictProxy

from crypto.errors import CallvaultError
from gateway.api.dispatch import keep_unread
from gateway.console.charts import clock, speaker
from gateway.console.sessions import (
    CSRF_FIELD,
    ConsoleSession,
    check_csrf,
    current_session,
)
from gateway.errors import Unauthorized, http_status

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

Page = Callable[[web.Request, ConsoleSession], Awaitable[web.StreamResponse]]
FORM = web.RequestKey("console_form", MultiDictProxy)


def form_of(request: web.Request) -> MultiDictProxy[str]:
    """The POSTed form, read and CSRF-checked by ``page``."""
    return request[FORM]


def secure(response: web.StreamResponse) -> web.StreamResponse:
    if not response.prepared:
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
    return response


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
    return render(request, "error.html", context, status=status, session=session)


def see_other(location: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(location=location, headers=HEADERS)


def page(handler: Page) -> Handler:
    """``handler`` behind the session, the CSRF check and the console's error pages."""

    async def serve(request: web.Request) -> web.StreamResponse:
        session: ConsoleSession | None = None
        try:
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
        return secure(response)

    return serve


@web.middleware
async def console_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The console's headers on every answer under ``/console/`` (redirects, static
    files, and aiohttp's own 404 and 405 included)."""
    if not request.path.startswith(PREFIX + "/") and request.path != PREFIX:
        return await handler(request)
    try:
        return secure(await handler(request))
    except web.HTTPException as e:
        for name, value in HEADERS.items():
            e.headers.setdefault(name, value)
        raise


def add_console(app: web.Application) -> None:
    """Mount the console's pages and static files under ``/console/``."""
    from gateway.console import operator, pages, signin

    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("gateway.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["clock"] = clock
    env.filters["speaker"] = speaker
    app.middlewares.append(console_headers)
    app.router.add_get(PREFIX, _to_console)
    app.router.add_static(f"{PREFIX}/static/", STATIC, name="console-static")
    signin.add_routes(app)
    pages.add_routes(app)
    operator.add_routes(app)


async def _to_console(request: web.Request) -> web.StreamResponse:
    raise see_other(f"{PREFIX}/")

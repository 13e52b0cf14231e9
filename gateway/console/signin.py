"""Signing in and out of the console, and its home page."""

from __future__ import annotations

import re

from aiohttp import web

from crypto.errors import CallvaultError
from gateway.console.sessions import (
    ConsoleSession,
    check_signin_csrf,
    csrf_token,
    current_session,
    set_signin_cookie,
    sign_in,
    sign_out,
    signin_secret,
)
from gateway.console.site import PREFIX, page, render, see_other
from gateway.errors import Unauthorized

NEXT = re.compile(r"/console/[A-Za-z0-9/_.:?=&%+-]{0,2000}", re.ASCII)
"""A sign-in's ``next``: a console path of URL characters (no space, no control character,
no backslash, which browsers read as ``/``)."""
HOMES = {
    "operator": f"{PREFIX}/tenants",
    "admin": f"{PREFIX}/recordings",
    "processor": f"{PREFIX}/recordings",
}


def _next_path(value: object) -> str | None:
    """A ``next`` to go to after sign-in: only a console path of this site, of printable
    ASCII, with no ``.`` or ``..`` segment (never ``//elsewhere``, an absolute URL, a path
    that climbs out of the console, nor a line break for the ``Location`` header)."""
    if not isinstance(value, str) or not NEXT.fullmatch(value):
        return None
    path = value.partition("?")[0].lower().replace("%2e", ".")  # browsers read %2e as "."
    if any(part in (".", "..") for part in path.split("/")):
        return None
    return value


async def signin_form(request: web.Request) -> web.StreamResponse:
    try:
        await current_session(request)
    except Unauthorized:
        pass
    else:
        raise see_other(_next_path(request.query.get("next")) or f"{PREFIX}/")
    return _signin_page(request, request.query.get("next"), error=None, status=200)


def _signin_page(
    request: web.Request, next_path: object, *, error: str | None, status: int
) -> web.StreamResponse:
    secret = signin_secret(request)
    context = {"next": _next_path(next_path) or "", "error": error, "csrf": csrf_token(secret)}
    response = render(request, "signin.html", context, status=status)
    set_signin_cookie(response, secret)
    return response


async def signin_submit(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    next_path = form.get("next")
    try:
        check_signin_csrf(request, dict(form))
    except CallvaultError as e:
        return _signin_page(request, next_path, error=e.message, status=403)
    token = form.get("token")
    response = web.Response(status=303)
    try:
        principal = await sign_in(request, token if isinstance(token, str) else "", response)
    except CallvaultError as e:
        status = 403 if e.code == "forbidden" else 401
        return _signin_page(request, next_path, error=e.message, status=status)
    target = _next_path(next_path) or HOMES.get(principal.role, f"{PREFIX}/")
    response.headers["Location"] = target
    return response


async def _signout(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    response = see_other(f"{PREFIX}/sign-in")
    await sign_out(request, response)
    raise response


async def _home(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    raise see_other(HOMES.get(session.principal.role, f"{PREFIX}/sign-in"))


def add_routes(app: web.Application) -> None:
    app.router.add_get(f"{PREFIX}/sign-in", signin_form, allow_head=False)
    app.router.add_post(f"{PREFIX}/sign-in", signin_submit)
    app.router.add_post(f"{PREFIX}/sign-out", page(_signout))
    app.router.add_get(f"{PREFIX}/", page(_home), allow_head=False)

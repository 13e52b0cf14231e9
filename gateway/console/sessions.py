"""Console sign-in: a token exchanged for a session cookie, and the forms' CSRF tokens.

The cookie holds 256 random bits; the catalog keeps only their SHA-256
(``catalog.console_sessions``), with the id of the token the user signed in with. Every
request looks the session up and checks that token again (``ConsoleSessions.find``), so a
revoked or expired token, a deleted tenant, a sign-out or a session past its lifetime or
idle time is refused at the next request, on every node. The token itself is never stored
nor put in the cookie: it is read once from the sign-in form, and forgotten.

The cookie is ``HttpOnly`` (no script reads it), ``Secure`` (browsers treat loopback as
secure, so ``make run`` works on ``http://127.0.0.1``; a non-loopback ``serve`` has TLS or a
TLS proxy, API.md), ``SameSite=Strict`` (no other site's page sends it) and scoped to
``/console/``.

Each form carries a CSRF token: the HMAC-SHA256 of a fixed label under the cookie's id,
which only a page that can read the session's own pages can copy into a form. A POST
without it, or with another session's, is 403 before anything runs. The sign-in form,
which has no session yet, is protected the same way by a short-lived pre-session cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from aiohttp import web

from gateway.auth import Principal, authenticate
from gateway.errors import Forbidden, Unauthorized
from gateway.state import CLOCK, SERVICES, SETTINGS

COOKIE = "callvault_console"
PRE_COOKIE = "callvault_console_signin"
"""The sign-in form's own CSRF cookie (there is no session yet to tie its token to)."""
COOKIE_PATH = "/console/"
CSRF_FIELD = "csrf"
SESSION_BYTES = 32
MAX_TOKEN_CHARS = 512
"""A sign-in token longer than this is refused without a lookup (ours are 46 characters)."""
TOUCH_EVERY = timedelta(seconds=60)
"""A session's last use is written at most this often (a page view is not a write each)."""


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """The signed-in user of a console request: who they are and their forms' CSRF token."""

    principal: Principal
    csrf: str


SESSION = web.RequestKey("console_session", ConsoleSession)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def csrf_token(secret: str) -> str:
    """The CSRF token of the session (or pre-session) whose cookie holds ``secret``."""
    return hmac.new(secret.encode(), b"callvault console csrf v1", hashlib.sha256).hexdigest()


def csrf_matches(secret: str | None, given: object) -> bool:
    return (
        secret is not None
        and isinstance(given, str)
        and hmac.compare_digest(csrf_token(secret), given)
    )


def _set_cookie(response: web.StreamResponse, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        secure=True,
        httponly=True,
        samesite="Strict",
    )


async def current_session(request: web.Request) -> ConsoleSession:
    """The session of the request's cookie; ``Unauthorized`` when there is none, or it
    ended, or its token is no longer active."""
    if SESSION in request:
        return request[SESSION]
    secret = request.cookies.get(COOKIE)
    if not secret or len(secret) > 100:
        raise Unauthorized("Sign in to use the console.")
    settings, now = request.app[SETTINGS].console, request.app[CLOCK].now()
    sessions = request.app[SERVICES].catalog.console_sessions
    found = await sessions.find(_digest(secret), now=now, idle=settings.session_idle)
    if found is None:
        raise Unauthorized("Your console session ended; sign in again.")
    row, token = found
    # Often enough that a session in use never looks idle, however short the idle time.
    if now - row.seen_at >= min(TOUCH_EVERY, settings.session_idle / 2):
        await sessions.touch(row.id_hash, now=now)
    principal = Principal(
        token_id=token.id, role=token.role, tenant=token.tenant_id, break_glass=token.break_glass
    )
    session = request[SESSION] = ConsoleSession(principal, csrf_token(secret))
    return session


def check_csrf(request: web.Request, form: dict[str, object]) -> None:
    """``Forbidden`` unless the posted ``form`` carries the session's CSRF token."""
    secret = request.cookies.get(COOKIE)
    if not csrf_matches(secret, form.get(CSRF_FIELD)):
        raise Forbidden("The form's CSRF token is missing or wrong; reload the page and retry.")


def signin_secret(request: web.Request) -> str:
    """The pre-session secret of the sign-in form: the browser's, or a new one."""
    secret = request.cookies.get(PRE_COOKIE)
    if not secret or len(secret) > 100:
        secret = secrets.token_urlsafe(SESSION_BYTES)
    return secret


def set_signin_cookie(response: web.StreamResponse, secret: str) -> None:
    _set_cookie(response, PRE_COOKIE, secret, max_age=3600)


def check_signin_csrf(request: web.Request, form: dict[str, object]) -> None:
    if not csrf_matches(request.cookies.get(PRE_COOKIE), form.get(CSRF_FIELD)):
        raise Forbidden("The sign-in form's CSRF token is missing or wrong; reload the page.")


async def sign_in(request: web.Request, token: str, response: web.StreamResponse) -> Principal:
    """Check ``token`` as the API would and start a session of it, its cookie set on
    ``response``; ``Unauthorized`` (without saying why) for a token the API refuses."""
    if not token or len(token) > MAX_TOKEN_CHARS:
        raise Unauthorized("The token is unknown, revoked or expired.")
    services, now = request.app[SERVICES], request.app[CLOCK].now()
    principal = await authenticate(services.catalog, token, now=now)
    if principal.role == "pbx":
        raise Forbidden("A pbx token is for a PBX, not for the console.")
    lifetime = request.app[SETTINGS].console.session_lifetime
    secret = secrets.token_urlsafe(SESSION_BYTES)
    await services.catalog.console_sessions.create(
        _digest(secret), principal.token_id, now=now, lifetime=lifetime
    )
    _set_cookie(response, COOKIE, secret, max_age=int(lifetime.total_seconds()))
    response.del_cookie(PRE_COOKIE, path=COOKIE_PATH)
    return principal


async def sign_out(request: web.Request, response: web.StreamResponse) -> None:
    """End the request's session (on every node: its row is gone) and drop its cookie."""
    secret = request.cookies.get(COOKIE)
    if secret:
        await request.app[SERVICES].catalog.console_sessions.end(_digest(secret))
    response.del_cookie(COOKIE, path=COOKIE_PATH)

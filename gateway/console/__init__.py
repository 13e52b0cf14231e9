"""The browser console at ``/console/``: pages for tenant admins, processors and the operator.

Server-rendered (aiohttp-jinja2, autoescaped), with one small script and one stylesheet
shipped in the package: no build step, no CDN. ``site`` holds the frame every page goes
through (the session, CSRF, errors, headers); ``signin``, ``pages`` (the tenant's) and
``operator`` the pages; ``forms`` and ``charts`` the pure parts.
"""

from __future__ import annotations

import aiohttp_jinja2
import jinja2
from aiohttp import web

from gateway.console import operator, pages, signin
from gateway.console.charts import clock, speaker
from gateway.console.site import PREFIX, STATIC, console_headers, see_other


def add_console(app: web.Application) -> None:
    """Mount the console's pages and static files under ``/console/``."""
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("gateway.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["clock"] = clock
    env.filters["speaker"] = speaker
    app.on_response_prepare.append(console_headers)
    app.router.add_get(PREFIX, _to_console, allow_head=False)
    app.router.add_static(f"{PREFIX}/static/", STATIC, name="console-static")
    signin.add_routes(app)
    pages.add_routes(app)
    operator.add_routes(app)


async def _to_console(request: web.Request) -> web.StreamResponse:
    raise see_other(f"{PREFIX}/")

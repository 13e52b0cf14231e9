"""The aiohttp application of ``callvault serve``.

Shared services live in typed app keys and start and stop in ``cleanup_ctx``, so the app
owns their lifecycle: the catalog is migrated and the keyring opened before the first
request, and everything is closed on shutdown. This issue's app serves the operational
endpoints; the control API and ingest transports mount here as they land.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from crypto.errors import CallvaultError
from gateway.errors import error_middleware, error_response
from gateway.services import Services, open_services
from gateway.settings import Settings

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
SERVICES = web.AppKey("services", Services)
REGISTRY = web.AppKey("registry", CollectorRegistry)


async def healthz(request: web.Request) -> web.Response:
    """The process is up (no dependency is checked)."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """The catalog and the object store answer; 503 naming the failing part otherwise."""
    services = request.app[SERVICES]
    for part, check in (("catalog", services.catalog.check), ("store", services.store.check)):
        try:
            await check()
        except CallvaultError as e:
            return error_response(503, "not_ready", f"{part} is not reachable: {e.message}")
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_app(settings: Settings, *, registry: CollectorRegistry | None = None) -> web.Application:
    app = web.Application(middlewares=[error_middleware])
    app[SETTINGS] = settings
    app[REGISTRY] = registry or CollectorRegistry()

    async def services_ctx(app: web.Application) -> AsyncIterator[None]:
        async with open_services(settings, registry=app[REGISTRY]) as services:
            app[SERVICES] = services
            yield

    app.cleanup_ctx.append(services_ctx)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app

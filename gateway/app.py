"""The aiohttp application of ``callvault serve``.

Shared services live in typed app keys (``gateway.state``) and start and stop in
``cleanup_ctx``, so the app owns their lifecycle: the catalog is migrated and the keyring
opened before the first request; the call registry's ticker flushes quiet streams and ends
abandoned calls (and RTP calls whose media stopped); the retention sweep and the audit
checkpoints run on their intervals; the AudioSocket listener runs beside
the HTTP server, the RTP ports are bound per call. On shutdown the ingest
WebSockets are closed first (1001), then every live call is finalized with what arrived, then
the services close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ai.worker import AnalysisWorker, WorkerMetrics
from crypto.errors import CallvaultError
from gateway.api import add_routes
from gateway.calls import CallRegistry
from gateway.checkpoints import Checkpointer, run_checkpoints
from gateway.clock import Clock
from gateway.ingest import endpoints
from gateway.ingest.rtp_server import RtpIngest
from gateway.metrics import GatewayMetrics
from gateway.middleware import error_middleware, error_response
from gateway.services import build_sender, build_sweeper, build_worker, open_services
from gateway.session import SessionLimits
from gateway.settings import Settings
from gateway.state import (
    AI_METRICS,
    CALLS,
    CHECKPOINTER,
    CLOCK,
    METRICS,
    REGISTRY,
    RTP,
    SERVICES,
    SETTINGS,
    SWEEPER,
)
from storage.retention import RetentionSweeper

log = logging.getLogger(__name__)

OPENAPI = Path(__file__).resolve().parent / "openapi.json"
AUDIOSOCKET = web.AppKey("audiosocket", endpoints.AudioSocketServer)
TICK_S = 0.25
"""How often the ticker looks for quiet streams and expired calls (wall-clock seconds)."""
RECOVER_EVERY_TICKS = 120
"""How often (in ticks: 30 s) left-over spool files are published again."""


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
    request.app[RTP].publish_counts()
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.FileResponse:
    return web.FileResponse(OPENAPI, headers={"Content-Type": "application/json"})


def build_app(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    clock: Clock | None = None,
) -> web.Application:
    app = web.Application(middlewares=[error_middleware])
    app[SETTINGS] = settings
    app[REGISTRY] = registry or CollectorRegistry()
    app[METRICS] = GatewayMetrics(app[REGISTRY])
    app[CLOCK] = clock or Clock()
    app[endpoints.WEBSOCKETS] = set()

    async def services_ctx(app: web.Application) -> AsyncIterator[None]:
        async with open_services(settings, registry=app[REGISTRY], clock=app[CLOCK]) as services:
            app[SERVICES] = services
            yield

    async def calls_ctx(app: web.Application) -> AsyncIterator[None]:
        ingest = settings.ingest
        calls = CallRegistry(
            catalog=app[SERVICES].catalog,
            vault=app[SERVICES].vault,
            limits=SessionLimits(
                flush_interval=ingest.flush_interval,
                flush_bytes=ingest.flush_bytes,
                reconnect_grace=ingest.reconnect_grace,
                start_timeout=ingest.start_timeout,
            ),
            metrics=app[METRICS],
        )
        app[CALLS] = calls
        rtp = app[RTP] = RtpIngest(
            settings.rtp,
            registry=calls,
            metrics=app[METRICS],
            clock=app[CLOCK],
            flush_bytes=ingest.flush_bytes,
        )
        # What a crash left in the spool, before serving; on a catalog no other node
        # shares, also every other call still marked in progress.
        await calls.recover(app[CLOCK].now())
        if app[SERVICES].catalog.backend == "sqlite":
            await calls.take_up_orphans(app[CLOCK].now())
        ticker = asyncio.create_task(_tick(calls, rtp, app[CLOCK]), name="callvault-ticker")
        yield
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        await calls.close(app[CLOCK].now())
        await rtp.close()

    async def audiosocket_ctx(app: web.Application) -> AsyncIterator[None]:
        if not settings.audiosocket.port:
            yield
            return
        server = endpoints.AudioSocketServer(app, settings.audiosocket)
        await server.start()
        app[AUDIOSOCKET] = server
        yield
        await server.close()

    async def ai_ctx(app: web.Application) -> AsyncIterator[None]:
        # Each worker has its own model and inference thread; jobs wait in the catalog, so
        # transcription never holds up ingest (its event loop only awaits the thread).
        workers = [
            build_worker(settings, app[SERVICES], now=app[CLOCK].now, metrics=app[AI_METRICS])
            for _ in range(settings.ai.workers)
        ]
        tasks = [asyncio.create_task(_work(worker), name="callvault-ai") for worker in workers]
        sender = build_sender(settings, app[SERVICES], now=app[CLOCK].now, registry=app[REGISTRY])
        tasks.append(asyncio.create_task(sender.run(), name="callvault-webhooks"))
        yield
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for worker in workers:
            await worker.close()
        await sender.close()

    async def retention_ctx(app: web.Application) -> AsyncIterator[None]:
        sweeper = app[SWEEPER] = build_sweeper(settings, app[SERVICES], registry=app[REGISTRY])
        interval = settings.retention.sweep_interval.total_seconds()
        task = None
        if interval > 0:
            task = asyncio.create_task(
                _sweep(sweeper, app[CLOCK], interval), name="callvault-retention"
            )
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def checkpoints_ctx(app: web.Application) -> AsyncIterator[None]:
        checkpointer = app[CHECKPOINTER] = Checkpointer(
            app[SERVICES].catalog, max_attempts=settings.webhooks.max_attempts
        )
        interval = settings.audit.checkpoint_interval.total_seconds()
        task = None
        if interval > 0:
            task = asyncio.create_task(
                run_checkpoints(checkpointer, app[CLOCK].now, interval),
                name="callvault-checkpoints",
            )
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app[AI_METRICS] = WorkerMetrics(app[REGISTRY])
    app.cleanup_ctx.extend(
        [services_ctx, calls_ctx, audiosocket_ctx, ai_ctx, retention_ctx, checkpoints_ctx]
    )
    app.on_shutdown.append(endpoints.close_websockets)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/openapi.json", openapi)
    app.router.add_get("/v1/ingest/twilio", endpoints.twilio)
    app.router.add_get("/v1/ingest/fork", endpoints.fork)
    add_routes(app)
    return app


async def _work(worker: AnalysisWorker) -> None:
    """Load the worker's model, then take jobs; a model that cannot load is logged (the
    jobs stay queued for a worker that can)."""
    try:
        name = await worker.load()
    except CallvaultError as e:
        log.error("AI worker %s: the model did not load: %s", worker.owner, e.message)
        return
    log.info("AI worker %s ready with model %s", worker.owner, name)
    await worker.run()


async def _sweep(sweeper: RetentionSweeper, clock: Clock, interval: float) -> None:
    """Sweep every ``interval`` seconds, the first time right after start."""
    while True:
        try:
            report = await sweeper.sweep(clock.now())
            if report.objects_deleted or report.call_records_deleted:
                log.info("retention sweep: %s", report.as_dict())
        except Exception:  # the sweeper must outlive any one failure (the catalog was down)
            log.exception("retention sweep failed")
        await asyncio.sleep(interval)


async def _tick(calls: CallRegistry, rtp: RtpIngest, clock: Clock) -> None:
    ticks = 0
    while True:
        await asyncio.sleep(TICK_S)
        ticks += 1
        try:
            await calls.tick(clock.now())
            await rtp.tick(clock.now())
            if ticks % RECOVER_EVERY_TICKS == 0:
                # Uploads whose commit failed (the store was down) are published once the
                # store is back.
                await calls.recover(clock.now())
        except Exception:  # the ticker must outlive any one failure
            log.exception("call ticker failed")

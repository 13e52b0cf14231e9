"""The aiohttp application of ``callvault serve``.

Shared services live in typed app keys (``gateway.state``) and start and stop in
``cleanup_ctx``, so the app owns their lifecycle: the event loop's lag is sampled for the
app's life (``gateway.loops``); the catalog is migrated and the keyring
opened before the first request; the node registers in the fleet's registry and keeps its
heartbeat (``gateway.nodes``); the call registry's ticker flushes quiet streams and ends
abandoned calls (and RTP calls whose media stopped); the publisher publishes the spooled
audio that the object store refused once it is back (``gateway.publisher``); the retention
sweep and the audit checkpoints run on their intervals; the AudioSocket listener runs beside
the HTTP server, the RTP ports are bound per call; the AI workers run as child processes
(``gateway.workers``), so that one that runs out of memory cannot take ingest down. On
shutdown the ingest WebSockets are closed first (1001), then every live call is finalized
with what arrived, then the services close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ai.worker import WorkerMetrics
from gateway.api import add_routes
from gateway.calls import TICK_S, CallRegistry
from gateway.checkpoints import Checkpointer, run_checkpoints
from gateway.clock import Clock
from gateway.console import add_console
from gateway.ingest import endpoints
from gateway.ingest.rtp_server import RtpIngest
from gateway.loops import probe_lag
from gateway.metrics import GatewayMetrics
from gateway.middleware import error_middleware
from gateway.nodes import NodeAddresses, NodeKeeper, node_id_of, run_heartbeat, run_watch
from gateway.publisher import readiness, run_publisher
from gateway.services import build_sender, build_sweeper, open_services
from gateway.session import SessionLimits
from gateway.settings import Settings
from gateway.state import (
    AI_METRICS,
    CALLS,
    CHECKPOINTER,
    CLOCK,
    METRICS,
    NODE,
    REGISTRY,
    RTP,
    SERVICES,
    SETTINGS,
    SWEEPER,
    WORKERS,
)
from gateway.workers import WorkerSupervisor
from storage.retention import RetentionSweeper

log = logging.getLogger(__name__)

OPENAPI = Path(__file__).resolve().parent / "openapi.json"
AUDIOSOCKET = web.AppKey("audiosocket", endpoints.AudioSocketServer)


async def healthz(request: web.Request) -> web.Response:
    """The process is up (no dependency is checked)."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Whether the node can take calls (``gateway.publisher.readiness``): 200 ``ready`` or
    ``degraded`` (the store is down or spooled audio waits for it), 503 when the catalog is
    down or the spool is full."""
    services = request.app[SERVICES]
    ready = await readiness(services.catalog, services.store, services.vault.spool)
    return web.json_response(ready.document(), status=ready.http_status)


async def metrics(request: web.Request) -> web.Response:
    request.app[RTP].publish_counts()
    # Off the loop: the AI children's metric files are parsed here (gateway.workers).
    body = await asyncio.to_thread(generate_latest, request.app[REGISTRY])
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
        async with open_services(
            settings, registry=app[REGISTRY], clock=app[CLOCK], spooled=True
        ) as services:
            app[SERVICES] = services
            yield

    async def calls_ctx(app: web.Application) -> AsyncIterator[None]:
        ingest = settings.ingest
        node_id = node_id_of(settings)
        calls = CallRegistry(
            catalog=app[SERVICES].catalog,
            vault=app[SERVICES].vault,
            limits=SessionLimits(
                flush_interval=ingest.flush_interval,
                flush_bytes=ingest.flush_bytes,
                reconnect_grace=ingest.reconnect_grace,
                start_timeout=ingest.start_timeout,
                max_duration=settings.calls.max_duration,
            ),
            metrics=app[METRICS],
            tenant_limits=settings.limits.defaults(),
            node_id=node_id,
        )
        app[CALLS] = calls
        rtp = app[RTP] = RtpIngest(
            settings.rtp,
            registry=calls,
            metrics=app[METRICS],
            clock=app[CLOCK],
            flush_bytes=ingest.flush_bytes,
            public_host=settings.node.public_host,
        )
        spool = app[SERVICES].vault.spool
        node = app[NODE] = NodeKeeper(
            node_id=node_id,
            addresses=NodeAddresses.of(settings),
            settings=settings.node,
            catalog=app[SERVICES].catalog,
            calls=calls,
            metrics=app[METRICS],
            spool=spool,
        )
        # Registered first (gateway.nodes), its heartbeat running from then on (a slow
        # start must not get it declared dead); then the stream leases a crash of this node
        # left are released and what it left in the spool recovered, before serving; then
        # every other call of this node still marked in progress (on a catalog no other
        # node shares, also those from before the registry). Then the jobs failed while it
        # was away are reopened, and only then does its watch start.
        interval = settings.node.heartbeat_interval.total_seconds()
        await node.join(app[CLOCK].now())
        heartbeat = asyncio.create_task(
            run_heartbeat(node, app[CLOCK].now, interval), name="callvault-heartbeat"
        )
        try:
            await calls.attachments.release_earlier(app[CLOCK].now())
            await calls.recover(app[CLOCK].now())
            sqlite = app[SERVICES].catalog.backend == "sqlite"
            await calls.take_up_orphans(app[CLOCK].now(), unowned=sqlite)
            await node.reopen(app[CLOCK].now())
        except BaseException:
            await _cancel([heartbeat])
            raise
        ticker = asyncio.create_task(_tick(calls, rtp, app[CLOCK]), name="callvault-ticker")
        watch = run_watch(node, app[CLOCK].now, interval)
        tasks = [ticker, asyncio.create_task(watch, name="callvault-node-watch")]
        if spool is not None:
            app[METRICS].spool_bytes.set_function(lambda: spool.held_bytes)
            app[METRICS].spool_pending_bytes.set_function(lambda: spool.pending_bytes)
            app[METRICS].spool_quarantined.set_function(lambda: spool.quarantined)
            # Uploads whose commit failed (the store was down) are published once it is back.
            publisher = run_publisher(calls, spool, app[CLOCK].now, ingest.publish_retry)
            tasks.append(asyncio.create_task(publisher, name="callvault-publisher"))
        yield
        await _cancel(tasks)
        # The heartbeat goes on while the calls are finalized, however long that takes.
        unfinished = await calls.close(app[CLOCK].now())
        await rtp.close()
        await _cancel([heartbeat])
        await node.stop(app[CLOCK].now(), unfinished=unfinished)

    async def loop_lag_ctx(app: web.Application) -> AsyncIterator[None]:
        # How late the loop runs what is ready (gateway.loops), for the life of the app.
        loop = asyncio.get_running_loop()
        probe = probe_lag(app[METRICS].event_loop_lag.observe, time=loop.time)
        task = asyncio.create_task(probe, name="callvault-loop-lag")
        yield
        await _cancel([task])

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
        # The AI workers are child processes (gateway.workers): one that runs out of memory
        # takes down itself, not ingest. Jobs wait in the catalog, so transcription never
        # holds up ingest. The webhook sender stays here.
        workers = app.get(WORKERS)
        if workers is not None:
            await workers.start()
        sender = build_sender(settings, app[SERVICES], now=app[CLOCK].now, registry=app[REGISTRY])
        task = asyncio.create_task(sender.run(), name="callvault-webhooks")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if workers is not None:
            await workers.stop()
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

    if settings.ai.workers:
        # /metrics shows the children's AI metrics, summed (gateway.workers.ChildMetrics).
        app[WORKERS] = WorkerSupervisor(settings, registry=app[REGISTRY])
    else:
        # No children: the workers are `callvault worker` processes (their metrics are
        # theirs), or ones a test runs in this process on its clock (tests/ai.py).
        app[AI_METRICS] = WorkerMetrics(app[REGISTRY])
    app.cleanup_ctx.extend(
        [
            services_ctx,
            calls_ctx,
            audiosocket_ctx,
            ai_ctx,
            retention_ctx,
            checkpoints_ctx,
            loop_lag_ctx,
        ]
    )
    app.on_shutdown.append(endpoints.close_websockets)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/openapi.json", openapi)
    app.router.add_get("/v1/ingest/twilio", endpoints.twilio)
    app.router.add_get("/v1/ingest/fork", endpoints.fork)
    add_routes(app)
    if settings.console.enabled:
        add_console(app)
    return app


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the tasks and wait for them to end."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


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
    while True:
        await asyncio.sleep(TICK_S)
        try:
            await calls.tick(clock.now())
            await rtp.tick(clock.now())
        except Exception:  # the ticker must outlive any one failure
            log.exception("call ticker failed")

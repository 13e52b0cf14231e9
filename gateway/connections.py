"""The node's protection against connection floods and slow clients.

A node serves every tenant, so no client may take it down by opening connections: the HTTP
listener (API and WebSocket ingest) and the AudioSocket listener each cap their open
connections overall and per peer IP address (IPv6: per /64; ``ConnectionCount``), and a new
HTTP connection must have sent its whole first request head (request line and headers) within
``CALLVAULT_HTTP__HEADER_TIMEOUT``, so a slowloris client that dribbles its headers is
closed. aiohttp's server has neither: its keep-alive timer does close a connection that
never finishes a request, but only after the keep-alive timeout (an hour by default), and it
counts nothing. So ``serve`` listens through ``GuardedSite``, whose protocol factory wraps
each aiohttp ``RequestHandler`` in a ``GuardedConnection``: admitted or answered 503
``too_many_connections`` at ``connection_made``, counted until ``connection_lost``, its
header timer armed until ``HeadWatch`` has seen the end of the first request head. After
that aiohttp's own keep-alive timeout (``CALLVAULT_HTTP__KEEPALIVE_TIMEOUT``) bounds idle
and slow later requests, and WebSocket ingest's handshake timeout a stream that never starts.
Every refusal and drop is counted in ``callvault_connections_dropped``.

Behind a proxy every connection comes from the proxy's address, so the per-peer cap must be
at least the proxy's connection count there.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import signal
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import ip_network
from typing import Any, Literal

from aiohttp import web

from gateway import loops
from gateway.metrics import GatewayMetrics
from gateway.settings import HttpSettings, Settings, ip_of

log = logging.getLogger(__name__)

DropReason = Literal["max_connections", "max_connections_per_peer", "header_timeout"]


@dataclass
class ConnectionCount:
    """The open connections of one listener, overall and per peer address (sans-I/O)."""

    max_connections: int
    max_per_peer: int
    total: int = 0
    per_peer: Counter[str] = field(default_factory=Counter)

    def admit(self, peer: str) -> DropReason | None:
        """Count a new connection from ``peer``, or say which cap refuses it."""
        if self.total >= self.max_connections:
            return "max_connections"
        if self.per_peer[peer] >= self.max_per_peer:
            return "max_connections_per_peer"
        self.total += 1
        self.per_peer[peer] += 1
        return None

    def release(self, peer: str) -> None:
        """An admitted connection from ``peer`` closed."""
        self.total -= 1
        self.per_peer[peer] -= 1
        if self.per_peer[peer] <= 0:
            del self.per_peer[peer]


def peer_address(peername: object) -> str:
    """The peer of a socket's ``peername`` as the caps count it: an IPv4 address (an
    IPv4-mapped IPv6 address as IPv4), an IPv6 address's /64 (one host is usually given a
    whole /64, so counting each address would let it open a cap's worth per address);
    ``""`` when there is none (a Unix socket)."""
    if not isinstance(peername, tuple) or not peername:
        return ""
    host = str(peername[0])
    address = ip_of(host)
    if address is None:
        return host
    if address.version == 6:
        return str(ip_network(f"{address}/64", strict=False))
    return str(address)


class HeadWatch:
    """Whether the first request head (request line and headers, up to the empty line) has
    arrived, from the bytes as they come (sans-I/O; bare LF line ends count too). Empty
    lines before the request line (which aiohttp's parser skips) are not its end: else a
    client could send ``\r\n\r\n`` first and dribble the rest past the header timeout."""

    def __init__(self) -> None:
        self._tail = b""
        self._started = False
        self.complete = False

    def feed(self, data: bytes) -> bool:
        if not self.complete:
            if not self._started:
                data = data.lstrip(b"\r\n")
                self._started = bool(data)
            window = self._tail + data
            self.complete = b"\r\n\r\n" in window or b"\n\n" in window
            self._tail = window[-3:]
        return self.complete


def busy_response(reason: DropReason) -> bytes:
    """The 503 a refused HTTP connection gets before it is closed."""
    body = json.dumps(
        {
            "error": "too_many_connections",
            "message": "This server has too many open connections"
            + (" from your address" if reason == "max_connections_per_peer" else "")
            + "; close some and retry.",
        }
    ).encode()
    return (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nRetry-After: 1\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


class GuardedConnection(asyncio.Protocol):
    """One HTTP connection: admitted by the caps (or answered 503 and closed), its header
    timer armed until its first request head is in, everything else aiohttp's
    ``RequestHandler`` (made only once admitted), to which every event is passed on."""

    def __init__(
        self,
        new_handler: Callable[[], asyncio.Protocol],
        count: ConnectionCount,
        metrics: GatewayMetrics,
        header_timeout_s: float,
    ) -> None:
        self._new_handler = new_handler
        self._count = count
        self._metrics = metrics
        self._header_timeout_s = header_timeout_s
        self._inner: asyncio.Protocol | None = None
        self._peer = ""
        self._transport: asyncio.BaseTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._head = HeadWatch()
        self._counted = False  # admitted: released at connection_lost, whatever else failed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._peer = peer_address(transport.get_extra_info("peername"))
        refused = self._count.admit(self._peer)
        if refused is not None:
            self._metrics.connections_dropped.labels("http", refused).inc()
            # Duck-typed: uvloop's stream transports are not asyncio.WriteTransport
            # subclasses (an isinstance check sent them no answer, only the close).
            write = getattr(transport, "write", None)
            if write is not None:
                write(busy_response(refused))
            transport.close()
            return
        self._counted = True
        self._metrics.connections.labels("http").inc()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._header_timeout_s, self._head_late)
        self._inner = self._new_handler()
        self._inner.connection_made(transport)

    def _head_late(self) -> None:
        self._timer = None
        self._metrics.connections_dropped.labels("http", "header_timeout").inc()
        log.debug("an HTTP connection closed: its request head did not arrive in time")
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return
        if self._timer is not None and self._head.feed(data):
            self._timer.cancel()
            self._timer = None
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._counted:
            self._counted = False
            self._count.release(self._peer)
            self._metrics.connections.labels("http").dec()
        if self._inner is not None:
            inner, self._inner = self._inner, None
            inner.connection_lost(exc)


class GuardedSite(web.BaseSite):
    """aiohttp's ``TCPSite``, but each connection goes through a ``GuardedConnection``."""

    __slots__ = ("_host", "_port", "_count", "_metrics", "_header_timeout_s")

    def __init__(
        self,
        runner: web.BaseRunner,
        http: HttpSettings,
        metrics: GatewayMetrics,
        *,
        ssl_context: ssl.SSLContext | None = None,
        backlog: int = 1024,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host, self._port = http.host, http.port
        self._count = ConnectionCount(http.max_connections, http.max_connections_per_peer)
        self._metrics = metrics
        self._header_timeout_s = http.header_timeout.total_seconds()

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None  # noqa: S101 - BaseSite checked it

        def guarded() -> asyncio.Protocol:
            return GuardedConnection(server, self._count, self._metrics, self._header_timeout_s)

        self._server = await asyncio.get_running_loop().create_server(
            guarded,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            # The TLS handshake comes before the request head: bounded alike.
            ssl_handshake_timeout=self._header_timeout_s if self._ssl_context else None,
        )


FD_MARGIN = 512
"""File descriptors ``serve`` needs besides its connections and RTP ports: the catalog's
pool, spool files, store clients, AI worker pipes, logs."""


def file_limit(soft: int, hard: int, needed: int) -> tuple[int, bool]:
    """The soft ``RLIMIT_NOFILE`` that ``serve`` sets (sans-I/O): the hard limit, since a
    process may raise its soft limit that far for free (the usual soft limit, 1024, is far
    below the connection caps, and at ``EMFILE`` asyncio's accept loop stalls every
    listener), or ``needed`` where the hard limit is unlimited; and whether that is still
    short of ``needed``."""
    if hard == resource.RLIM_INFINITY:
        target = max(soft, needed) if soft != resource.RLIM_INFINITY else soft
    else:
        target = max(soft, hard) if soft != resource.RLIM_INFINITY else soft
    short = target != resource.RLIM_INFINITY and target < needed
    return target, short


def raise_file_limit(settings: Settings) -> None:
    """Raise this process's soft ``RLIMIT_NOFILE`` as far as it may go, and warn, naming
    the settings, when the connection caps and RTP ports can still exhaust it."""
    ports = settings.rtp.port_max - settings.rtp.port_min + 1
    needed = (
        settings.http.max_connections + settings.audiosocket.max_connections + ports + FD_MARGIN
    )
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target, short = file_limit(soft, hard, needed)
    if target != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            target, short = soft, soft != resource.RLIM_INFINITY and soft < needed
    if short:
        log.warning(
            "open files are limited to %d (RLIMIT_NOFILE), but CALLVAULT_HTTP__MAX_CONNECTIONS "
            "(%d), CALLVAULT_AUDIOSOCKET__MAX_CONNECTIONS (%d) and the %d RTP ports "
            "(CALLVAULT_RTP__PORT_MIN..PORT_MAX) need about %d: lower them, or raise the "
            "hard limit (ulimit -Hn, systemd LimitNOFILE=); out of descriptors, the node "
            "stops accepting connections",
            target,
            settings.http.max_connections,
            settings.audiosocket.max_connections,
            ports,
            needed,
        )


def run_app(
    app: web.Application,
    http: HttpSettings,
    metrics: GatewayMetrics,
    *,
    ssl_context: ssl.SSLContext | None,
    shutdown_timeout: float,
    **handler_args: Any,
) -> None:
    """Serve ``app`` on ``http.host:http.port`` through a ``GuardedSite`` until SIGINT or
    SIGTERM, then shut down gracefully (``web.run_app``'s life cycle, with the guard), on
    the event loop ``http.loop`` names (``gateway.loops``). A second signal during the
    shutdown cuts it short, as in ``web.run_app``: what it had not finalized is left to
    recovery. ``handler_args`` go to aiohttp's request handlers (the access log)."""
    try:
        loops.run(
            _serve(
                app,
                http,
                metrics,
                ssl_context=ssl_context,
                shutdown_timeout=shutdown_timeout,
                **handler_args,
            ),
            loops.loop_kind(http.loop),
        )
    except asyncio.CancelledError:
        log.warning("a second signal cut the graceful shutdown short")


async def _serve(
    app: web.Application,
    http: HttpSettings,
    metrics: GatewayMetrics,
    *,
    ssl_context: ssl.SSLContext | None,
    shutdown_timeout: float,
    **handler_args: Any,
) -> None:
    loop = asyncio.get_running_loop()
    kind = loops.running_kind()
    log.info("event loop: %s", kind, extra={"loop": kind})
    stop = asyncio.Event()
    serving = asyncio.current_task()
    assert serving is not None  # noqa: S101 - asyncio.run runs this as a task

    def signalled() -> None:
        if stop.is_set():
            serving.cancel()  # the second: stop waiting for the graceful shutdown
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, signalled)
    runner = web.AppRunner(
        app,
        shutdown_timeout=shutdown_timeout,
        keepalive_timeout=http.keepalive_timeout.total_seconds(),
        **handler_args,
    )
    await runner.setup()
    try:
        await GuardedSite(runner, http, metrics, ssl_context=ssl_context).start()
        await stop.wait()
    finally:
        await runner.cleanup()

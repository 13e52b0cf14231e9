"""The network side of ingest: two WebSocket routes and the AudioSocket TCP server.

Thin on purpose: each moves bytes between its socket and a sans-I/O parser, hands the
parser's events to a ``StreamBinding``, and turns an ``IngestError`` into the transport's
way of saying no (a WebSocket close code with the error code as reason, or an AudioSocket
0xff frame). Awaiting the binding before reading the next message is what gives a slow
store back-pressure instead of a growing buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import WSMsgType, web

from crypto.errors import CallvaultError, ConfigError
from gateway.auth import Principal, authenticate, bearer_secret
from gateway.connections import ConnectionCount, peer_address
from gateway.errors import Forbidden, IngestError, MessageTooBig, StreamRefused, Unauthorized
from gateway.ingest.audiosocket import AudioSocketParser, error_frame
from gateway.ingest.events import MAX_MESSAGE
from gateway.ingest.fork import ForkParser
from gateway.ingest.stream import StreamBinding
from gateway.ingest.twilio import TwilioParser
from gateway.settings import AudioSocketSettings, ip_of
from gateway.state import CALLS, CLOCK, METRICS, SERVICES, SETTINGS
from gateway.tls import peer_is_loopback, token_in_url_allowed

log = logging.getLogger(__name__)
_T = TypeVar("_T")

WEBSOCKETS: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("websockets")
"""Open ingest WebSockets, closed with 1001 (going away) when the server shuts down."""

CLOSE_ERROR = 1011
PING_AFTER_S = 30.0
"""An ingest WebSocket from which nothing was read for this long (no message, ping or pong)
is pinged (checked every ``PING_AFTER_S``: after 30 to 60 s of silence), and cut if nothing
more is read within half of it: a PBX that vanished without closing its connection frees its
call for a reconnect (the call waits its reconnect grace) and its proxy's read timeout is
never met by a live one. A stream whose handler is busy with its messages (a flush held up by
a slow disk) is not pinged: the silence is ours."""
ERROR_LINGER_S = 2.0
"""How long a refused AudioSocket peer may keep sending before we close anyway."""


async def twilio(request: web.Request) -> web.WebSocketResponse:
    """Twilio Media Streams (``/v1/ingest/twilio``)."""
    return await _websocket(request, "twilio", TwilioParser)


async def fork(request: web.Request) -> web.WebSocketResponse:
    """mod_audio_fork / jambonz listen (``/v1/ingest/fork``)."""
    return await _websocket(request, "fork", ForkParser)


async def _websocket(
    request: web.Request, transport: str, new_parser: Callable[[], TwilioParser | ForkParser]
) -> web.WebSocketResponse:
    app = request.app
    clock, metrics = app[CLOCK], app[METRICS]
    # A token in a header is checked before the upgrade: a bad one gets an HTTP 401 (a
    # token of another role 403) and never a WebSocket.
    principal = await _header_principal(request)
    # No aiohttp heartbeat: it schedules a callback for every read of the socket (5 % of
    # the loop at 200 Twilio calls); QuietWatch looks once per PING_AFTER_S. Pings are
    # answered here (autoping off) so that the watch hears them and the pongs.
    ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE, autoping=False)
    await ws.prepare(request)
    app[WEBSOCKETS].add(ws)
    binding: StreamBinding | None = None
    parser = new_parser()
    watch = QuietWatch(
        ws,
        request.transport,
        lambda: parser.messages,
        cut=metrics.ingest_errors.labels("ping_timeout").inc,
    )
    try:
        # A token in the URL is refused on a plaintext socket from another machine even
        # beside a header token: the URL already crossed the network in clear.
        url_principal = await _url_principal(request)
        principal = principal or url_principal
        binding = StreamBinding(
            transport=transport,
            registry=app[CALLS],
            catalog=app[SERVICES].catalog,
            metrics=metrics,
            principal=principal,
        )
        started_by = _deadline(app)
        receive, handle, read_clock = ws.receive, binding.handle, clock.now
        while True:
            if binding.session is None:
                message = await _before(started_by, binding, receive())
            else:
                message = await receive()  # started: no deadline, no wrapper per message
            kind = message.type
            if kind is WSMsgType.TEXT:
                events = parser.receive_text(message.data)
            elif kind is WSMsgType.BINARY:
                events = parser.receive_bytes(message.data)
            elif kind in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                break
            elif kind is WSMsgType.ERROR:
                # aiohttp has already closed with the protocol's code (1009 too big, 1007
                # invalid UTF-8); count it under our code.
                too_big = ws.close_code == MessageTooBig.close_code
                metrics.ingest_errors.labels("message_too_big" if too_big else "bad_frame").inc()
                break
            elif kind is WSMsgType.PING:  # the peer's own: heard, and answered
                watch.heard += 1
                await ws.pong(message.data)
                continue
            elif kind is WSMsgType.PONG:  # the watch's ping answered
                watch.heard += 1
                continue
            else:
                continue
            watch.busy = True
            stopped = await handle(events, read_clock())
            watch.busy = False
            if stopped:
                watch.stop()
                await ws.close(code=1000, message=b"stop")
                break
    except IngestError as e:
        watch.stop()  # not cut in the middle of its close
        metrics.ingest_errors.labels(e.code).inc()
        log.info(
            "%s stream closed: %s (%s)",
            transport,
            e.code,
            e.close_code,
            extra={"transport": transport, "code": e.code, "close_code": e.close_code},
        )
        await ws.close(code=e.close_code, message=e.code.encode())
    except CallvaultError as e:
        watch.stop()
        metrics.ingest_errors.labels(e.code).inc()
        log.warning("%s stream failed: %s", transport, e.code)
        await ws.close(code=CLOSE_ERROR, message=e.code.encode())
    finally:
        watch.stop()
        app[WEBSOCKETS].discard(ws)
        if binding is not None:
            now = clock.now()
            binding.drop(now)
            await binding.release(now)
    return ws


class QuietWatch:
    """Pings an ingest WebSocket that went quiet, and cuts it if it stays quiet (see
    ``PING_AFTER_S``). It compares counts every interval (``messages``: what the parser was
    fed; ``heard``: pings and pongs), so nothing is done per message but marking the handler
    ``busy`` while it handles one."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport | None,
        messages: Callable[[], int],
        *,
        cut: Callable[[], None],
    ) -> None:
        self.heard = 0
        self.busy = False
        self._ws = ws
        self._transport = transport
        self._messages = messages
        self._cut = cut
        self._seen = 0
        self._pinged = False
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(PING_AFTER_S, self._check)
        self._pinging: asyncio.Task[None] | None = None

    def stop(self) -> None:
        """No more checks (the stream ends); a ping on its way is dropped."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pinging is not None:
            self._pinging.cancel()

    def _check(self) -> None:
        heard = self._messages() + self.heard
        if heard != self._seen or self.busy:
            self._seen, self._pinged = heard, False
            self._timer = self._loop.call_later(PING_AFTER_S, self._check)
        elif not self._pinged:
            self._pinged = True
            self._pinging = self._loop.create_task(self._ping())
            self._timer = self._loop.call_later(PING_AFTER_S / 2, self._check)
        elif self._transport is not None:
            # Silent through the ping: as if its TCP connection had died, which it has,
            # or will. The handler's receive ends, and the call waits for a reconnect.
            self._timer = None
            log.info("an ingest WebSocket answered no ping in %g s: cut", PING_AFTER_S / 2)
            self._cut()
            self._transport.abort()

    async def _ping(self) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self._ws.ping()


def _deadline(app: web.Application) -> tuple[float, float]:
    """When a new connection must have started its stream (loop time), and the timeout."""
    timeout = app[SETTINGS].ingest.handshake_timeout.total_seconds()
    return asyncio.get_running_loop().time() + timeout, timeout


async def _before(
    deadline: tuple[float, float], binding: StreamBinding, receive: Awaitable[_T]
) -> _T:
    """Await the next message; until the stream has started (authenticated, its call
    accepted), only until ``deadline``: a connection that never starts holds nothing."""
    if binding.session is not None:
        return await receive
    remaining = deadline[0] - asyncio.get_running_loop().time()
    try:
        if remaining <= 0:  # a peer chatting (pings, Twilio's connected) past it: no more
            raise TimeoutError
        return await asyncio.wait_for(receive, timeout=remaining)
    except TimeoutError:
        if inspect.iscoroutine(receive):
            receive.close()  # never awaited: not left to warn
        raise StreamRefused(
            f"The stream did not start within {deadline[1]:g} s.", code="start_timeout"
        ) from None


async def _header_principal(request: web.Request) -> Principal | None:
    """The pbx token of the upgrade request's ``Authorization`` header, checked before the
    upgrade: ``Unauthorized`` (401) for a bad, revoked or expired one, ``Forbidden`` (403)
    for another role's; ``None`` without the header (the token then comes as ``?token=``
    or in the first message)."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    principal = await authenticate(
        request.app[SERVICES].catalog, bearer_secret(header), now=request.app[CLOCK].now()
    )
    if principal.role != "pbx":
        raise Forbidden("Only a pbx token may push audio.")
    return principal


async def _url_principal(request: web.Request) -> Principal | None:
    """The token of the upgrade URL (``?token=``), after the upgrade; ``None`` when it has
    none, so that Twilio can carry it in ``start``. A token that is given must be valid;
    one in the URL is refused unread on a plaintext socket from another machine (the URL
    crossed the network in clear, and proxies log URLs)."""
    in_url = "token" in request.query
    if in_url and not token_in_url_allowed(
        secure=request.secure,
        offloaded=request.app[SETTINGS].http.tls_offloaded,
        peer_loopback=peer_is_loopback(
            request.transport and request.transport.get_extra_info("peername")
        ),
    ):
        raise StreamRefused(
            "A token in the URL (?token=) is accepted only over TLS (wss://) or from this "
            "machine; connect with wss://, or send it in the Authorization header or the "
            "first message.",
            code="token_in_url_needs_tls",
        )
    try:
        secret = request.query.get("token")
        if secret is None:
            return None
        return await authenticate(
            request.app[SERVICES].catalog, secret, now=request.app[CLOCK].now()
        )
    except Unauthorized as e:
        raise StreamRefused(e.message, code="unauthorized") from None


async def close_websockets(app: web.Application) -> None:
    """on_shutdown: tell every PBX the server is going away (1001) before its call is
    finalized with what arrived (``CallRegistry.close``)."""
    sockets = app[WEBSOCKETS]
    for ws in list(sockets):
        await ws.close(code=1001, message=b"server_shutdown")


class AudioSocketServer:
    """Asterisk AudioSocket over TCP. It has no authentication of its own: a connection
    must come from an allowed network and carry the secret id the gateway minted for an
    announced call; while one connection carries a call no other may, and a reconnect must
    come from the first one's address."""

    def __init__(self, app: web.Application, settings: AudioSocketSettings) -> None:
        self._app = app
        self._settings = settings
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._count = ConnectionCount(settings.max_connections, settings.max_connections_per_peer)

    @property
    def port(self) -> int:
        assert self._server is not None  # noqa: S101
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(
                self._accept, host=self._settings.host, port=self._settings.port
            )
        except OSError as e:
            raise ConfigError(
                "CALLVAULT_AUDIOSOCKET__PORT",
                f"cannot listen on {self._settings.host}:{self._settings.port}: {e.strerror or e}.",
            ) from None

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        metrics = self._app[METRICS]
        peer = peer_address(writer.get_extra_info("peername"))
        refused = self._count.admit(peer)
        if refused is not None:
            # Over a cap: refused at once, nothing read (the node's protection, whoever
            # the peer is; an unanswered flood must not queue here).
            metrics.connections_dropped.labels("audiosocket", refused).inc()
            writer.write(error_frame("too_many_connections"))
            writer.close()
            return
        metrics.connections.labels("audiosocket").inc()
        task = asyncio.current_task()
        assert task is not None  # noqa: S101
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self._connections.discard(task)
            self._count.release(peer)
            metrics.connections.labels("audiosocket").dec()
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        app = self._app
        clock, metrics = app[CLOCK], app[METRICS]
        binding: StreamBinding | None = None
        try:
            binding = StreamBinding(
                transport="audiosocket",
                registry=app[CALLS],
                catalog=app[SERVICES].catalog,
                metrics=metrics,
                peer=self._allowed_peer(writer),
            )
            parser = AudioSocketParser()
            started_by = _deadline(app)
            read, feed, handle = reader.read, parser.feed, binding.handle
            while True:
                if binding.session is None:
                    data = await _before(started_by, binding, read(MAX_MESSAGE))
                else:
                    data = await read(MAX_MESSAGE)  # started: no deadline, no wrapper
                if not data:
                    break
                if await handle(feed(data), clock.now()):
                    return
        except IngestError as e:
            # Codes only: the peer's first frame is a secret id, which no line may carry.
            metrics.ingest_errors.labels(e.code).inc()
            log.info("audiosocket stream closed: %s", e.code)
            await _send_error(reader, writer, e.code)
        except CallvaultError as e:
            metrics.ingest_errors.labels(e.code).inc()
            log.warning("audiosocket stream failed: %s", e.code)
            await _send_error(reader, writer, e.code)
        except ConnectionError:
            pass
        finally:
            if binding is not None:
                now = clock.now()
                binding.drop(now)
                await binding.release(now)

    def _allowed_peer(self, writer: asyncio.StreamWriter) -> str:
        """The peer's IP address (an IPv4-mapped IPv6 one as IPv4), if an allowed network
        holds it; ``StreamRefused`` otherwise. A call is held to its first peer's address."""
        peer = writer.get_extra_info("peername")
        address = ip_of(str(peer[0])) if isinstance(peer, tuple) and peer else None
        if address is None or not any(address in net for net in self._settings.allow_networks):
            raise StreamRefused(
                "AudioSocket connections are accepted only from allowed networks.",
                code="forbidden_network",
            )
        return str(address)


async def _send_error(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, code: str
) -> None:
    """Send the 0xff frame and half-close; then discard what the peer still sends until it
    closes (briefly), because closing a socket with unread input resets the connection and
    the peer could lose the error frame."""
    with contextlib.suppress(ConnectionError, TimeoutError):
        writer.write(error_frame(code))
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(ERROR_LINGER_S):
            while await reader.read(MAX_MESSAGE):
                pass

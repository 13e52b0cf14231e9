"""The RTP ingest's UDP sockets: how datagrams get from the kernel to a call.

Each RTP socket is read without an asyncio transport (which reads one datagram per wake-up
and calls its protocol per datagram): a ``Reader`` drains its socket (up to ``MAX_BATCH``
datagrams, until it would block) and hands the batch to its call in one call.

When are they read? With ``rtp.read_interval`` above zero (100 ms by default) on Linux,
all the ingest's RTP sockets sit in one epoll set, the ``Poller``: the event loop watches
that one descriptor, and when it turns readable the poller reads every ready socket, at
most once per interval (straight away when the last round is an interval ago or more, so
the first datagram after a quiet spell waits for nothing). At 20 ms packets a read then
takes about five datagrams instead of one, and a node with hundreds of calls wakes ten
times a second instead of once per datagram: the per-read work (the call, the clock, the
placement) is shared by five (bench/README.md, "Read rounds and the C reader"). A round is read
``SLICE`` sockets at a time, with the loop's other work between slices, so that it never
holds the loop long.

What the wait costs: a datagram is read up to the interval after it arrived, and the
receiver takes the read's time as its arrival. Audio is placed by its RTP timestamps, so
that changes nothing while a source keeps sending; but a track is anchored on the call's
clock when its source starts, so a socket is read by the loop, as datagrams come, until
its track has anchored (``Reader._first``; a datagram that anchors nothing, such as one
that fails SRTP's check, leaves it there), and only then by the poller: both tracks of a
call line up as they did without the poller. What is anchored later, from datagrams the
poller read, is placed up to the interval later than they came: a source that takes over
mid-call (a new SSRC, SRTP's move to a new address) and a re-anchor after a timestamp jump.
A call's reorder timer reads its sockets before it gives a gap up, and its end reads them
before it drains (rtp_server.py), so a datagram that had arrived by then is never late or
lost for having waited. A read that takes ``MAX_BATCH`` datagrams puts its socket back in
the round, so that a busy socket is not capped at ``MAX_BATCH`` an interval. With
``rtp.read_interval`` at zero, or without epoll, each socket is read by the loop as soon as
it turns readable.

The read itself is ``gateway.ingest._datagrams.read`` (C: ``recvmmsg``, no exception at
the end, the address formatted only when it changes) where that extension was built at
install time, else ``read_datagrams`` here, the reference it is tested against
(tests/unit/test_datagrams.py).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import select
import socket
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Datagram = tuple[bytes, tuple[Any, ...]]
"""A datagram and its source address, as ``socket.recvfrom`` returns them."""

MAX_BATCH = 256
"""Datagrams read from one socket per read at most, so that one flooded port cannot hold
the loop from the others."""
SLICE = 64
"""Sockets read per turn of the loop at most (``Poller``)."""
RECV_BYTES = 65536
"""The read buffer: any UDP datagram fits whole (a longer SRTP one is refused as
``malformed`` all the same, and plain RTP is never cut)."""


def read_datagrams(
    sock: socket.socket, max_count: int, max_bytes: int, cache: list[Any]
) -> list[Datagram]:
    """Every datagram waiting on the non-blocking ``sock``, ``max_count`` at most, each cut
    to ``max_bytes``: what the C reader returns (``cache`` is its, unused here). An
    ``OSError`` other than "would block" ends the read; it is raised only when nothing was
    read before it."""
    recvfrom = sock.recvfrom
    batch: list[Datagram] = []
    try:
        for _ in range(max_count):
            batch.append(recvfrom(max_bytes))
    except (BlockingIOError, InterruptedError):
        pass
    except OSError:
        if not batch:
            raise
    return batch


def _c_reader() -> Callable[[int, int, int, list[Any]], list[Datagram]] | None:
    try:
        from gateway.ingest import _datagrams  # type: ignore[attr-defined]
    except ImportError:  # not built here (no C compiler at install time)
        return None
    read: Callable[[int, int, int, list[Any]], list[Datagram]] = _datagrams.read
    return read


C_READ = _c_reader()
"""The compiled reader, or ``None`` where the extension was not built."""


class Port(asyncio.DatagramProtocol):
    """One UDP socket on an asyncio transport (the RTCP ports): every datagram goes to
    ``receive``."""

    def __init__(self, receive: Callable[[bytes, tuple[str, int]], None]) -> None:
        self._receive = receive
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A BaseTransport: on 3.11 the selector loop's datagram transport is not declared
        # a DatagramTransport, and only close() is needed.
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._receive(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for datagrams the gateway never sends: nothing to do.
        log.debug("RTP socket error: %s", type(exc).__name__)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Reader:
    """One RTP socket: each read takes every datagram waiting (``MAX_BATCH`` at most) and
    hands them to ``receive`` in one call. Read on its own wake-ups of the loop
    (``add_reader``: asyncio's selector loops, uvloop), or, when a ``poller`` is given, by
    the poller once its track has anchored (``_first``)."""

    def __init__(
        self,
        receive: Callable[[list[Datagram]], None],
        poller: Poller | None = None,
        *,
        anchored: Callable[[], bool] | None = None,
        compiled: bool = True,
    ) -> None:
        """``anchored``: whether the track has anchored (the poller takes the socket over
        only then; without it, after the first read). ``compiled=False``: always the
        pure-Python read (tests compare the two)."""
        self._receive = receive
        self._poller = poller
        self._anchored = anchored
        self._socket: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cache: list[Any] = [b"", None]
        """The C reader's last source address (raw, and as a tuple)."""
        self._c_read = C_READ if compiled else None
        self._polled = False
        """Its poller reads it (since its track anchored); until then the loop does."""

    async def bind(self, host: str, port: int) -> None:
        """Bind ``host:port`` (the first address of ``host`` that binds, as
        ``create_datagram_endpoint`` does) and start reading; ``OSError`` as binding
        raises it."""
        loop = asyncio.get_running_loop()
        try:  # a numeric address (the default) needs no resolver thread
            infos = socket.getaddrinfo(
                host, port, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST
            )
        except socket.gaierror:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        error: OSError | None = None
        for family, kind, proto, _, address in infos:
            try:
                sock = socket.socket(family, kind, proto)
            except OSError as e:  # this family is not supported here: the next address
                error = e
                continue
            try:
                sock.setblocking(False)
                sock.bind(address)
                # With a poller, datagrams are still read as they come until the track has
                # anchored on the call's clock (``_first``).
                loop.add_reader(sock.fileno(), self.read if self._poller is None else self._first)
            except OSError as e:
                sock.close()
                error = e
                continue
            except BaseException:
                sock.close()
                raise
            self._socket, self._loop = sock, loop
            return
        raise error or OSError(errno.EADDRNOTAVAIL, f"{host} has no address")

    def _first(self) -> None:
        """Until its track has anchored: read as datagrams come; then the socket goes to
        the poller (a datagram that anchors nothing, such as one that fails SRTP's check,
        an RTCP or a STUN packet, leaves it here)."""
        self.read()
        sock, poller = self._socket, self._poller
        if sock is None or poller is None or poller.closed:
            return
        if self._anchored is not None and not self._anchored():
            return
        assert self._loop is not None  # noqa: S101 - set with the socket
        poller.add(sock.fileno(), self.read)
        self._loop.remove_reader(sock.fileno())
        self._polled = True

    def read(self) -> int:
        """Read what waits on the socket and hand it over (nothing when nothing waits):
        how many datagrams were read."""
        sock = self._socket
        if sock is None:
            return 0
        try:
            if self._c_read is not None:
                batch = self._c_read(sock.fileno(), MAX_BATCH, RECV_BYTES, self._cache)
            else:
                batch = read_datagrams(sock, MAX_BATCH, RECV_BYTES, self._cache)
        except OSError as e:  # ICMP errors for datagrams the gateway never sends
            log.debug("RTP socket error: %s", type(e).__name__)
            return 0
        if batch:
            self._receive(batch)
        return len(batch)

    def close(self) -> None:
        sock, self._socket = self._socket, None
        if sock is None:
            return
        if self._polled and self._poller is not None:
            self._poller.remove(sock.fileno())
        elif self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(sock.fileno())
        sock.close()


class Poller:
    """Many sockets read together, at most once per ``interval`` seconds (the module's
    docstring says why). ``available()`` says whether this platform has it (epoll)."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._epoll = select.epoll()
        self._reads: dict[int, Callable[[], int]] = {}
        self.closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watching = False
        """The loop watches the epoll descriptor (it is not waiting on a timer)."""
        self._timer: asyncio.Handle | None = None
        """The next read's, while one is scheduled (the round's next slice, or its start
        at the interval's end)."""
        self._last = float("-inf")
        """Loop time when the last round of reads started."""
        self._round: list[int] = []
        """The sockets of the current round not read yet (last first)."""
        self.reads = 0
        """Its reads: each slice of a round counts one."""

    @staticmethod
    def available() -> bool:
        return hasattr(select, "epoll")

    def add(self, fd: int, read: Callable[[], int]) -> None:
        """Read ``fd`` from now on (``read`` reads it and says how many datagrams it got)."""
        self._epoll.register(fd, select.EPOLLIN)
        self._reads[fd] = read
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._watch()

    def remove(self, fd: int) -> None:
        """Stop reading ``fd`` (before it is closed)."""
        if self._reads.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    def _watch(self) -> None:
        if self._watching or self._timer is not None or self._loop is None:
            return
        self._loop.add_reader(self._epoll.fileno(), self._woken)
        self._watching = True

    def _unwatch(self) -> None:
        if self._watching and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._epoll.fileno())
        self._watching = False

    def _woken(self) -> None:
        """Something is ready: read now if the last read is an interval ago, else at the
        interval's end (the loop stops watching meanwhile, so it is not woken again)."""
        assert self._loop is not None  # noqa: S101 - set by add, before any watch
        self._unwatch()
        due = self._last + self._interval
        if due <= self._loop.time():
            self._read()
        else:
            self._timer = self._loop.call_at(due, self._read)

    def _read(self) -> None:
        """A round: the sockets ready now, read ``SLICE`` at a time, the rest of them after
        what else the loop has to do (timers, requests, flushes), so that a round never
        holds the loop for long. A socket that turns ready during the round waits for the
        next one (each read takes a whole interval's datagrams)."""
        assert self._loop is not None  # noqa: S101
        self._timer = None
        if not self._round:
            self._last = self._loop.time()
            self._round = [fd for fd, _ in self._epoll.poll(0, max(len(self._reads), 1))]
            self._round.reverse()  # taken from the end, in the order epoll gave them
        self.reads += 1
        for _ in range(min(SLICE, len(self._round))):
            fd = self._round.pop()
            read = self._reads.get(fd)
            if read is not None:
                try:
                    if read() >= MAX_BATCH:  # more may wait: read again before the round ends
                        self._round.insert(0, fd)
                except Exception:  # a bug must cost one socket's read, never the others
                    log.exception("an RTP socket's datagrams could not be handled")
        if self._round:
            self._timer = self._loop.call_soon(self._read)
        elif self._reads:
            self._watch()

    def close(self) -> None:
        self.closed = True
        self._unwatch()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._reads.clear()
        self._epoll.close()

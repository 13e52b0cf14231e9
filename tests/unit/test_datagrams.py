"""The RTP sockets' readers and poller (gateway/ingest/rtp_sockets.py).

The compiled reader (gateway/ingest/_datagrams.c) must return exactly what the pure-Python
reader, its reference, returns for the same datagrams: the same bytes, the same address
tuples, the same batches and the same errors. Each test feeds both the same datagrams, on
two sockets, from the same senders. The poller must read every ready socket, at most once
per interval after a read, in slices that let the loop run between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest

from gateway.ingest import rtp_sockets
from gateway.ingest.rtp_sockets import C_READ, Datagram, Poller, Reader, read_datagrams

needs_c = pytest.mark.skipif(C_READ is None, reason="the C reader was not built here")


def test_the_c_reader_is_built_where_the_parts_are_required() -> None:
    """CI (``CALLVAULT_TEST_REQUIRE_PARTS=1``) has gcc and the Python headers, so the
    extension must have been built by ``pip install``: a silent fallback there would leave
    the compiled path untested."""
    if os.environ.get("CALLVAULT_TEST_REQUIRE_PARTS") != "1":
        pytest.skip("only where every part is required (CI)")
    assert C_READ is not None


def receiver(family: int = socket.AF_INET) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def both_read(
    datagrams: list[tuple[socket.socket, bytes]],
    *,
    family: int = socket.AF_INET,
    max_count: int = 256,
    max_bytes: int = 65536,
) -> tuple[list[list[Datagram]], list[list[Datagram]]]:
    """Send each (sender, datagram) to two sockets, then read one with the C reader and the
    other with the reference until both are empty: their batches."""
    assert C_READ is not None
    c_sock, py_sock = receiver(family), receiver(family)
    try:
        for sender, data in datagrams:
            sender.sendto(data, c_sock.getsockname())
            sender.sendto(data, py_sock.getsockname())
        cache: list[Any] = [b"", None]
        c_batches, py_batches = [], []
        while batch := C_READ(c_sock.fileno(), max_count, max_bytes, cache):
            c_batches.append(batch)
        while batch := read_datagrams(py_sock, max_count, max_bytes, []):
            py_batches.append(batch)
        return c_batches, py_batches
    finally:
        c_sock.close()
        py_sock.close()


def senders(count: int, family: int = socket.AF_INET) -> list[socket.socket]:
    out = []
    for _ in range(count):
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        out.append(sock)
    return out


@needs_c
def test_c_reader_returns_what_the_reference_returns() -> None:
    """Sizes from 0 bytes to 2,000, three senders taking turns (the address cache is missed
    and hit), in batches of at most 16: the same batches, item for item. (Few enough bytes
    that the socket's receive buffer holds them all.)"""
    a, b, c = peers = senders(3)
    try:
        sizes = [0, 1, 12, 172, 1500, 2000]
        datagrams = [
            (peers[n % 3] if n % 5 else a, bytes([n % 251]) * sizes[n % len(sizes)])
            for n in range(80)
        ]
        datagrams += [(b, b"same"), (b, b"source"), (c, b"then"), (b, b"back")]
        c_batches, py_batches = both_read(datagrams, max_count=16)
        assert c_batches == py_batches
        assert [len(batch) for batch in c_batches] == [16] * 5 + [4]
        assert [data for batch in c_batches for data, _ in batch] == [d for _, d in datagrams]
        sources = [addr for batch in c_batches for _, addr in batch]
        assert sources == [peer.getsockname() for peer, _ in datagrams]
    finally:
        for peer in peers:
            peer.close()


@needs_c
def test_c_reader_takes_the_largest_datagram_whole() -> None:
    a, b = peers = senders(2)
    try:
        datagrams = [(a, b"\x80" * 65_507), (b, b"\x01")]  # IPv4's largest UDP payload
        c_batches, py_batches = both_read(datagrams)
        assert c_batches == py_batches == [[(d, p.getsockname()) for p, d in datagrams]]
    finally:
        for peer in peers:
            peer.close()


@needs_c
def test_c_reader_cuts_long_datagrams_as_the_reference_does() -> None:
    (peer,) = senders(1)
    try:
        datagrams = [(peer, b"x" * 300), (peer, b"y" * 100), (peer, b"z" * 99)]
        c_batches, py_batches = both_read(datagrams, max_bytes=100)
        assert (
            c_batches
            == py_batches
            == [
                [(b"x" * 100, peer.getsockname())]
                + [
                    (b"y" * 100, peer.getsockname()),
                    (b"z" * 99, peer.getsockname()),
                ]
            ]
        )
    finally:
        peer.close()


@needs_c
def test_c_reader_gives_ipv6_sources_as_four_tuples() -> None:
    try:
        peers = senders(2, socket.AF_INET6)
    except OSError as e:
        pytest.skip(f"no IPv6 loopback here: {e}")
    try:
        datagrams = [(peers[n % 2], bytes([n])) for n in range(6)]
        c_batches, py_batches = both_read(datagrams, family=socket.AF_INET6)
        assert c_batches == py_batches
        assert all(len(addr) == 4 for batch in c_batches for _, addr in batch)
    finally:
        for peer in peers:
            peer.close()


@needs_c
def test_an_empty_socket_reads_as_nothing_and_an_error_is_raised_as_the_reference_does() -> None:
    """Nothing waiting: an empty list, no exception. An ICMP "port unreachable" queued on
    the socket: ``ConnectionRefusedError`` from both, and then the socket reads on."""
    assert C_READ is not None
    closed = receiver()
    closed_address = closed.getsockname()
    closed.close()
    for read in ("c", "py"):
        sock = receiver()
        sock.connect(closed_address)
        try:
            reader: Callable[[], list[Datagram]] = (
                functools.partial(C_READ, sock.fileno(), 8, 2048, [b"", None])
                if read == "c"
                else functools.partial(read_datagrams, sock, 8, 2048, [])
            )
            assert reader() == []
            sock.send(b"to nobody")
            with pytest.raises(OSError) as raised:
                for _ in range(100):  # the ICMP error arrives a moment later
                    reader()
                    time.sleep(0.001)
            assert raised.value.errno == errno.ECONNREFUSED, read
            assert reader() == []
        finally:
            sock.close()


@needs_c
def test_c_reader_refuses_bad_arguments() -> None:
    assert C_READ is not None
    sock = receiver()
    try:
        cases: list[tuple[int, int, list[Any]]] = [
            (0, 100, [b"", None]),
            (1, 0, [b"", None]),
            (1, (1 << 20) + 1, [b"", None]),
            (1, 100, [b""]),
            (1, 100, [None, None]),
        ]
        for max_count, max_bytes, cache in cases:
            with pytest.raises(ValueError):
                C_READ(sock.fileno(), max_count, max_bytes, cache)
        with pytest.raises(TypeError):
            C_READ(sock.fileno(), 1, 100, (b"", None))  # type: ignore[arg-type]
    finally:
        sock.close()


async def until(done: Callable[[], bool]) -> None:
    deadline = asyncio.get_running_loop().time() + 5.0
    while not done():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.001)


# --- the poller, on both event loops -------------------------------------------------------


def loop_factories() -> list[Any]:
    import uvloop

    return [asyncio.SelectorEventLoop, uvloop.new_event_loop]


@contextlib.asynccontextmanager
async def poller_with(
    interval: float, receivers: Sequence[Callable[[list[Datagram]], None]], **options: Any
) -> AsyncIterator[tuple[Poller, list[Reader], list[tuple[str, int]], socket.socket]]:
    """A poller, a reader bound on loopback for each receiver (``options`` for each), their
    addresses, and a sender; all closed afterwards."""
    poller = Poller(interval)
    readers: list[Reader] = []
    (peer,) = senders(1)
    try:
        for receive in receivers:
            reader = Reader(receive, poller, **options)
            readers.append(reader)
            await reader.bind("127.0.0.1", 0)
        addresses = [r._socket.getsockname() for r in readers if r._socket is not None]
        assert len(addresses) == len(readers)
        yield poller, readers, addresses, peer
    finally:
        peer.close()
        for reader in readers:
            reader.close()
        poller.close()


@pytest.fixture(params=loop_factories(), ids=["asyncio", "uvloop"])
def runner(request: pytest.FixtureRequest) -> Any:
    with asyncio.Runner(loop_factory=request.param) as runner:
        yield runner


@pytest.mark.parametrize("compiled", [True, False], ids=["c", "python"])
def test_the_poller_reads_every_socket_and_waits_an_interval_between_reads(
    runner: asyncio.Runner, compiled: bool
) -> None:
    """A socket's first datagram is read as it comes, by the loop (it anchors its track);
    from then on the poller reads it. The first datagram after a quiet spell is read at
    once; what comes within the interval after a read waits for the interval's end, and is
    then read in one round, every socket's datagrams together and whole; a closed socket
    is read no more."""
    if compiled and C_READ is None:
        pytest.skip("the C reader was not built here")
    interval = 0.3

    async def main() -> None:
        loop = asyncio.get_running_loop()
        got: dict[int, list[tuple[float, list[Datagram]]]] = {n: [] for n in range(3)}
        receivers = [
            functools.partial(lambda n, batch: got[n].append((loop.time(), batch)), n)
            for n in range(3)
        ]
        async with poller_with(interval, receivers, compiled=compiled) as (
            poller,
            readers,
            addresses,
            peer,
        ):
            for n, address in enumerate(addresses):  # each socket's first: read by the loop
                sent_at = loop.time()
                peer.sendto(b"first", address)
                await until(lambda n=n: bool(got[n]))  # type: ignore[misc]
                assert got[n][0][0] - sent_at < interval / 2
            assert poller.reads == 0
            sent_at = loop.time()
            peer.sendto(b"second", addresses[0])
            await until(lambda: len(got[0]) == 2)
            first_at = got[0][1][0]
            assert first_at - sent_at < interval / 2  # a quiet spell: not held
            assert poller.reads == 1
            for n, address in enumerate(addresses):
                for k in range(3):
                    peer.sendto(bytes([n, k]), address)
            await until(lambda: sum(len(v) for v in got.values()) == 7)
            await asyncio.sleep(0.05)  # nothing more comes
            assert poller.reads == 2
            for n in range(3):
                at, batch = got[n][-1]
                assert at >= first_at + interval - 0.01  # an interval after the last read
                assert batch == [(bytes([n, k]), peer.getsockname()) for k in range(3)]
            readers[1].close()
            readers[1].close()  # twice: nothing more
            peer.sendto(b"late", addresses[0])
            peer.sendto(b"gone", addresses[1])
            await until(lambda: len(got[0]) == 4)
            assert len(got[1]) == 2

    runner.run(main())


def test_a_round_is_read_in_slices_with_the_loop_running_between(
    runner: asyncio.Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five ready sockets and slices of two: three reads in one round, each socket once,
    and a callback the loop was given meanwhile runs before the round ends; a datagram that
    arrives during the round waits for the next one."""
    monkeypatch.setattr(rtp_sockets, "SLICE", 2)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        events: list[str] = []
        first: list[int] = []
        primed = [False] * 5

        def received(n: int, batch: list[Datagram]) -> None:
            if not primed[n]:  # the socket's first datagram, read by the loop
                primed[n] = True
                return
            events.append(f"read {n}: {len(batch)}")
            if len(events) == 1:
                loop.call_soon(events.append, "other work")
                first.append(n)
                peer.sendto(b"during the round", addresses[n])

        receivers = [functools.partial(received, n) for n in range(5)]
        async with poller_with(0.2, receivers) as (poller, _, addresses, peer):
            for address in addresses:
                peer.sendto(b"first", address)
            await until(lambda: all(primed))
            assert poller.reads == 0
            for address in addresses:
                peer.sendto(b"x", address)
            await until(lambda: len([e for e in events if e.startswith("read")]) >= 6)
            reads = [e for e in events if e.startswith("read")]
            assert sorted(reads[:5]) == [f"read {n}: 1" for n in range(5)]
            assert reads[5] == f"read {first[0]}: 1"  # the next round's
            assert events.index("other work") < events.index(reads[4])
            assert poller.reads == 3 + 1

    runner.run(main())


def polled(reader: Reader) -> bool:
    """Whether the poller reads it now (not the loop)."""
    return reader._polled


def test_a_socket_stays_with_the_loop_until_its_track_has_anchored(
    runner: asyncio.Runner,
) -> None:
    """A first datagram that anchors nothing (one that fails SRTP's check, an RTCP or a
    STUN packet) leaves the socket with the loop, read as datagrams come; the read after
    which the track has anchored hands it to the poller."""

    async def main() -> None:
        anchored = [False]
        got: list[list[Datagram]] = []
        async with poller_with(0.2, [got.append], anchored=lambda: anchored[0]) as (
            poller,
            (reader,),
            (address,),
            peer,
        ):
            peer.sendto(b"anchors nothing", address)
            await until(lambda: len(got) == 1)
            peer.sendto(b"nor this", address)
            await until(lambda: len(got) == 2)
            assert poller.reads == 0 and not polled(reader)
            anchored[0] = True
            peer.sendto(b"anchors", address)
            await until(lambda: len(got) == 3)
            assert poller.reads == 0 and polled(reader)
            peer.sendto(b"the poller's", address)
            await until(lambda: len(got) == 4)
            assert poller.reads == 1

    runner.run(main())


def test_a_read_that_fills_its_batch_goes_back_into_the_round(
    runner: asyncio.Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A socket with more waiting than ``MAX_BATCH`` is read again in the same round (not
    an interval later), until it is empty."""
    monkeypatch.setattr(rtp_sockets, "MAX_BATCH", 4)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        got: list[tuple[float, int]] = []

        def received(batch: list[Datagram]) -> None:
            got.append((loop.time(), len(batch)))

        # The next round would be 5 s away.
        async with poller_with(5.0, [received]) as (poller, _, (address,), peer):
            peer.sendto(b"first", address)
            await until(lambda: len(got) == 1)
            started = loop.time()
            for n in range(10):
                peer.sendto(bytes([n]), address)
            await until(lambda: sum(n for _, n in got) == 11)
            assert [n for _, n in got] == [1, 4, 4, 2]
            assert poller.reads == 3
            assert got[-1][0] - started < 1.0  # the same round

    runner.run(main())

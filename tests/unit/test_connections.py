"""The node's connection accounting and the request-head watch (sans-I/O)."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.connections import (
    ConnectionCount,
    GuardedConnection,
    HeadWatch,
    busy_response,
    file_limit,
    peer_address,
    raise_file_limit,
)
from gateway.metrics import GatewayMetrics
from gateway.settings import Settings


def test_caps_count_overall_and_per_peer() -> None:
    count = ConnectionCount(max_connections=3, max_per_peer=2)
    assert count.admit("10.0.0.1") is None
    assert count.admit("10.0.0.1") is None
    assert count.admit("10.0.0.1") == "max_connections_per_peer"
    assert count.admit("10.0.0.2") is None
    assert count.admit("10.0.0.3") == "max_connections"
    count.release("10.0.0.1")
    assert count.admit("10.0.0.3") is None
    for peer in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        count.release(peer)
    assert (count.total, dict(count.per_peer)) == (0, {})


def test_peer_addresses_are_counted_as_one_form() -> None:
    assert peer_address(("::ffff:10.0.0.1", 5060, 0, 0)) == "10.0.0.1"
    assert peer_address(("127.0.0.1", 1)) == "127.0.0.1"
    assert peer_address(("::1", 1, 0, 0)) == "::/64"
    assert peer_address(("fe80::1%eth0", 1, 0, 2)) == "fe80::/64"


def test_ipv6_peers_are_counted_per_64() -> None:
    # One host is usually given a /64: its addresses share one per-peer count.
    count = ConnectionCount(max_connections=10, max_per_peer=2)
    assert count.admit(peer_address(("2001:db8:1:2::1", 1, 0, 0))) is None
    assert count.admit(peer_address(("2001:db8:1:2:ffff::9", 1, 0, 0))) is None
    refused = count.admit(peer_address(("2001:db8:1:2:abcd::1", 1, 0, 0)))
    assert refused == "max_connections_per_peer"
    assert count.admit(peer_address(("2001:db8:1:3::1", 1, 0, 0))) is None
    assert dict(count.per_peer) == {"2001:db8:1:2::/64": 2, "2001:db8:1:3::/64": 1}
    assert peer_address(None) == ""


def test_the_head_is_complete_at_the_empty_line_however_it_is_split() -> None:
    head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody"
    for split in range(1, len(head)):
        watch = HeadWatch()
        first, second = watch.feed(head[:split]), watch.feed(head[split:])
        assert second, split
        assert first == (b"\r\n\r\n" in head[:split])
    watch = HeadWatch()
    for byte in b"GET / HTTP/1.1\nHost: a\n":
        assert not watch.feed(bytes([byte]))
    assert watch.feed(b"\n")


def test_a_refused_connection_gets_a_503_it_can_read() -> None:
    response = busy_response("max_connections_per_peer")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ")
    assert f"Content-Length: {len(body)}".encode() in head
    assert b'"error": "too_many_connections"' in body


def test_empty_lines_before_the_request_line_are_not_the_end_of_the_head() -> None:
    # aiohttp's parser skips them; a slowloris could send them first to cancel the timer.
    watch = HeadWatch()
    assert not watch.feed(b"\r\n\r\n")
    assert not watch.feed(b"\n\r")
    assert not watch.feed(b"\nGET / HTTP/1.1\r\nHost: a\r\n")
    assert watch.feed(b"\r\n")
    watch = HeadWatch()
    assert not watch.feed(b"\r\n\r\nGET / HTTP/1.1\r\n")
    assert watch.feed(b"\r\n")


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("10.0.0.1", 1) if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:  # type: ignore[override]
        pass

    def close(self) -> None:
        self.closed = True


def test_a_connection_whose_handler_fails_is_still_released() -> None:
    def failing() -> asyncio.Protocol:
        raise RuntimeError("the handler could not be made")

    async def run() -> ConnectionCount:
        count = ConnectionCount(max_connections=1, max_per_peer=1)
        connection = GuardedConnection(failing, count, GatewayMetrics(None), 10.0)
        with pytest.raises(RuntimeError):
            connection.connection_made(_Transport())
        assert count.total == 1
        connection.connection_lost(None)
        return count

    count = asyncio.run(run())
    assert (count.total, dict(count.per_peer)) == (0, {})


_STUCK_SHUTDOWN = """
import asyncio, socket, sys
from aiohttp import web
from gateway.connections import run_app
from gateway.metrics import GatewayMetrics
from gateway.settings import Settings
from gateway.settings import HttpSettings

async def stuck(app):
    print("shutting down", flush=True)
    await asyncio.sleep(3600)

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
app = web.Application()
app.on_shutdown.append(stuck)
app.on_startup.append(lambda app: asyncio.sleep(0, print("serving", flush=True)))
run_app(app, HttpSettings(port=port), GatewayMetrics(None), ssl_context=None,
        shutdown_timeout=3600)
print("exited", flush=True)
"""


def test_a_second_signal_cuts_a_stuck_graceful_shutdown_short() -> None:
    # As web.run_app: an operator's second Ctrl+C must not wait out a stuck shutdown.
    with subprocess.Popen(  # noqa: S603
        [sys.executable, "-c", _STUCK_SHUTDOWN],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    ) as process:
        try:
            assert process.stdout is not None
            assert process.stdout.readline() == "serving\n"
            process.send_signal(signal.SIGINT)
            assert process.stdout.readline() == "shutting down\n"
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=30) == 0
            assert process.stdout.read() == "exited\n"
        finally:
            process.kill()


def test_serve_raises_its_file_limit_to_the_hard_one_and_says_when_that_is_short() -> None:
    unlimited = resource.RLIM_INFINITY
    assert file_limit(1024, 1048576, 21000) == (1048576, False)
    assert file_limit(1024, 4096, 21000) == (4096, True)  # the most it may: still short
    assert file_limit(65536, 65536, 21000) == (65536, False)
    assert file_limit(1024, unlimited, 21000) == (21000, False)
    assert file_limit(unlimited, unlimited, 21000) == (unlimited, False)


def test_a_short_file_limit_is_a_warning_naming_the_settings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    settings = Settings(
        http={"max_connections": hard + 1}  # type: ignore[arg-type]
        if hard != resource.RLIM_INFINITY
        else {"max_connections": 10},
    )
    try:
        with caplog.at_level(logging.WARNING, "gateway.connections"):
            raise_file_limit(settings)
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (
            hard if hard != resource.RLIM_INFINITY else max(soft, 10 + 10000 + 1000 + 512),
            hard,
        )
        if hard != resource.RLIM_INFINITY:
            assert "CALLVAULT_HTTP__MAX_CONNECTIONS" in caplog.text
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

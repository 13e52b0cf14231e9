"""AudioSocket's secret ids (API.md, "Exposure, limits and trust"), played as an attacker on
the PBX network would: the id is minted by the gateway and shown once; a stream naming the
call id, another tenant's call id or an id never minted meets the same refusal; while a
connection carries a call no other may, and a reconnect must come from the first peer's
address, on every node sharing the catalog and after a restart or a crash; and the id is in
no later API view, no catalog row, no file and no log line.

The gateway runs in process on both catalog backends and a FakeClock (so a reconnect
continues the timeline where the audio stopped). A second local address is 127.0.0.2: Linux
routes all of 127.0.0.0/8 to loopback, and the AudioSocket default allows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import re
import uuid
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.app import build_app
from gateway.attachments import LEASE_RENEWAL, LEASE_TTL
from gateway.settings import Settings
from gateway.state import CALLS, METRICS, SERVICES, SETTINGS
from storage.catalog import StreamLease
from storage.catalog.schema import UTCDateTime, calls, metadata
from storage.errors import CatalogUnavailable
from tests.functional.test_cli import start_serve
from tests.functional.test_crash import FLUSH_BYTES as CRASH_FLUSH_BYTES
from tests.functional.test_crash import OPERATOR as CRASH_OPERATOR
from tests.functional.test_crash import kill
from tests.functional.test_crash import server_env as crash_env
from tests.gateway import (
    FakeClock,
    Gateway,
    GatewayServer,
    TenantTokens,
    audiosocket_frame,
    audiosocket_id,
    audiosocket_uuid,
    bearer,
    data_files,
    free_port,
    read_wav,
    start_gateway,
    tone,
)
from tests.leaks import WATCH

NO_CONSENT = {"recording": {"enabled": True}, "consent": {"required": False}}
FRAME = 320  # 20 ms of 8 kHz 16-bit mono
OTHER_PEER = "127.0.0.2"


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "var",
        database_url=database_url,
        audiosocket={"port": free_port()},
        ai={"workers": 0},
        retention={"sweep_interval": "PT0S"},
    )


@pytest.fixture
async def gateway(
    aiohttp_client: Callable, settings: Settings, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> Gateway:
    caplog.set_level(logging.DEBUG)
    client = await aiohttp_client(GatewayServer(build_app(settings, clock=clock)))
    return await start_gateway(client)


# --- helpers ------------------------------------------------------------------------------


def pcm(seconds: float, hz: float, seed: int) -> bytes:
    return tone(seconds, hz, seed=seed).astype("<i2").tobytes()


def audio_frames(audio: bytes) -> bytes:
    return b"".join(
        audiosocket_frame(0x10, audio[start : start + FRAME])
        for start in range(0, len(audio), FRAME)
    )


def frame_count(audio: bytes) -> int:
    return -(-len(audio) // FRAME)


class Peer:
    """One AudioSocket connection from ``source`` (a loopback address)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self) -> bytes:
        """Everything the gateway sends until it closes."""
        try:
            return await asyncio.wait_for(self.reader.read(), timeout=10)
        finally:
            self.writer.close()

    async def drop(self) -> None:
        """Close without a hangup, as a PBX whose network failed."""
        self.writer.close()
        await self.writer.wait_closed()


Connect = Callable[..., Awaitable[Peer]]


@pytest.fixture
async def connect(settings: Settings) -> AsyncIterator[Connect]:
    """Opens AudioSocket connections from a loopback ``source``; closes them all at the end
    (also those of a test that failed half-way)."""
    opened: list[Peer] = []

    async def open_peer(source: str = "127.0.0.1") -> Peer:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", settings.audiosocket.port, local_addr=(source, 0)
        )
        opened.append(Peer(reader, writer))
        return opened[-1]

    yield open_peer
    for peer in opened:
        peer.writer.close()
        with contextlib.suppress(ConnectionError):
            await peer.writer.wait_closed()


async def refusal(connect: Connect, first: bytes, source: str = "127.0.0.1") -> bytes:
    """The gateway's answer to a connection that opens with ``first`` and sends audio."""
    peer = await connect(source)
    await peer.send(first + audio_frames(pcm(0.1, 900, seed=99)))
    return await peer.answer()


def refused(code: str) -> bytes:
    return audiosocket_frame(0xFF, code.encode())


async def until(predicate: Callable[[], bool]) -> None:
    """Wait (polling, 10 s at most) until the gateway reached a state."""
    async with asyncio.timeout(10):
        while not predicate():  # noqa: ASYNC110 - the state lives in another task
            await asyncio.sleep(0.01)


def frames_in(gateway: Gateway) -> float:
    return float(gateway.app[METRICS].frames_in.labels("audiosocket")._value.get())


async def detached(gateway: Gateway) -> None:
    await until(lambda: not gateway.app[CALLS].live()[0].attached)


async def inbound(gateway: Gateway, tenant: TenantTokens, recording_id: str) -> bytes:
    response = await gateway.client.get(
        f"/v1/recordings/{recording_id}/audio", headers=bearer(tenant.admin)
    )
    assert response.status == 200, await response.text()
    _channels, _rate, samples = read_wav(await response.read())
    assert not samples[:, 1].any()
    return bytes(np.ascontiguousarray(samples[:, 0]).astype("<i2").tobytes())


def spellings(secret: str) -> list[str]:
    """The forms an id could leak in: canonical, upper case, bare hex."""
    value = uuid.UUID(secret)
    return [str(value), str(value).upper(), value.hex, value.hex.upper()]


def assert_not_logged(caplog: pytest.LogCaptureFixture, *secrets: str) -> None:
    """No captured record carries the id: not its message, arguments or extra fields."""
    logged = caplog.text + "\n".join(repr(vars(record)) for record in caplog.records)
    for secret in secrets:
        for spelling in spellings(secret):
            assert spelling not in logged


# --- the id -------------------------------------------------------------------------------


async def test_the_id_is_minted_once_and_shown_in_no_later_view_row_file_or_log(
    gateway: Gateway, settings: Settings, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = await gateway.tenant("acme", NO_CONSENT)
    announced = await gateway.announce(tenant, transport="audiosocket", call_id="1732788000.7")
    secret = audiosocket_id(announced)
    assert announced["ingest"]["audiosocket"] == {
        "address": f"127.0.0.1:{settings.audiosocket.port}",
        "id": secret,
    }
    assert uuid.UUID(secret).version == 4
    audio = pcm(0.4, 440, seed=1)
    peer = await connect()
    await peer.send(audiosocket_uuid(secret) + audio_frames(audio) + audiosocket_frame(0x00))
    assert await peer.answer() == b""  # the hangup ends the call; no error frame
    assert await inbound(gateway, tenant, announced["recording_id"]) == audio

    # Every view of the call an API caller has afterwards: none shows the id.
    admin = bearer(tenant.admin)
    views = []
    for path, params in (
        ("/v1/tenants/acme/calls/1732788000.7", {}),
        (f"/v1/recordings/{announced['recording_id']}", {}),
        ("/v1/tenants/acme/recordings", {}),
        ("/v1/tenants/acme/audit", {}),
        ("/v1/tenants/acme/audit/verify", {}),
        ("/v1/tenants/acme/export", {"number": "+40711111111"}),
        ("/metrics", {}),
    ):
        response = await gateway.client.get(path, params=params, headers=admin)
        assert response.status == 200, (path, await response.text())
        body = await response.read()
        if path.endswith("/export"):
            with zipfile.ZipFile(io.BytesIO(body)) as archive:
                assert "calls.json" in archive.namelist()
                body = b"".join(archive.read(name) for name in archive.namelist())
        views.append(body.decode(errors="replace"))
    assert "1732788000.7" in views[0]  # the views do name the call, by its call id
    for spelling in spellings(secret):
        assert all(spelling not in view for view in views)

    # The catalog keeps the id's hash, never the id: no row of any table has it (queued
    # webhook jobs and audit details included), nor does any file of the data dir.
    engine = create_async_engine(settings.catalog_url)
    try:
        async with engine.connect() as conn:
            rows = {
                table.name: (await conn.execute(sa.select(table))).all()
                for table in metadata.sorted_tables
            }
    finally:
        await engine.dispose()
    dumped = repr(rows)
    for spelling in spellings(secret):
        assert spelling not in dumped
    digest = hashlib.sha256(uuid.UUID(secret).bytes).hexdigest()
    assert [row.audiosocket_id_hash for row in rows["calls"]] == [digest]
    raw = uuid.UUID(secret).bytes
    for file in data_files(settings.data_dir):
        content = file.read_bytes()
        assert raw not in content, file
        assert all(spelling.encode() not in content for spelling in spellings(secret)), file
    assert_not_logged(caplog, secret)


async def test_the_call_id_in_the_first_frame_is_refused_like_an_id_never_minted(
    gateway: Gateway, settings: Settings, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    """The PBX chose a UUID call id, as every AudioSocket call had to before: a host that
    learns it (it is in CDRs, webhooks, the processor's views) forges the first frame."""
    tenant = await gateway.tenant("acme", NO_CONSENT)
    call_id = str(uuid.uuid4())
    announced = await gateway.announce(tenant, transport="audiosocket", call_id=call_id)
    forged = await refusal(connect, audiosocket_uuid(call_id))
    never_minted = await refusal(connect, audiosocket_uuid(str(uuid.uuid4())))
    assert forged == never_minted == refused("unknown_call")
    assert frames_in(gateway) == 0
    assert await gateway.app[SERVICES].catalog.objects.list("acme") == []
    # The forgeries attached nothing: the real id still opens the call, from another peer.
    audio = pcm(0.2, 500, seed=2)
    peer = await connect(OTHER_PEER)
    secret = audiosocket_id(announced)
    await peer.send(audiosocket_uuid(secret) + audio_frames(audio) + audiosocket_frame(0x00))
    assert await peer.answer() == b""
    assert await inbound(gateway, tenant, announced["recording_id"]) == audio
    assert_not_logged(caplog, secret)


async def test_another_tenants_call_id_is_no_conflict_and_opens_nothing(
    gateway: Gateway, settings: Settings, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    """Call ids are unique per tenant, for AudioSocket too: announcing one that another
    tenant used is no 409 (which told that it existed), and naming it on the socket is the
    same refusal as naming nothing."""
    acme = await gateway.tenant("acme", NO_CONSENT)
    other = await gateway.tenant("other", NO_CONSENT)
    call_id = str(uuid.uuid4())
    mine = await gateway.announce(acme, transport="audiosocket", call_id=call_id)
    theirs = await gateway.announce(other, transport="audiosocket", call_id=call_id)
    assert mine["call_id"] == theirs["call_id"] == call_id
    assert audiosocket_id(mine) != audiosocket_id(theirs)
    # The same tenant's duplicate is still a conflict, as on every transport.
    response = await gateway.client.post(
        "/v1/tenants/other/calls",
        json={"call_id": call_id, "from": "+40711111111", "to": "+40722222222",
              "transport": "audiosocket", "consent": "granted"},
        headers=bearer(other.pbx),
    )  # fmt: skip
    assert (response.status, (await response.json())["error"]) == (409, "conflict")

    assert await refusal(connect, audiosocket_uuid(call_id)) == await refusal(
        connect, audiosocket_uuid(str(uuid.uuid4()))
    )
    assert frames_in(gateway) == 0
    # Each id opens its own tenant's call, and only it.
    sent = {}
    for announced, seed in ((mine, 3), (theirs, 4)):
        sent[announced["recording_id"]] = audio = pcm(0.2, 300 + 100 * seed, seed=seed)
        peer = await connect()
        await peer.send(
            audiosocket_uuid(audiosocket_id(announced))
            + audio_frames(audio)
            + audiosocket_frame(0x00)
        )
        assert await peer.answer() == b""
    assert await inbound(gateway, acme, mine["recording_id"]) == sent[mine["recording_id"]]
    assert await inbound(gateway, other, theirs["recording_id"]) == sent[theirs["recording_id"]]
    assert_not_logged(caplog, audiosocket_id(mine), audiosocket_id(theirs))


# --- attachment ---------------------------------------------------------------------------


async def test_a_second_connection_while_attached_is_refused_and_stores_nothing(
    gateway: Gateway, settings: Settings, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    """Someone who learnt the id races the real stream: refused, from the first peer's
    address or any other, and the recording holds the first connection's audio only."""
    tenant = await gateway.tenant("acme", NO_CONSENT)
    announced = await gateway.announce(tenant, transport="audiosocket")
    secret = audiosocket_id(announced)
    before, after = pcm(0.3, 440, seed=5), pcm(0.3, 660, seed=6)
    first = await connect()
    await first.send(audiosocket_uuid(secret) + audio_frames(before))
    await until(lambda: frames_in(gateway) == frame_count(before))
    for source in ("127.0.0.1", OTHER_PEER):
        assert await refusal(connect, audiosocket_uuid(secret), source) == refused(
            "already_attached"
        )
    assert frames_in(gateway) == frame_count(before)
    # The refusals detached nothing: the first connection goes on and ends the call.
    await first.send(audio_frames(after) + audiosocket_frame(0x00))
    assert await first.answer() == b""
    assert await inbound(gateway, tenant, announced["recording_id"]) == before + after
    assert_not_logged(caplog, secret)


async def test_a_reconnect_after_a_drop_from_the_first_peer_continues_the_call(
    gateway: Gateway, settings: Settings, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = await gateway.tenant("acme", NO_CONSENT)
    announced = await gateway.announce(tenant, transport="audiosocket")
    secret = audiosocket_id(announced)
    before, after = pcm(0.3, 440, seed=7), pcm(0.3, 660, seed=8)
    first = await connect(OTHER_PEER)
    await first.send(audiosocket_uuid(secret) + audio_frames(before))
    await until(lambda: frames_in(gateway) == frame_count(before))
    await first.drop()
    await detached(gateway)
    again = await connect(OTHER_PEER)  # the same address, another port
    await again.send(audiosocket_uuid(secret) + audio_frames(after) + audiosocket_frame(0x00))
    assert await again.answer() == b""
    assert await inbound(gateway, tenant, announced["recording_id"]) == before + after
    assert_not_logged(caplog, secret)


async def test_a_reconnect_from_another_address_is_refused(
    gateway: Gateway, settings: Settings, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    """After a drop, someone who learnt the id connects first: refused, and the call still
    waits for its own PBX."""
    tenant = await gateway.tenant("acme", NO_CONSENT)
    announced = await gateway.announce(tenant, transport="audiosocket")
    secret = audiosocket_id(announced)
    before, after = pcm(0.3, 440, seed=9), pcm(0.3, 660, seed=10)
    first = await connect()
    await first.send(audiosocket_uuid(secret) + audio_frames(before))
    await until(lambda: frames_in(gateway) == frame_count(before))
    await first.drop()
    await detached(gateway)
    assert await refusal(connect, audiosocket_uuid(secret), OTHER_PEER) == refused("peer_mismatch")
    assert frames_in(gateway) == frame_count(before)
    again = await connect()
    await again.send(audiosocket_uuid(secret) + audio_frames(after) + audiosocket_frame(0x00))
    assert await again.answer() == b""
    assert await inbound(gateway, tenant, announced["recording_id"]) == before + after
    assert_not_logged(caplog, secret)


async def test_the_pbx_reconnects_at_once_while_its_old_connections_release_is_in_flight(
    gateway: Gateway,
    settings: Settings,
    connect: Connect,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The connection drops; its release waits for a busy catalog (held here until the
    reconnect carries audio). The PBX's own reconnect to the same node takes the old
    connection's lease over at once instead of meeting ``already_attached``, and the late
    release frees nothing it no longer holds."""
    tenant = await gateway.tenant("acme", NO_CONSENT)
    announced = await gateway.announce(tenant, transport="audiosocket")
    secret, call_id = audiosocket_id(announced), announced["call_id"]
    calls = gateway.app[SERVICES].catalog.calls
    release, busy, released = calls.release_stream, asyncio.Event(), asyncio.Event()

    async def first_release_waits(*args: Any, **kwargs: Any) -> bool:
        if released.is_set():
            return await release(*args, **kwargs)
        await busy.wait()
        try:
            return await release(*args, **kwargs)
        finally:
            released.set()

    monkeypatch.setattr(calls, "release_stream", first_release_waits)
    before, after = pcm(0.3, 440, seed=20), pcm(0.3, 660, seed=21)
    first = await connect()
    await first.send(audiosocket_uuid(secret) + audio_frames(before))
    await until(lambda: frames_in(gateway) == frame_count(before))
    await first.drop()
    await detached(gateway)
    old = (await lease(gateway, "acme", call_id)).attached_by
    assert old is not None and not released.is_set()  # the release is still in flight
    again = await connect()
    await again.send(audiosocket_uuid(secret) + audio_frames(after))
    await until(lambda: frames_in(gateway) == frame_count(before) + frame_count(after))
    busy.set()
    await released.wait()
    held = await lease(gateway, "acme", call_id)
    assert held.attached_by not in (None, old)  # the reconnect holds it still
    await again.send(audiosocket_frame(0x00))
    assert await again.answer() == b""
    assert await inbound(gateway, tenant, announced["recording_id"]) == before + after
    assert_not_logged(caplog, secret)


async def test_a_failed_release_does_not_lock_out_the_pbxs_reconnect(
    gateway: Gateway,
    settings: Settings,
    connect: Connect,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The release of a dropped connection fails (the catalog blinked): the lease is left
    running, yet the PBX's own reconnect to this node takes it over at once; another
    address is still refused."""
    tenant = await gateway.tenant("acme", NO_CONSENT)
    announced = await gateway.announce(tenant, transport="audiosocket")
    secret = audiosocket_id(announced)
    calls = gateway.app[SERVICES].catalog.calls
    failed = asyncio.Event()

    async def release_fails(*_args: Any, **_kwargs: Any) -> bool:
        failed.set()
        raise CatalogUnavailable("The catalog database could not be reached.")

    monkeypatch.setattr(calls, "release_stream", release_fails)
    before, after = pcm(0.3, 440, seed=22), pcm(0.3, 660, seed=23)
    first = await connect()
    await first.send(audiosocket_uuid(secret) + audio_frames(before))
    await until(lambda: frames_in(gateway) == frame_count(before))
    await first.drop()
    await failed.wait()
    await detached(gateway)
    assert (await lease(gateway, "acme", announced["call_id"])).attached_by is not None
    assert await refusal(connect, audiosocket_uuid(secret), OTHER_PEER) == refused("peer_mismatch")
    again = await connect()
    await again.send(audiosocket_uuid(secret) + audio_frames(after))
    await until(lambda: frames_in(gateway) == frame_count(before) + frame_count(after))
    monkeypatch.undo()
    await again.send(audiosocket_frame(0x00))
    assert await again.answer() == b""
    assert await inbound(gateway, tenant, announced["recording_id"]) == before + after
    assert "could not be released (retried)" in caplog.text
    assert_not_logged(caplog, secret)


async def test_audio_after_the_call_ended_is_refused_as_call_ended(
    gateway: Gateway, settings: Settings, connect: Connect
) -> None:
    """The call is ended by ``POST /end`` while its connection still streams: its next
    frame meets ``call_ended`` (not ``already_attached``), and nothing more is stored."""
    tenant = await gateway.tenant("acme", NO_CONSENT)
    announced = await gateway.announce(tenant, transport="audiosocket")
    secret = audiosocket_id(announced)
    before = pcm(0.3, 440, seed=24)
    first = await connect()
    await first.send(audiosocket_uuid(secret) + audio_frames(before))
    await until(lambda: frames_in(gateway) == frame_count(before))
    response = await gateway.client.post(
        f"/v1/calls/{announced['call_id']}/end", headers=bearer(tenant.pbx)
    )
    assert response.status == 200, await response.text()
    await first.send(audio_frames(pcm(0.1, 660, seed=25)))
    assert await first.answer() == refused("call_ended")
    assert frames_in(gateway) == frame_count(before)
    assert await inbound(gateway, tenant, announced["recording_id"]) == before


async def test_an_unknown_id_answers_the_same_bytes_whatever_it_names(
    gateway: Gateway, connect: Connect
) -> None:
    """Unknown, the call id, another tenant's call id, a refused call's id: one answer."""
    acme = await gateway.tenant("acme", NO_CONSENT)
    quiet = await gateway.tenant("quiet", {})  # refuses every call
    call_id = str(uuid.uuid4())
    await gateway.announce(acme, transport="audiosocket", call_id=call_id)
    refused_id = str(uuid.uuid4())
    response = await gateway.client.post(
        "/v1/tenants/quiet/calls",
        json={"call_id": refused_id, "from": "+40711111111", "to": "+40722222222",
              "transport": "audiosocket", "consent": "granted"},
        headers=bearer(quiet.pbx),
    )  # fmt: skip
    assert response.status == 403
    answers = {
        await refusal(connect, audiosocket_uuid(named))
        for named in (str(uuid.uuid4()), call_id, refused_id, str(uuid.UUID(int=0)))
    }
    assert answers == {refused("unknown_call")}


# --- across nodes and restarts -------------------------------------------------------------
# The attachment rules are kept on the call's row (gateway.attachments), so they hold for a
# second node sharing the catalog and for a node restarted after a crash. The nodes here
# share one data dir as well as the catalog: key custody across nodes is issue 16's.


def node_settings(tmp_path: Path, database_url: str, **ingest: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "var",
        database_url=database_url,
        audiosocket={"port": free_port()},
        ai={"workers": 0},
        retention={"sweep_interval": "PT0S"},
        ingest=ingest,
    )


@pytest.fixture
async def dial() -> AsyncIterator[Callable[[int, str], Awaitable[Peer]]]:
    """Opens AudioSocket connections to any port from a loopback ``source``; closes them
    all at the end."""
    opened: list[Peer] = []

    async def open_peer(port: int, source: str = "127.0.0.1") -> Peer:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        opened.append(Peer(reader, writer))
        return opened[-1]

    yield open_peer
    for peer in opened:
        peer.writer.close()
        with contextlib.suppress(ConnectionError):
            await peer.writer.wait_closed()


Dial = Callable[[int, str], Awaitable[Peer]]


async def refused_at(dial: Dial, port: int, source: str, secret: str) -> bytes:
    """The answer of the node on ``port`` to a connection from ``source`` that names
    ``secret`` and sends audio."""
    peer = await dial(port, source)
    await peer.send(audiosocket_uuid(secret) + audio_frames(pcm(0.1, 900, seed=99)))
    return await peer.answer()


async def lease(node: Gateway, tenant: str, call_id: str) -> StreamLease:
    return await node.app[SERVICES].catalog.calls.stream_lease(tenant, call_id)


async def renewed(node: Gateway, tenant: str, call_id: str, clock: FakeClock) -> None:
    """Wait until ``node``'s ticker renewed the call's lease at the clock's time."""
    end = clock.now() + LEASE_TTL
    async with asyncio.timeout(10):
        while (await lease(node, tenant, call_id)).attached_until != end:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def port_of(node: Gateway) -> int:
    return int(node.app[SETTINGS].audiosocket.port)


async def test_a_second_node_refuses_a_connection_while_the_first_carries_the_call(
    aiohttp_client: Callable,
    tmp_path: Path,
    database_url: str,
    clock: FakeClock,
    dial: Dial,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Node B announced the call; its PBX streams to node A. Someone who learnt the id
    connects to B, from the PBX's address and from another: refused while A carries the
    call, nothing stored. B's call outlives B's start timeout while A carries it (a node
    never ends a call another node records), and the recording is A's audio only."""
    caplog.set_level(logging.DEBUG)
    a = await start_gateway(
        await aiohttp_client(
            GatewayServer(build_app(node_settings(tmp_path, database_url), clock=clock))
        )
    )
    b_settings = node_settings(tmp_path, database_url, start_timeout="PT10S")
    b = Gateway(
        client=await aiohttp_client(GatewayServer(build_app(b_settings, clock=clock))),
        operator=a.operator,
    )
    tenant = await b.tenant("acme", NO_CONSENT)
    announced = await b.announce(tenant, transport="audiosocket")
    secret, call_id = audiosocket_id(announced), announced["call_id"]
    before, after = pcm(0.3, 440, seed=11), pcm(0.3, 660, seed=12)
    first = await dial(port_of(a), "127.0.0.1")
    await first.send(audiosocket_uuid(secret) + audio_frames(before))
    await until(lambda: frames_in(a) == frame_count(before))

    for source in ("127.0.0.1", OTHER_PEER):
        assert await refused_at(dial, port_of(b), source, secret) == refused("already_attached")
    assert frames_in(b) == 0
    # Past B's start timeout, 5 s at a time while A renews its lease: B ends nothing.
    for _ in range(3):
        clock.advance(5)
        await renewed(a, "acme", call_id, clock)
    await b.app[CALLS].tick(clock.now())
    catalog = b.app[SERVICES].catalog
    assert (await catalog.recordings.get("acme", announced["recording_id"])).status == "recording"
    assert [session.call_id for session in b.app[CALLS].live()] == [call_id]

    await first.send(audio_frames(after) + audiosocket_frame(0x00))
    assert await first.answer() == b""
    assert frames_in(b) == 0
    assert await inbound(b, tenant, announced["recording_id"]) == before + after
    assert_not_logged(caplog, secret)


async def test_a_node_that_stalled_past_its_lease_loses_the_call_to_the_first_peer_only(
    aiohttp_client: Callable,
    tmp_path: Path,
    database_url: str,
    dial: Dial,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Node A stops renewing (its clock stands still: a stalled or partitioned node, as a
    crashed one looks to the catalog). Once its lease ran out, node B refuses another
    address and lets the PBX's own address take the call over; when A wakes, it finds its
    lease lost and refuses its old connection's audio, so the call never has two writers."""
    caplog.set_level(logging.DEBUG)
    clock_a, clock_b = FakeClock(), FakeClock()
    a = await start_gateway(
        await aiohttp_client(
            GatewayServer(build_app(node_settings(tmp_path, database_url), clock=clock_a))
        )
    )
    b = Gateway(
        client=await aiohttp_client(
            GatewayServer(build_app(node_settings(tmp_path, database_url), clock=clock_b))
        ),
        operator=a.operator,
    )
    tenant = await a.tenant("acme", NO_CONSENT)
    announced = await a.announce(tenant, transport="audiosocket")
    secret = audiosocket_id(announced)
    before, after, late = pcm(0.3, 440, seed=13), pcm(0.3, 660, seed=14), pcm(0.2, 880, seed=15)
    first = await dial(port_of(a), "127.0.0.1")
    await first.send(audiosocket_uuid(secret) + audio_frames(before))
    await until(lambda: frames_in(a) == frame_count(before))

    assert await refused_at(dial, port_of(b), "127.0.0.1", secret) == refused("already_attached")
    clock_b.advance(LEASE_TTL.total_seconds() + 1)  # A's lease ran out, as B sees it
    assert await refused_at(dial, port_of(b), OTHER_PEER, secret) == refused("peer_mismatch")
    again = await dial(port_of(b), "127.0.0.1")
    await again.send(audiosocket_uuid(secret) + audio_frames(after))
    await until(lambda: frames_in(b) == frame_count(after))

    clock_a.advance(LEASE_TTL.total_seconds() + 5)
    await a.app[CALLS].tick(clock_a.now())  # A renews (or its ticker does): lost
    (held,) = a.app[CALLS].live()
    await until(lambda: not held.attached and all(t.upload is None for t in held.tracks.values()))
    await first.send(audio_frames(late))
    assert await first.answer() == refused("already_attached")
    assert frames_in(a) == frame_count(before)

    await again.send(audiosocket_frame(0x00))
    assert await again.answer() == b""
    # A published what it recorded when it lost the lease; B placed its audio after the
    # outage (16 s of the call's clock), and nothing of the late frames is anywhere.
    audio = await inbound(a, tenant, announced["recording_id"])
    gap_end = int(LEASE_TTL.total_seconds() + 1) * 8000 * 2
    assert audio[: len(before)] == before
    assert not any(audio[len(before) : gap_end])
    assert audio[gap_end:] == after
    assert_not_logged(caplog, secret)


async def test_a_node_cut_off_from_the_catalog_takes_no_frame_past_its_lease(
    aiohttp_client: Callable,
    tmp_path: Path,
    database_url: str,
    dial: Dial,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Node A cannot reach the catalog: its renewals fail, so its lease runs out while it
    runs on. Past the lease's end A takes no frame more from its connection
    (``already_attached``) and publishes what it recorded, while the PBX's reconnect to
    node B carries the call: one writer at a time, even without a successful renewal
    telling A that it lost the call."""
    caplog.set_level(logging.DEBUG)
    clock_a, clock_b = FakeClock(), FakeClock()
    a = await start_gateway(
        await aiohttp_client(
            GatewayServer(build_app(node_settings(tmp_path, database_url), clock=clock_a))
        )
    )
    b = Gateway(
        client=await aiohttp_client(
            GatewayServer(build_app(node_settings(tmp_path, database_url), clock=clock_b))
        ),
        operator=a.operator,
    )
    tenant = await a.tenant("acme", NO_CONSENT)
    announced = await a.announce(tenant, transport="audiosocket")
    secret = audiosocket_id(announced)
    before, after, late = pcm(0.3, 440, seed=26), pcm(0.3, 660, seed=27), pcm(0.2, 880, seed=28)
    first = await dial(port_of(a), "127.0.0.1")
    await first.send(audiosocket_uuid(secret) + audio_frames(before))
    await until(lambda: frames_in(a) == frame_count(before))

    async def unreachable(*_args: Any, **_kwargs: Any) -> set[tuple[str, str]]:
        raise CatalogUnavailable("The catalog database could not be reached.")

    monkeypatch.setattr(a.app[SERVICES].catalog.calls, "renew_streams", unreachable)
    clock_a.advance(LEASE_TTL.total_seconds() + 5)
    await a.app[CALLS].tick(clock_a.now())  # the renewal fails; the lease ran out
    (held,) = a.app[CALLS].live()
    await until(lambda: not held.attached and all(t.upload is None for t in held.tracks.values()))
    clock_b.advance(LEASE_TTL.total_seconds() + 1)
    again = await dial(port_of(b), "127.0.0.1")
    await again.send(audiosocket_uuid(secret) + audio_frames(after))
    await until(lambda: frames_in(b) == frame_count(after))
    await first.send(audio_frames(late))
    assert await first.answer() == refused("already_attached")
    assert frames_in(a) == frame_count(before)

    monkeypatch.undo()
    await again.send(audiosocket_frame(0x00))
    assert await again.answer() == b""
    audio = await inbound(a, tenant, announced["recording_id"])
    gap_end = int(LEASE_TTL.total_seconds() + 1) * 8000 * 2
    assert audio[: len(before)] == before
    assert not any(audio[len(before) : gap_end])
    assert audio[gap_end:] == after
    assert_not_logged(caplog, secret)


async def test_a_failed_release_is_retried_at_the_next_renewal_so_another_node_takes_the_pbx(
    aiohttp_client: Callable,
    tmp_path: Path,
    database_url: str,
    clock: FakeClock,
    dial: Dial,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Node A's release of a dropped connection fails once. Node B refuses the PBX while
    that lease stands, but A retries the release at its next renewal (5 s), well before
    the lease would run out (15 s): the PBX's reconnect to B is accepted and carries the
    call from then on."""
    caplog.set_level(logging.DEBUG)
    a = await start_gateway(
        await aiohttp_client(
            GatewayServer(build_app(node_settings(tmp_path, database_url), clock=clock))
        )
    )
    b = Gateway(
        client=await aiohttp_client(
            GatewayServer(build_app(node_settings(tmp_path, database_url), clock=clock))
        ),
        operator=a.operator,
    )
    tenant = await a.tenant("acme", NO_CONSENT)
    announced = await a.announce(tenant, transport="audiosocket")
    secret, call_id = audiosocket_id(announced), announced["call_id"]
    calls = a.app[SERVICES].catalog.calls
    release, failed = calls.release_stream, asyncio.Event()

    async def first_release_fails(*args: Any, **kwargs: Any) -> bool:
        if not failed.is_set():
            failed.set()
            raise CatalogUnavailable("The catalog database could not be reached.")
        return await release(*args, **kwargs)

    monkeypatch.setattr(calls, "release_stream", first_release_fails)
    before, after = pcm(0.3, 440, seed=31), pcm(0.3, 660, seed=32)
    first = await dial(port_of(a), "127.0.0.1")
    await first.send(audiosocket_uuid(secret) + audio_frames(before))
    await until(lambda: frames_in(a) == frame_count(before))
    await first.drop()
    await failed.wait()
    await detached(a)
    assert await refused_at(dial, port_of(b), "127.0.0.1", secret) == refused("already_attached")

    clock.advance(LEASE_RENEWAL.total_seconds())
    await a.app[CALLS].tick(clock.now())
    async with asyncio.timeout(10):  # the explicit tick or the ticker's retried it
        while (await lease(a, "acme", call_id)).attached_by is not None:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert clock.now() < (await lease(a, "acme", call_id)).attached_until + LEASE_TTL
    again = await dial(port_of(b), "127.0.0.1")
    await again.send(audiosocket_uuid(secret) + audio_frames(after))
    await until(lambda: frames_in(b) == frame_count(after))
    (on_b,) = b.app[CALLS].live()
    carried = await lease(b, "acme", call_id)
    assert on_b.holder is not None and carried.attached_by == on_b.holder
    await again.send(audiosocket_frame(0x00))
    assert await again.answer() == b""
    assert "could not be released (retried)" in caplog.text
    assert_not_logged(caplog, secret)


async def test_a_frame_past_the_lease_is_refused_before_the_ticker_notices(
    gateway: Gateway, clock: FakeClock, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection's own frames check the lease's end: a frame that arrives after it ran
    out (the renewals failed) is refused even before a tick detaches the connection."""
    tenant = await gateway.tenant("acme", NO_CONSENT)
    announced = await gateway.announce(tenant, transport="audiosocket")
    secret = audiosocket_id(announced)
    before = pcm(0.3, 440, seed=29)
    first = await connect()
    await first.send(audiosocket_uuid(secret) + audio_frames(before))
    await until(lambda: frames_in(gateway) == frame_count(before))

    async def unreachable(*_args: Any, **_kwargs: Any) -> set[tuple[str, str]]:
        raise CatalogUnavailable("The catalog database could not be reached.")

    calls = gateway.app[SERVICES].catalog.calls
    monkeypatch.setattr(calls, "renew_streams", unreachable)
    (held,) = gateway.app[CALLS].live()
    assert held.lease_until is not None
    # The ticker may run meanwhile: with its renewals failing, it can only detach too.
    clock.current = held.lease_until
    await first.send(audio_frames(pcm(0.1, 660, seed=30)))
    assert await first.answer() == refused("already_attached")
    assert frames_in(gateway) == frame_count(before)


async def test_a_restarted_node_still_holds_the_call_to_its_first_peer(
    aiohttp_client: Callable,
    settings: Settings,
    clock: FakeClock,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The process forgot the call (a restart: the call is live in the catalog only): a
    connection from another address is still refused, the PBX's own continues the call."""
    caplog.set_level(logging.DEBUG)
    node = await start_gateway(
        await aiohttp_client(GatewayServer(build_app(settings, clock=clock)))
    )
    tenant = await node.tenant("acme", NO_CONSENT)
    announced = await node.announce(tenant, transport="audiosocket")
    secret = audiosocket_id(announced)
    before, after = pcm(0.3, 440, seed=16), pcm(0.3, 660, seed=17)
    first = await connect()
    await first.send(audiosocket_uuid(secret) + audio_frames(before))
    await until(lambda: frames_in(node) == frame_count(before))
    await first.drop()
    await detached(node)
    calls = node.app[CALLS]
    for session in calls.live():
        await session.publish(clock.now())  # what a crash leaves, recovery publishes
    calls._sessions.clear()  # the memory of the first peer is gone with the process
    clock.advance(5)  # the restart

    assert await refusal(connect, audiosocket_uuid(secret), OTHER_PEER) == refused("peer_mismatch")
    assert calls.live() == []  # the refusal took nothing up
    again = await connect()
    await again.send(audiosocket_uuid(secret) + audio_frames(after) + audiosocket_frame(0x00))
    assert await again.answer() == b""
    audio = await inbound(node, tenant, announced["recording_id"])
    restart = 5 * 8000 * 2  # the reconnect continues the call's clock: 5 s of silence
    assert (audio[: len(before)], audio[restart:]) == (before, after)
    assert not any(audio[len(before) : restart])
    assert_not_logged(caplog, secret)


async def audiosocket_frames_taken(session: aiohttp.ClientSession, count: int) -> None:
    """Wait until a ``serve`` process has taken ``count`` AudioSocket frames."""
    async with asyncio.timeout(20):
        while True:
            metrics = await (await session.get("/metrics")).text()
            found = re.search(
                r'^callvault_frames_in_total\{transport="audiosocket"\} (\S+)$', metrics, re.M
            )
            if found and float(found.group(1)) >= count:
                return
            await asyncio.sleep(0.05)


async def test_after_a_crash_the_restarted_node_takes_the_first_peer_back_at_once(
    aiohttp_client: Callable,
    tmp_path: Path,
    database_url: str,
    dial: Dial,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``callvault serve`` is killed (SIGKILL) while its connection carries the call: it
    neither detaches nor renews. The node restarted on its data dir (the same node)
    releases the lease its dead process held at start, before the lease ran out; it still
    refuses another address (the first peer's is in the catalog, not in the dead process),
    and lets the PBX's own address continue the recording after the outage at once. (A
    node that is not the dead one waits for the lease to run out:
    ``test_a_node_that_stalled_past_its_lease_loses_the_call_to_the_first_peer_only``.)"""
    caplog.set_level(logging.DEBUG)
    data_dir = tmp_path / "var"
    before, after = pcm(1.0, 440, seed=18), pcm(0.3, 660, seed=19)
    env = {**crash_env("PT30S"), "CALLVAULT_DATABASE_URL": database_url}
    process, base = start_serve(data_dir, **env)
    try:
        async with aiohttp.ClientSession(base_url=base) as session:
            served = Gateway(client=session, operator=CRASH_OPERATOR)  # type: ignore[arg-type]
            tenant = await served.tenant("acme", NO_CONSENT)
            announced = await served.announce(tenant, transport="audiosocket")
            secret = audiosocket_id(announced)
            port = int(announced["ingest"]["audiosocket"]["address"].rsplit(":", 1)[1])
            first = await dial(port, "127.0.0.1")
            await first.send(audiosocket_uuid(secret) + audio_frames(before))
            await audiosocket_frames_taken(session, frame_count(before))
            kill(process)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        if process.stdout:
            WATCH.watch_output(process.stdout.read(), "serve")
            process.stdout.close()

    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(calls.c.attached_until).where(calls.c.id == announced["call_id"])
                )
            ).one()
    finally:
        await engine.dispose()
    lease_end = UTCDateTime().process_result_value(row[0], engine.dialect)
    assert lease_end is not None
    clock = FakeClock(lease_end - timedelta(seconds=1))  # restarted before it ran out
    settings = node_settings(tmp_path, database_url)
    node = Gateway(
        client=await aiohttp_client(GatewayServer(build_app(settings, clock=clock))),
        operator=CRASH_OPERATOR,
    )
    released = await lease(node, "acme", announced["call_id"])
    assert (released.attached_by, released.attached_until) == (None, clock.now())
    assert await refused_at(dial, port_of(node), OTHER_PEER, secret) == refused("peer_mismatch")
    again = await dial(port_of(node), "127.0.0.1")
    await again.send(audiosocket_uuid(secret) + audio_frames(after) + audiosocket_frame(0x00))
    assert await again.answer() == b""

    audio = await inbound(node, tenant, announced["recording_id"])
    kept = len(before) - (CRASH_FLUSH_BYTES + FRAME)  # at most the last flush is lost
    assert audio[:kept] == before[:kept]
    assert audio[-len(after) :] == after
    assert not any(audio[len(before) : -len(after)])
    assert len(audio) > len(before) + len(after)  # the outage is silence
    assert_not_logged(caplog, secret)

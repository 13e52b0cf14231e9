"""Paced PBX calls of every transport against a running ``callvault serve``, for the fault
tests (``tests/functional/test_crash.py``, ``tests/integration/test_catalog_restart.py``)
and the soak run (``bench/soak.py``).

A ``PacedCall`` is announced over the API and sends its audio in real time, one 20 ms frame
at a time, over Twilio Media Streams, mod_audio_fork, AudioSocket or RTP/SRTP, as a PBX
does. It keeps which frames each of its connections sent (a ``Part``), so that after a fault
its export can be compared with what was sent: ``track_loss`` says how much of each part is
missing at its end and fails on anything else (a wrong sample, audio where the outage
should be silent).

Faults are the caller's: ``cut`` says the gateway died (called right before the kill, so
that what was sent until then is exactly what the part holds), ``back`` says where it
answers again. What a PBX does then depends on its transport: a WebSocket stream
reconnects to the same call; an AudioSocket call cannot until its lease in the catalog
runs out (15 s, ``gateway.attachments``), so its PBX hangs up through the API; an RTP call
has lost its ports with the process, so it is left to the gateway, which ends it after the
reconnect grace. A call whose audio ran out while the gateway was down hangs up through
the API too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
import numpy as np
import numpy.typing as npt

from gateway.services import open_services
from gateway.settings import Settings
from tests.gateway import (
    SERVE_READY_TIMEOUT_S,
    ULAW,
    Process,
    audiosocket_frame,
    audiosocket_id,
    audiosocket_uuid,
    bearer,
    callvault,
    callvault_env,
    free_port,
    metric_value,
    read_wav,
    tone,
    twilio_media,
    twilio_start,
    twilio_stop,
    wait_until_ready,
)
from tests.rtp import RtpSender, UdpSender, offer_key

Transport = Literal["twilio", "fork", "audiosocket", "rtp"]
Pcm = npt.NDArray[np.int16]

RATE = 8000
FRAME = 160
"""Samples per 20 ms frame at 8 kHz, on every transport here."""
FRAME_S = FRAME / RATE
TRACKS = ("inbound", "outbound")
RECONNECTS: frozenset[str] = frozenset({"twilio", "fork"})
"""Transports whose PBX reconnects to the same call after the gateway restarted."""
AFTER_RECONNECT_FRAMES = 50
"""A call that reconnects after a fault goes on for at least 1 s more, however long the
gateway took to come back (a loaded machine starts ``serve`` slowly)."""
RESERVE_FRAMES = 30 * 50
"""Audio made beyond a call's planned length, for that (30 s)."""


@dataclass
class Endpoint:
    """Where the gateway answers now."""

    base: str
    audiosocket_port: int


@dataclass
class Tenant:
    id: str
    admin: str
    pbx: str


@dataclass
class Part:
    """The frames one connection sent: ``first`` and the ``count`` after it."""

    first: int
    count: int = 0
    ended_by: str = "open"
    """``stop`` (the PBX ended the call on it), ``cut`` (the gateway died), ``drop`` (the
    connection failed otherwise) or ``hangup`` (ended through the API afterwards)."""


@dataclass(eq=False)
class PacedCall:
    transport: Transport
    tenant: Tenant
    seconds: float
    seed: int
    srtp: bool = False
    announced: dict[str, Any] = field(default_factory=dict)
    parts: list[Part] = field(default_factory=list)
    closes: list[tuple[int | None, str]] = field(default_factory=list)
    """How the gateway closed each connection that it closed (code, reason)."""

    def __post_init__(self) -> None:
        self.frames = int(self.seconds * RATE) // FRAME
        samples = (self.frames + RESERVE_FRAMES) * FRAME
        tracks = ("inbound",) if self.transport == "audiosocket" else TRACKS
        self.pcm: dict[str, Pcm] = {}
        self._wire: dict[str, bytes] = {}
        for index, track in enumerate(tracks):
            pcm = tone(samples / RATE, 300 + 70 * (self.seed % 7) + 150 * index,
                       seed=2 * self.seed + index)  # fmt: skip
            if self.transport in ("twilio", "rtp"):
                wire = ULAW.encode(pcm)
                self.pcm[track], self._wire[track] = ULAW.decode(wire), wire
            else:
                self.pcm[track], self._wire[track] = pcm, pcm.astype("<i2").tobytes()
        self._endpoint: Endpoint | None = None
        self._up = asyncio.Event()
        self._down = False
        self._conn: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._rtp: dict[str, RtpSender] = {}
        self._udp: UdpSender | None = None

    @property
    def call_id(self) -> str:
        return str(self.announced["call_id"])

    @property
    def recording_id(self) -> str:
        return str(self.announced["recording_id"])

    def sent(self, track: str) -> list[Pcm]:
        """The samples each part sent on ``track``."""
        return [
            self.pcm[track][part.first * FRAME : (part.first + part.count) * FRAME]
            for part in self.parts
        ]

    # --- the gateway's state, told by the caller -------------------------------------------

    def cut(self) -> None:
        """The gateway dies now: nothing more is sent until ``back``."""
        self._down = True
        self._up.clear()

    def back(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        self._up.set()

    # --- the call --------------------------------------------------------------------------

    async def announce(self, session: aiohttp.ClientSession, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        self._up.set()
        body: dict[str, Any] = {
            "from": "+40711111111",
            "to": "+40722222222",
            "consent": "granted",
            "transport": self.transport,
        }
        if self.transport == "rtp":
            body.update(codec="pcmu", srtp=self.srtp)
        async with session.post(
            f"{endpoint.base}/v1/tenants/{self.tenant.id}/calls",
            json=body,
            headers=bearer(self.tenant.pbx),
        ) as response:
            assert response.status == 201, await response.text()
            self.announced = await response.json()

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Send the call's audio in real time, through whatever faults the caller reports,
        and end it."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        end, index = self.frames, -1
        try:
            while (index := index + 1) < end:
                delay = start + index * FRAME_S - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                parts = len(self.parts)
                if not await self._ready(session, index):
                    if self.transport not in RECONNECTS:
                        if self._down and self._up.is_set():
                            break  # back, but this transport cannot carry the call on
                    else:  # its PBX holds the call until it can reconnect
                        end = min(max(end, index + 2), self.frames + RESERVE_FRAMES)
                    continue
                if len(self.parts) > parts > 0:  # reconnected: the call goes on a while
                    end = min(
                        max(end, index + AFTER_RECONNECT_FRAMES), self.frames + RESERVE_FRAMES
                    )
                try:
                    await self._send(index)
                except (OSError, aiohttp.ClientError, RuntimeError):
                    await self._close("drop")
                    continue
                self.parts[-1].count += 1
            await self._end(session)
        finally:
            await self._close("drop")
            if self._udp is not None:
                self._udp.close()

    async def _ready(self, session: aiohttp.ClientSession, index: int) -> bool:
        """Whether frame ``index`` can be sent: connected, or (re)connected now."""
        if self._down:
            if self._conn is not None or self._reader is not None:
                await self._close("cut")
            if not self._up.is_set() or self.transport not in RECONNECTS:
                return False
            self._down = False
        if self._conn is not None:
            return True
        try:
            await self._connect(session)
        except (OSError, aiohttp.ClientError, TimeoutError):
            return False
        self.parts.append(Part(first=index))
        return True

    async def _end(self, session: aiohttp.ClientSession) -> None:
        """Hang up: on the stream if it is up, else (and always for RTP) through the API
        once the gateway answers; an RTP call that lost its gateway is left to it."""
        if not self._down and self._conn is not None and self.transport != "rtp":
            try:
                await self._stop()
                await asyncio.wait_for(asyncio.shield(self._reader), 20)  # type: ignore[arg-type]
                self.parts[-1].ended_by = "stop"
                return
            except (OSError, aiohttp.ClientError, RuntimeError, TimeoutError):
                await self._close("drop")
        if self._down and self.transport == "rtp":
            return
        deadline = time.monotonic() + 60
        while True:  # a 503 (the catalog is down) is retried, as a PBX does
            await self._up.wait()
            assert self._endpoint is not None  # noqa: S101
            async with session.post(
                f"{self._endpoint.base}/v1/calls/{self.call_id}/end",
                headers=bearer(self.tenant.pbx),
            ) as response:
                if response.status == 200:
                    break
                assert response.status == 503 and time.monotonic() < deadline, await response.text()
            await asyncio.sleep(0.5)
        if self.parts and self.parts[-1].ended_by == "open":
            self.parts[-1].ended_by = "stop"

    # --- transports ------------------------------------------------------------------------

    async def _connect(self, session: aiohttp.ClientSession) -> None:
        endpoint = self._endpoint
        assert endpoint is not None  # noqa: S101
        if self.transport in ("twilio", "fork"):
            ws = await session.ws_connect(
                f"{endpoint.base}/v1/ingest/{self.transport}",
                headers=bearer(self.tenant.pbx),
            )
            if self.transport == "twilio":
                await ws.send_str(twilio_start(self.call_id))
            else:
                await ws.send_str(
                    json.dumps({"call_id": self.call_id, "sampleRate": RATE, "mixType": "stereo"})
                )
            self._conn = ws
            self._reader = asyncio.create_task(self._read_ws(ws))
        elif self.transport == "audiosocket":
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", endpoint.audiosocket_port), 5
            )
            writer.write(audiosocket_uuid(audiosocket_id(self.announced)))
            self._conn = writer
            self._reader = asyncio.create_task(self._read_tcp(reader))
        else:
            offer = self.announced["ingest"]["rtp"]
            for track in TRACKS:
                key = offer_key(offer, track) if self.srtp else None
                self._rtp[track] = RtpSender(0, key, ssrc=0x1000 + self.seed * 2 + len(self._rtp))
            self._udp = UdpSender()
            self._conn = offer

    async def _send(self, index: int) -> None:
        if self._reader is not None and self._reader.done():
            # The gateway closed the connection (a close code, AudioSocket's 0xff frame): a
            # PBX stops sending on it; what it sent after that was never taken.
            raise ConnectionResetError("the gateway closed the connection")
        chunk = {track: self._frame(track, index) for track in self.pcm}
        if self.transport == "twilio":
            # A new stream's timestamps start at 0 (Twilio: ms since the stream started).
            stamp = (index - self.parts[-1].first) * 20
            for track, payload in chunk.items():
                await self._conn.send_str(twilio_media(track, stamp, payload))
        elif self.transport == "fork":
            stereo = np.column_stack([
                np.frombuffer(chunk[track], "<i2") for track in TRACKS
            ]).astype("<i2")  # fmt: skip
            await self._conn.send_bytes(stereo.tobytes())
        elif self.transport == "audiosocket":
            self._conn.write(audiosocket_frame(0x10, chunk["inbound"]))
            await self._conn.drain()
        else:
            assert self._udp is not None  # noqa: S101
            for track, payload in chunk.items():
                self._udp.send(self._rtp[track].packet(payload), int(self._conn[track]))

    def _frame(self, track: str, index: int) -> bytes:
        width = len(self._wire[track]) // len(self.pcm[track])
        return self._wire[track][index * FRAME * width : (index + 1) * FRAME * width]

    async def _stop(self) -> None:
        if self.transport == "twilio":
            await self._conn.send_str(twilio_stop())
        elif self.transport == "fork":
            await self._conn.send_str(json.dumps({"event": "stop"}))
        else:
            self._conn.write(audiosocket_frame(0x00))
            await self._conn.drain()

    async def _read_ws(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Read what the gateway sends (answering its pings) until it closes."""
        async for _message in ws:
            pass
        self.closes.append((ws.close_code, ""))

    async def _read_tcp(self, reader: asyncio.StreamReader) -> None:
        data = b""
        with contextlib.suppress(OSError):
            while chunk := await reader.read(4096):
                data += chunk
        self.closes.append((None, data[3:].decode(errors="replace") if data else ""))

    async def _close(self, how: str) -> None:
        conn, self._conn = self._conn, None
        reader, self._reader = self._reader, None
        if self.parts and self.parts[-1].ended_by == "open" and conn is not None:
            self.parts[-1].ended_by = how
        if isinstance(conn, aiohttp.ClientWebSocketResponse):
            with contextlib.suppress(OSError, aiohttp.ClientError, RuntimeError, TimeoutError):
                await asyncio.wait_for(conn.close(), 2)
        elif isinstance(conn, asyncio.StreamWriter):
            conn.close()
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError, aiohttp.ClientError):
                await reader


# --- the gateway ---------------------------------------------------------------------------


@contextlib.contextmanager
def gateway_process(
    tmp_path: Path, name: str, data_dir: Path, **settings: str
) -> Iterator[tuple[Process, Endpoint]]:
    """``callvault serve`` on ``data_dir`` with fresh ports, ready; killed at the end."""
    port, audiosocket = free_port(), free_port()
    env = callvault_env(
        data_dir,
        CALLVAULT_HTTP__PORT=str(port),
        CALLVAULT_AUDIOSOCKET__PORT=str(audiosocket),
        **settings,
    )
    with callvault("serve", tmp_path / f"{name}.log", env) as process:
        base = f"http://127.0.0.1:{port}"
        wait_until_ready(base, process.process, process.log, timeout_s=SERVE_READY_TIMEOUT_S)
        yield process, Endpoint(base, audiosocket)


async def check_objects(
    data_dir: Path, tenants: list[str], database_url: str | None = None
) -> dict[str, int]:
    """Open every object of ``tenants`` through the vault, verifying each whole (a torn or
    forged segment raises); the objects by state."""
    states: dict[str, int] = {}
    settings = Settings(data_dir=data_dir, database_url=database_url)
    async with open_services(settings) as services:
        for tenant in tenants:
            for stored in await services.catalog.objects.list(tenant):
                states[stored.state] = states.get(stored.state, 0) + 1
                if stored.state == "committed":
                    stream = await services.vault.open_object(tenant, stored.id, verify_all=True)
                    async for _chunk in stream:
                        pass
        await services.catalog.close()
    return states


async def taken(http: aiohttp.ClientSession, base: str, calls: list[PacedCall]) -> None:
    """Wait until the gateway has taken every frame the calls sent (``frames_in`` counts one
    per track and frame on every transport)."""
    sent = sum(sum(part.count for part in call.parts) * len(call.pcm) for call in calls)
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        async with http.get(f"{base}/metrics") as response:
            text = await response.text()
        took = sum(
            metric_value(text, "callvault_frames_in_total", transport=transport)
            for transport in ("twilio", "fork", "audiosocket", "rtp")
        )
        if took >= sent:
            return
        assert asyncio.get_running_loop().time() < deadline, f"took {took} of {sent} frames"
        await asyncio.sleep(0.01)


# --- what came back ----------------------------------------------------------------------


async def export(
    session: aiohttp.ClientSession, base: str, admin: str, recording_id: str, *, wait_s: float
) -> tuple[Pcm, dict[str, Any]]:
    """The recording's WAV samples (frames, 2 channels) and metadata, once it has ended and
    all its audio is published (until then its export answers 503 ``storage_unavailable``,
    "try again shortly"), within ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        async with session.get(f"{base}/v1/recordings/{recording_id}", headers=bearer(admin)) as r:
            meta = await r.json()
        assert r.status in (200, 503), meta  # 503: the catalog is down (a fault under way)
        if r.status == 200 and meta["status"] != "recording":
            async with session.get(
                f"{base}/v1/recordings/{recording_id}/audio", headers=bearer(admin)
            ) as response:
                body = await response.read()
            if response.status == 200:
                break
            assert response.status == 503 and time.monotonic() < deadline, body
        assert time.monotonic() < deadline, f"{recording_id} still recording: {meta}"
        await asyncio.sleep(0.1)  # polling another process's progress
    channels, rate, pcm = read_wav(body)
    assert (channels, rate) == (2, RATE)
    return pcm, dict(meta)


def track_loss(exported: npt.NDArray[Any], parts: list[Pcm]) -> list[int]:
    """How many samples at the end of each part the exported track lacks.

    Each part must lie in the export exactly (sample for sample) from where it starts, in
    order, up to where its kept prefix ends; between parts and after the last, the export
    must be silent (an outage is kept as silence). A part of which not even its first frame
    came back counts as lost whole. Anything else fails with where it went wrong."""
    track = np.asarray(exported, dtype=np.int16)
    lost: list[int] = []
    at = 0
    for number, part in enumerate(parts):
        if not len(part):
            lost.append(0)
            continue
        start = _find(track, part[: min(len(part), FRAME)], at)
        if start is None:
            lost.append(len(part))
            continue
        assert not track[at:start].any(), f"part {number}: audio before it at {at}..{start}"
        window = track[start : start + len(part)]
        differs = np.flatnonzero(window != part[: len(window)])
        kept = int(differs[0]) if len(differs) else len(window)
        lost.append(len(part) - kept)
        at = start + kept
    assert not track[at:].any(), f"audio after the last part, from sample {at}"
    return lost


def _find(track: npt.NDArray[np.int16], head: Pcm, after: int) -> int | None:
    """The first index at or after ``after`` where ``head`` lies in ``track``."""
    if len(track) < after + len(head):
        return None
    for start in np.flatnonzero(track[after : len(track) - len(head) + 1] == head[0]):
        index = after + int(start)
        if np.array_equal(track[index : index + len(head)], head):
            return index
    return None


def channel(track: str) -> int:
    return TRACKS.index(track)

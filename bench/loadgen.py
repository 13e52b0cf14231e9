"""The load generator of issue 17: N live calls against ``callvault serve`` (or the bare
receivers of ``bench/bare.py``), each announced through the API, streamed at live pace and
checked afterwards sample by sample.

    python bench/loadgen.py --base http://127.0.0.1:PORT
        --transport twilio|fork|audiosocket|srtp|rtp|mixed --calls N --seconds S
        [--ramp 2] [--minutes M]
        [--setup-token OPERATOR_TOKEN | --tenant T --pbx-token X --reader-token Y]
        [--bare] [--loop uvloop|asyncio] [--json]

Run it pinned to the core the contestant does not use: ``taskset -c 1 python bench/loadgen.py
...`` with ``taskset -c 0 callvault serve`` (or ``taskset -c 0 python bench/bare.py``).

What it does, per call: ``POST /v1/tenants/{t}/calls`` (with ``--setup-token`` it first
creates a tenant of its own with recording on, consent not required, unencrypted RTP allowed
and every limit at 1,000,000), then streams one 20 ms frame per track per tick over the
call's transport: Twilio Media Streams (``connected``, ``start``, two ``media`` messages a
tick, each its own write, ``stop``), mod_audio_fork (metadata, one 640-byte stereo L16
binary frame a tick, ``stop``), AudioSocket (the id frame, one 320-byte slin frame a tick,
hang-up) or RTP/SRTP (a connected UDP socket per track, PCMU, pylibsrtp ``protect``, then
``POST /v1/calls/{id}/end``). Starts are spread over ``--ramp``; every call's ticks fall in
one of ``SLOTS`` sub-slots of the 20 ms, so the load is spread evenly. One ticker drives all
calls; a tick that runs late sends every frame due (nothing is skipped), and its lateness
is the ``send_lag``. WebSockets run on raw asyncio transports: the HTTP upgrade is written
by hand and client frames use an all-zero masking key (valid RFC 6455: the payload goes
out unchanged); pings are answered, the close code recorded.

The check (``bench/loadframes.py``): every frame carries a marker (call, track, index)
over a per-(call, track) base block, so after the calls end each recording's export
(``GET /v1/recordings/{id}/audio``, fetched ``VERIFY_CONCURRENCY`` at a time) is compared
with the regenerated frames: a frame counts as stored only if it lies sample-exact at its
place, the rest of the track silent. With ``--bare`` the check is bare.py's own count of
frames taken (``GET /bare/stats``, the delta over the run).

``--minutes M`` (soak): each of the N lanes starts a new call as its last one ends until M
minutes have passed; calls are checked as they end.

Output: a table, and with ``--json`` one JSON line (interface.md): frames sent, checked,
lost, calls failed with the first reasons, send lag p99/max (ms), the loadgen's CPU seconds,
its CPU µs per frame over the steady window, and the window itself (``steady_from``, when
all N calls were live; ``steady_until``, when the first began to end; unix times). Exit 0
when nothing was lost, 1 when something was, 2 on a usage or setup error.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import resource
import secrets
import socket
import struct
import sys
import time
import uuid
import wave
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import numpy as np  # noqa: E402

from bench.loadframes import FRAME, L16Frames, UlawFrames, check_track  # noqa: E402
from gateway.ingest.rtp import SrtpKey  # noqa: E402

TRANSPORTS = ("twilio", "fork", "audiosocket", "srtp", "rtp")
MIXED = ("twilio", "fork", "audiosocket", "srtp")
FRAME_S = 0.02
SLOTS = 10
"""Sub-slots of the 20 ms tick: call i ticks in slot i % SLOTS."""
VERIFY_CONCURRENCY = 8
ANNOUNCE_CONCURRENCY = 32
END_TIMEOUT_S = 30.0
EXPORT_WAIT_S = 120.0
STREAM_SID = "MZ00000000000000000000000000000000"
LIMIT = 1_000_000
INSTRUCTIONS = {
    "recording": {"enabled": True},
    "consent": {"required": False},
    "transport": {"allow_unencrypted_rtp": True},
}


class SetupError(Exception):
    """Usage or setup failed (exit 2)."""


@dataclass
class Options:
    base: str
    transport: str
    calls: int
    seconds: float
    ramp: float = 2.0
    minutes: float = 0.0
    setup_token: str | None = None
    tenant: str | None = None
    pbx_token: str | None = None
    reader_token: str | None = None
    bare: bool = False
    loop: str = "auto"
    json: bool = False


@dataclass
class Result:
    transport: str
    calls: int
    seconds: float
    frames_sent: int = 0
    frames_checked: int = 0
    frames_lost: int = 0
    calls_failed: int = 0
    failures: list[str] = field(default_factory=list)
    send_lag_ms_p99: float = 0.0
    send_lag_ms_max: float = 0.0
    loadgen_cpu_s: float = 0.0
    loadgen_cpu_us_per_frame: float = 0.0
    """CPU µs per frame sent over the steady window."""
    wall_s: float = 0.0
    steady_from: float | None = None
    steady_until: float | None = None
    calls_started: int = 0
    bare: bool = False
    loop: str = ""


# --- WebSocket client on a raw transport ----------------------------------------------------


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """A client frame, FIN set, masked with the all-zero key (the payload is unchanged)."""
    n = len(payload)
    if n < 126:
        return struct.pack("!BB4x", 0x80 | opcode, 0x80 | n) + payload
    if n < 65536:
        return struct.pack("!BBH4x", 0x80 | opcode, 0xFE, n) + payload
    return struct.pack("!BBQ4x", 0x80 | opcode, 0xFF, n) + payload


class Stream(asyncio.Protocol):
    """A TCP connection: a WebSocket client after its upgrade, or AudioSocket."""

    def __init__(self, upgrade: bytes | None) -> None:
        self.upgrade = upgrade
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.ready = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.close_code: int | None = None
        self.close_reason = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.upgrade is None:
            self.ready.set_result(None)
        else:
            self.transport.write(self.upgrade)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.ready.done():
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end])
            del self.buffer[: end + 4]
            if not head.startswith(b"HTTP/1.1 101"):
                self.ready.set_exception(ConnectionError(head.split(b"\r\n")[0].decode()))
                return
            self.ready.set_result(None)
        if self.upgrade is None:
            self._audiosocket()
        else:
            self._frames()

    def _frames(self) -> None:
        buf = self.buffer
        while len(buf) >= 2:
            opcode, n = buf[0] & 0x0F, buf[1] & 0x7F
            at = 2
            if n == 126:
                if len(buf) < 4:
                    return
                n, at = struct.unpack_from("!H", buf, 2)[0], 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n, at = struct.unpack_from("!Q", buf, 2)[0], 10
            if len(buf) < at + n:
                return
            payload = bytes(buf[at : at + n])
            del buf[: at + n]
            if opcode == 0x9:
                self.write(ws_frame(0xA, payload))
            elif opcode == 0x8:
                if len(payload) >= 2:
                    self.close_code = struct.unpack("!H", payload[:2])[0]
                    self.close_reason = payload[2:].decode(errors="replace")
                self.write(ws_frame(0x8, payload[:2]))
                self._closed()

    def _audiosocket(self) -> None:
        buf = self.buffer
        while len(buf) >= 3:
            n = int.from_bytes(buf[1:3], "big")
            if len(buf) < 3 + n:
                return
            if buf[0] == 0xFF:
                self.close_reason = bytes(buf[3 : 3 + n]).decode(errors="replace")
            del buf[: 3 + n]

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _closed(self) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc or ConnectionError("closed during the upgrade"))
        if not self.closed.done():
            self.closed.set_result(None)

    @property
    def broken(self) -> bool:
        return self.transport is None or self.transport.is_closing()


def upgrade_request(host: str, port: int, path: str, token: str | None) -> bytes:
    key = base64.b64encode(secrets.token_bytes(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# --- calls ----------------------------------------------------------------------------------


@dataclass(eq=False)
class Call:
    number: int
    transport: str
    frames: int
    announced: dict[str, Any] = field(default_factory=dict)
    sent: int = 0
    """Ticks sent (each carries one frame per track)."""
    t0: float | None = None
    stream: Stream | None = None
    socks: list[socket.socket] = field(default_factory=list)
    failure: str | None = None
    send: Callable[[int], None] | None = None
    done: asyncio.Future[None] | None = None
    lost: int = 0
    """Frames the check found missing or misplaced."""

    @property
    def tracks(self) -> int:
        return 1 if self.transport == "audiosocket" else 2

    @property
    def encoding(self) -> str:
        return "ulaw" if self.transport in ("twilio", "srtp", "rtp") else "l16"

    # --- connecting: each transport's sender, built once -----------------------------------

    async def connect(self, host: str, port: int, token: str | None) -> None:
        loop = asyncio.get_running_loop()
        kind = self.transport
        if kind in ("twilio", "fork"):
            path = self.announced["ingest"].get("websocket") or f"/v1/ingest/{kind}"
            stream = Stream(upgrade_request(host, port, path, token))
            await loop.create_connection(lambda: stream, host, port)
            self.stream = stream
            await asyncio.wait_for(stream.ready, 30)
            if kind == "twilio":
                self._twilio(stream)
            else:
                self._fork(stream)
        elif kind == "audiosocket":
            offer = self.announced["ingest"]["audiosocket"]
            as_host, as_port = offer["address"].rsplit(":", 1)
            stream = Stream(None)
            await loop.create_connection(lambda: stream, as_host, int(as_port))
            self.stream = stream
            stream.write(b"\x01\x00\x10" + uuid.UUID(offer["id"]).bytes)
            frames = L16Frames(self.number, 0)
            head = b"\x10\x01\x40"

            def send_audiosocket(index: int) -> None:
                stream.write(head + frames.frame(index))

            self.send = send_audiosocket
        else:
            self._rtp(self.announced["ingest"]["rtp"])

    def _twilio(self, stream: Stream) -> None:
        stream.write(ws_frame(0x1, b'{"event":"connected","protocol":"Call","version":"1.0.0"}'))
        start = {
            "event": "start",
            "sequenceNumber": "1",
            "start": {
                "accountSid": "AC" + "0" * 32,
                "streamSid": STREAM_SID,
                "callSid": "CA" + secrets.token_hex(16),
                "tracks": ["inbound", "outbound"],
                "customParameters": {"call_id": self.announced["call_id"]},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
            "streamSid": STREAM_SID,
        }
        stream.write(ws_frame(0x1, json.dumps(start).encode()))
        frames = [UlawFrames(self.number, track) for track in (0, 1)]
        # base64 of marker + the tail's first 2 bytes (9 bytes: whole groups), then the rest.
        tails = [(f.tail[:2], base64.b64encode(f.tail[2:])) for f in frames]
        templates = [
            b'{"event":"media","sequenceNumber":"%d","media":{"track":"' + name
            + b'","chunk":"%d","timestamp":"%d","payload":"%s%s"},"streamSid":"'
            + STREAM_SID.encode() + b'"}'
            for name in (b"inbound", b"outbound")
        ]  # fmt: skip
        b64 = base64.b64encode
        pack = struct.Struct("!BBH4x").pack

        def send_twilio(index: int) -> None:
            for track in (0, 1):
                head, tail = tails[track]
                frame = frames[track]
                seq = 2 * index + track + 2
                body = templates[track] % (
                    seq,
                    index + 1,
                    index * 20,
                    b64(frame.frame(index)[:7] + head),
                    tail,
                )
                stream.write(pack(0x81, 0xFE, len(body)) + body)

        self.send = send_twilio

    def _fork(self, stream: Stream) -> None:
        meta = {"call_id": self.announced["call_id"], "sampleRate": 8000, "mixType": "stereo"}
        stream.write(ws_frame(0x1, json.dumps(meta).encode()))
        frames = [L16Frames(self.number, track) for track in (0, 1)]
        stereo = np.empty((FRAME - 5, 2), "<i2")
        stereo[:, 0] = np.frombuffer(frames[0].tail, "<i2")
        stereo[:, 1] = np.frombuffer(frames[1].tail, "<i2")
        tail = stereo.tobytes()
        head = struct.pack("!BBH4x", 0x82, 0xFE, 4 * FRAME)
        pack = struct.Struct("<10h").pack
        n = self.number & 0x7FFF

        def send_fork(index: int) -> None:
            low, high = index & 0x7FFF, (index >> 15) + 1
            stream.write(head + pack(0x2A5A, 0x2A5A, n, n, 1, 2, low, low, high, high) + tail)

        self.send = send_fork

    def _rtp(self, offer: dict[str, Any]) -> None:
        host = offer.get("host") or "127.0.0.1"
        sends: list[Callable[[bytes], int]] = []
        protects: list[Callable[[bytes], bytes] | None] = []
        for name in ("inbound", "outbound"):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.connect((host, int(offer[name])))
            self.socks.append(sock)
            sends.append(sock.send)
            crypto = offer.get("crypto")
            if self.transport == "srtp" and crypto:
                protects.append(SrtpKey.from_sdes(crypto[name]).session(outbound=True).protect)
            else:
                protects.append(None)
        frames = [UlawFrames(self.number, track) for track in (0, 1)]
        ssrcs = [secrets.randbits(32) for _ in (0, 1)]
        pack = struct.Struct("!BBHII").pack

        def send_rtp(index: int) -> None:
            for track in (0, 1):
                packet = pack(0x80, 0, index & 0xFFFF, index * FRAME & 0xFFFFFFFF, ssrcs[track])
                packet += frames[track].frame(index)
                protect = protects[track]
                try:
                    sends[track](protect(packet) if protect is not None else packet)
                except OSError as e:  # a full socket buffer: that datagram is lost here
                    self.failure = self.failure or f"rtp send: {e}"

        self.send = send_rtp

    def tick(self, due: float) -> None:
        """Send every frame due at ``due`` (one per track per 20 ms since ``t0``)."""
        if self.t0 is None:
            self.t0 = due
        upto = min(int((due - self.t0) / FRAME_S + 1e-6) + 1, self.frames)
        send = self.send
        assert send is not None
        if self.stream is not None and self.stream.broken:
            closed = f"closed by the server ({self.stream.close_code} {self.stream.close_reason})"
            self.failure = self.failure or closed
            upto = self.sent
        while self.sent < upto:
            send(self.sent)
            self.sent += 1
        if (upto == self.frames or self.failure) and self.done and not self.done.done():
            self.done.set_result(None)

    async def end(self, http: aiohttp.ClientSession, base: str, token: str | None) -> None:
        stream = self.stream
        if self.transport in ("twilio", "fork") and stream is not None:
            stop = (
                b'{"event":"stop","sequenceNumber":"%d","stop":{}}' % (2 * self.sent + 2)
                if self.transport == "twilio"
                else b'{"event":"stop"}'
            )
            stream.write(ws_frame(0x1, stop))
            await asyncio.wait_for(asyncio.shield(stream.closed), END_TIMEOUT_S)
            if stream.close_code != 1000 and not self.failure:
                self.failure = f"closed {stream.close_code} {stream.close_reason}"
        elif self.transport == "audiosocket" and stream is not None:
            stream.write(b"\x00\x00\x00")
            await asyncio.wait_for(asyncio.shield(stream.closed), END_TIMEOUT_S)
            if stream.close_reason and not self.failure:
                self.failure = f"audiosocket error frame: {stream.close_reason}"
        else:
            url = f"{base}/v1/calls/{self.announced['call_id']}/end"
            async with http.post(url, headers=bearer(token)) as response:
                if response.status != 200:
                    self.failure = self.failure or f"end: {response.status}"
        self.close()

    def close(self) -> None:
        if self.stream is not None and self.stream.transport is not None:
            self.stream.transport.close()
        for sock in self.socks:
            sock.close()
        self.socks.clear()


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


# --- the run --------------------------------------------------------------------------------


class Run:
    def __init__(self, options: Options) -> None:
        self.o = options
        parts = urlsplit(options.base)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.result = Result(options.transport, options.calls, options.seconds, bare=options.bare)
        self.slots: list[list[Call]] = [[] for _ in range(SLOTS)]
        self.lags: list[float] = []
        self.live = 0
        self.started = 0
        self.frames_sent = 0
        self.steady: list[tuple[float, float, int]] = []
        """(unix time, process time, frames sent) at the steady window's ends."""
        self.ended_any = False
        self.ended: list[Call] = []
        self.checks: set[asyncio.Task[None]] = set()
        self.stopping = False
        self.tenant = options.tenant
        self.pbx = options.pbx_token
        self.reader = options.reader_token

    def transport_of(self, number: int) -> str:
        if self.o.transport == "mixed":
            return MIXED[number % len(MIXED)]
        return self.o.transport

    async def setup(self, http: aiohttp.ClientSession) -> None:
        o = self.o
        if o.bare:
            self.tenant = self.tenant or "bare"
            return
        if o.setup_token:
            self.tenant = f"lg-{secrets.token_hex(6)}"
            limits = {"live_calls": LIMIT, "rtp_calls": LIMIT, "announces_per_minute": LIMIT}
            body = {"id": self.tenant, "name": "Loadgen", "limits": limits}
            await self.request(http, "POST", "/v1/tenants", o.setup_token, body, 201)
            tokens: dict[str, str] = {}
            for role in ("admin", "pbx"):
                answer = await self.request(
                    http, "POST", f"/v1/tenants/{self.tenant}/tokens",
                    tokens.get("admin", o.setup_token), {"role": role}, 201,
                )  # fmt: skip
                tokens[role] = answer["token"]
            await self.request(
                http, "PUT", f"/v1/tenants/{self.tenant}/instructions", tokens["admin"],
                INSTRUCTIONS, 200,
            )  # fmt: skip
            self.pbx, self.reader = tokens["pbx"], tokens["admin"]
        elif not (self.tenant and self.pbx and self.reader):
            raise SetupError("give --setup-token, or --tenant, --pbx-token and --reader-token")

    async def request(
        self, http: aiohttp.ClientSession, method: str, path: str, token: str | None,
        body: object, status: int,
    ) -> Any:  # fmt: skip
        async with http.request(
            method, self.o.base + path, json=body, headers=bearer(token)
        ) as response:
            text = await response.text()
            if response.status != status:
                raise SetupError(f"{method} {path}: {response.status} {text[:200]}")
            return json.loads(text) if text else None

    async def ticker(self) -> None:
        loop = asyncio.get_running_loop()
        slot_s = FRAME_S / SLOTS
        due = loop.time()
        slot = 0
        lags = self.lags
        while not self.stopping:
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = loop.time()
            if self.live:
                lags.append(now - due)
            else:  # nothing to send: no backlog to catch up on
                due = max(due, now)
            for call in list(self.slots[slot]):
                call.tick(due)
            slot = (slot + 1) % SLOTS
            due += slot_s

    async def lane(
        self, lane: int, http: aiohttp.ClientSession, gate: asyncio.Semaphore, deadline: float
    ) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(self.o.ramp * lane / self.o.calls)
        number = lane
        while True:
            call = Call(number, self.transport_of(number), int(self.o.seconds * 50))
            await self.one(call, http, gate)
            self.ended.append(call)
            if self.o.minutes:
                task = asyncio.create_task(self.check(http, call))
                self.checks.add(task)
                task.add_done_callback(self.checks.discard)
            number += self.o.calls
            if not self.o.minutes or loop.time() >= deadline:
                return

    async def one(self, call: Call, http: aiohttp.ClientSession, gate: asyncio.Semaphore) -> None:
        loop = asyncio.get_running_loop()
        self.result.calls_started += 1
        try:
            async with gate:
                body: dict[str, Any] = {
                    "from": "+40711111111",
                    "to": "+40722222222",
                    "consent": "granted",
                    "transport": "rtp" if call.transport in ("rtp", "srtp") else call.transport,
                }
                if call.transport in ("rtp", "srtp"):
                    body.update(codec="pcmu", srtp=call.transport == "srtp")
                call.announced = await self.request(
                    http, "POST", f"/v1/tenants/{self.tenant}/calls", self.pbx, body, 201
                )
                await call.connect(self.host, self.port, None if self.o.bare else self.pbx)
        except (OSError, SetupError, TimeoutError, aiohttp.ClientError, KeyError) as e:
            call.failure = f"start: {type(e).__name__}: {str(e)[:120]}"
            call.close()
            return
        call.done = loop.create_future()
        slot = self.slots[call.number % SLOTS]
        slot.append(call)
        self.live += 1
        self.started += 1
        if self.started == self.o.calls and not self.steady:
            self.mark()
        try:
            await call.done
        finally:
            slot.remove(call)
            self.frames_sent += call.sent * call.tracks
            if not self.ended_any:
                self.ended_any = True
                self.mark()
        try:
            await call.end(http, self.o.base, self.pbx)
        except (OSError, TimeoutError, aiohttp.ClientError) as e:
            call.failure = call.failure or f"end: {type(e).__name__}: {str(e)[:120]}"
            call.close()
        finally:
            self.live -= 1

    def mark(self) -> None:
        live = sum(c.sent * c.tracks for s in self.slots for c in s)
        self.steady.append((time.time(), time.process_time(), self.frames_sent + live))

    async def check(self, http: aiohttp.ClientSession, call: Call) -> None:
        if call.failure is not None or not call.announced:
            return
        try:
            pcm = await self.export(http, call.announced["recording_id"])
        except (OSError, TimeoutError, aiohttp.ClientError, SetupError, wave.Error) as e:
            call.failure = f"export: {type(e).__name__}: {str(e)[:120]}"
            return
        lost = 0
        for track in range(call.tracks):
            found = check_track(pcm[:, track], call.encoding, call.number, track, call.sent)
            self.result.frames_checked += found.matched
            lost += found.lost
            if found.failure and not call.failure:
                call.failure = f"{call.transport} track {track}: {found.failure}"
        call.lost = lost

    async def export(self, http: aiohttp.ClientSession, recording: str) -> Any:
        deadline = time.monotonic() + EXPORT_WAIT_S
        headers = bearer(self.reader)
        while True:
            if time.monotonic() > deadline:
                raise SetupError(f"{recording} not exported within {EXPORT_WAIT_S:g} s")
            async with http.get(f"{self.o.base}/v1/recordings/{recording}", headers=headers) as r:
                meta = await r.json() if r.status == 200 else {}
            if meta.get("status", "recording") != "recording":
                async with http.get(
                    f"{self.o.base}/v1/recordings/{recording}/audio", headers=headers
                ) as r:
                    body = await r.read()
                if r.status == 200:
                    break
                if r.status != 503:
                    raise SetupError(f"export {r.status}: {body[:120]!r}")
            await asyncio.sleep(0.2)  # another process's progress: polled
        with wave.open(io.BytesIO(body)) as wav:
            channels = wav.getnchannels()
            data = wav.readframes(wav.getnframes())
        return np.frombuffer(data, "<i2").reshape(-1, channels)

    async def bare_frames(self, http: aiohttp.ClientSession) -> int:
        async with http.get(f"{self.o.base}/bare/stats") as response:
            return int((await response.json())["frames"])

    async def run(self) -> Result:
        o = self.o
        loop = asyncio.get_running_loop()
        wall, cpu = time.monotonic(), time.process_time()
        timeout = aiohttp.ClientTimeout(total=120)
        connector = aiohttp.TCPConnector(limit=ANNOUNCE_CONCURRENCY + VERIFY_CONCURRENCY)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
            await self.setup(http)
            before = await self.bare_frames(http) if o.bare else 0
            ticker = asyncio.create_task(self.ticker())
            gate = asyncio.Semaphore(ANNOUNCE_CONCURRENCY)
            deadline = loop.time() + o.minutes * 60
            await asyncio.gather(*(self.lane(i, http, gate, deadline) for i in range(o.calls)))
            self.stopping = True
            await ticker
            r = self.result
            r.frames_sent = self.frames_sent
            if o.bare:
                r.frames_checked = await self.bare_taken(http, before)
            elif not o.minutes:
                verify = asyncio.Semaphore(VERIFY_CONCURRENCY)

                async def bounded(call: Call) -> None:
                    async with verify:
                        await self.check(http, call)

                await asyncio.gather(*(bounded(call) for call in self.ended))
            await asyncio.gather(*self.checks)
        return self.finish(wall, cpu)

    async def bare_taken(self, http: aiohttp.ClientSession, before: int) -> int:
        """bare.py's frames taken since the start, once it has caught up (or stalled 1 s)."""
        last, still = -1, time.monotonic()
        while True:
            taken = await self.bare_frames(http) - before
            if taken >= self.frames_sent:
                return taken
            if taken != last:
                last, still = taken, time.monotonic()
            elif time.monotonic() - still > 1.0:
                return taken
            await asyncio.sleep(0.05)  # another process's progress: polled

    def finish(self, wall: float, cpu: float) -> Result:
        r = self.result
        r.wall_s = round(time.monotonic() - wall, 3)
        r.loadgen_cpu_s = round(time.process_time() - cpu, 3)
        failures = [c for c in self.ended if c.failure is not None]
        r.failures = [f"call {c.number}: {c.failure}" for c in failures[:5]]
        if self.o.bare:
            r.frames_lost = max(0, r.frames_sent - r.frames_checked)
            if r.frames_lost and not r.failures:
                r.failures.append(f"bare.py took {r.frames_checked} of {r.frames_sent} frames")
        else:
            r.frames_lost = r.frames_sent - r.frames_checked
        r.calls_failed = sum(1 for c in self.ended if c.failure is not None or c.lost)
        if r.frames_lost and not r.calls_failed:
            r.calls_failed = 1  # bare.py's count: which call lost them is not known
        if self.lags:
            lags = np.array(self.lags) * 1000
            r.send_lag_ms_p99 = round(float(np.percentile(lags, 99)), 3)
            r.send_lag_ms_max = round(float(lags.max()), 3)
        if len(self.steady) >= 2:
            (t0, c0, f0), (t1, c1, f1) = self.steady[0], self.steady[1]
            if t1 > t0:
                r.steady_from, r.steady_until = round(t0, 3), round(t1, 3)
                if f1 > f0:
                    r.loadgen_cpu_us_per_frame = round((c1 - c0) / (f1 - f0) * 1e6, 3)
        return r


async def run(options: Options) -> Result:
    """Drive ``options.calls`` calls and check them (importable; see the module doc)."""
    if options.transport not in (*TRANSPORTS, "mixed"):
        raise SetupError(f"unknown transport {options.transport!r}")
    raise_fd_limit()
    return await Run(options).run()


def raise_fd_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard = 1 << 16 if hard == resource.RLIM_INFINITY else hard
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def loop_factory(kind: str) -> tuple[str, Callable[[], asyncio.AbstractEventLoop]]:
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise SetupError("--loop uvloop: uvloop is not installed") from None
        else:
            return "uvloop", uvloop.new_event_loop
    return "asyncio", asyncio.new_event_loop


def parse(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True)
    p.add_argument("--transport", required=True, choices=(*TRANSPORTS, "mixed"))
    p.add_argument("--calls", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--ramp", type=float, default=2.0)
    p.add_argument("--minutes", type=float, default=0.0)
    p.add_argument("--setup-token")
    p.add_argument("--tenant")
    p.add_argument("--pbx-token")
    p.add_argument("--reader-token")
    p.add_argument("--bare", action="store_true")
    p.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.calls < 1 or args.seconds < 0.02 or args.ramp < 0 or args.minutes < 0:
        p.error("--calls >= 1, --seconds >= 0.02, --ramp and --minutes >= 0")
    return Options(**vars(args))


def main(argv: list[str] | None = None) -> int:
    try:
        options = parse(argv)
    except SystemExit as e:
        return 2 if e.code else 0
    try:
        name, factory = loop_factory(options.loop)
        with asyncio.Runner(loop_factory=factory) as runner:
            result = runner.run(run(options))
    except SetupError as e:
        print(f"loadgen: {e}", file=sys.stderr)
        return 2
    result.loop = name
    print_result(result)
    if options.json:
        print(json.dumps(asdict(result)))
    return 1 if result.frames_lost or result.calls_failed else 0


def print_result(r: Result) -> None:
    rows = [
        ("transport", r.transport), ("calls", f"{r.calls_started} started of {r.calls}"),
        ("frames sent / checked / lost", f"{r.frames_sent} / {r.frames_checked} / {r.frames_lost}"),
        ("calls failed", r.calls_failed),
        ("send lag p99 / max", f"{r.send_lag_ms_p99:.2f} / {r.send_lag_ms_max:.2f} ms"),
        ("loadgen CPU", f"{r.loadgen_cpu_s:.2f} s, {r.loadgen_cpu_us_per_frame:.1f} µs/frame"),
        ("wall", f"{r.wall_s:.1f} s"), ("loop", r.loop),
    ]  # fmt: skip
    for name, value in rows:
        print(f"| {name} | {value} |")
    for failure in r.failures:
        print(f"  failure: {failure}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

"""The wire side of ``bench/loadgen.py``: one live call per ``Call``, over Twilio Media
Streams, mod_audio_fork, AudioSocket or RTP/SRTP, built to cost as little CPU per frame as
Python allows (see loadgen.py's docstring for what is sent).

WebSockets run on raw asyncio transports (``Stream``): the HTTP upgrade is written by hand
and checked for 101, client frames are masked with the all-zero key (valid RFC 6455: the
payload goes out unchanged, no per-byte masking), the server's frames are parsed only as
far as answering pings and recording the close code and reason. Each transport's sender is
a closure built once per call (templates, base64 of the frame's constant tail, the SRTP
session), so a frame costs a marker, a concatenation and one write or ``send``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import socket
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.loadframes import (
    FORK_INDEX,
    FRAME,
    L16_INDEX,
    ULAW_INDEX,
    ULAW_INDEX_B64,
    fork_rest,
    l16_rest,
    ulaw_rest,
)
from gateway.ingest.rtp import SrtpKey


class SetupError(Exception):
    """Usage or setup failed (the load generator exits 2), or a call could not start."""


FRAME_S = 0.02
END_TIMEOUT_S = 30.0
"""How long a call's end (the server's close, or the hang-up API) may take."""
STREAM_SID = "MZ00000000000000000000000000000000"

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
    per_datagram: int = 1
    """20 ms frames per RTP datagram (``--ptime`` / 20): a datagram goes out when its last
    frame is due."""
    lost: int = 0
    """Frames the check found missing or misplaced."""
    checked: int = 0
    """Frames the check found at their place."""

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
            index = L16_INDEX.upto(self.frames)
            rest = l16_rest(self.number, 0)
            write = stream.write

            def send_audiosocket(k: int) -> None:
                write(b"\x10\x01\x40" + index[k] + rest)

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
        index = ULAW_INDEX_B64.upto(self.frames)
        # A payload is its frame index's base64 group, then the rest's (the same each frame).
        rests = [base64.b64encode(ulaw_rest(self.number, track)) for track in (0, 1)]
        templates = [
            b'{"event":"media","sequenceNumber":"%d","media":{"track":"' + name
            + b'","chunk":"%d","timestamp":"%d","payload":"%s' + rest + b'"},"streamSid":"'
            + STREAM_SID.encode() + b'"}'
            for name, rest in zip((b"inbound", b"outbound"), rests, strict=True)
        ]  # fmt: skip
        inbound, outbound = templates
        pack = struct.Struct("!BBH4x").pack
        write = stream.write

        def send_twilio(k: int) -> None:
            body = inbound % (2 * k + 2, k + 1, k * 20, index[k])
            write(pack(0x81, 0xFE, len(body)) + body)
            body = outbound % (2 * k + 3, k + 1, k * 20, index[k])
            write(pack(0x81, 0xFE, len(body)) + body)

        self.send = send_twilio

    def _fork(self, stream: Stream) -> None:
        meta = {"call_id": self.announced["call_id"], "sampleRate": 8000, "mixType": "stereo"}
        stream.write(ws_frame(0x1, json.dumps(meta).encode()))
        index = FORK_INDEX.upto(self.frames)
        rest = fork_rest(self.number)
        head = struct.pack("!BBH4x", 0x82, 0xFE, 4 * FRAME)
        write = stream.write

        def send_fork(k: int) -> None:
            write(head + index[k] + rest)

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
            if self.transport == "srtp":
                if not crypto:  # never plain RTP under the name of SRTP
                    raise SetupError("an srtp call's offer has no crypto keys")
                protects.append(SrtpKey.from_sdes(crypto[name]).session(outbound=True).protect)
            else:
                protects.append(None)
        index = ULAW_INDEX.upto(self.frames)
        rests = [ulaw_rest(self.number, track) for track in (0, 1)]
        ssrcs = [secrets.randbits(32) for _ in (0, 1)]
        pack = struct.Struct("!BBHII").pack
        tracks = list(zip(ssrcs, rests, protects, sends, strict=True))

        per, frames = self.per_datagram, self.frames

        def send_rtp(k: int) -> None:
            first = k
            if per > 1:  # frames first..k in one datagram, sent when k is due
                if (k + 1) % per and k + 1 < frames:
                    return
                first = k - k % per
            seq, stamp = (k // per) & 0xFFFF, first * FRAME & 0xFFFFFFFF
            for ssrc, rest, protect, send in tracks:
                payload = (
                    index[k] + rest
                    if per == 1
                    else b"".join(index[j] + rest for j in range(first, k + 1))
                )
                packet = pack(0x80, 0, seq, stamp, ssrc) + payload
                try:
                    send(protect(packet) if protect is not None else packet)
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

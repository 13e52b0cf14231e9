"""The bare receivers of issue 17: the least any receiver of each stream must do, the
baseline callvault's calls per core are compared with (``bench/capacity.py``).

    python bench/bare.py --port P [--loop uvloop|asyncio] [--rtp-ports LO-HI]
                         [--audiosocket-port Q]

Run it pinned to one core (``taskset -c 0``), one process, on the same event loop kind as
the ``callvault serve`` it is compared with (``--loop``; default uvloop when importable).
``bench/loadgen.py --bare`` drives it exactly as it drives callvault.

One aiohttp app, no auth, policy, catalog or storage:

* ``POST /v1/tenants/{t}/calls`` answers the shape of callvault's announcement: a call id,
  a recording id and ``ingest`` (``websocket`` path; ``audiosocket`` ``{address, id}``;
  ``rtp`` ``{host, inbound, outbound, rtcp, srtp, crypto}`` with a fresh SRTP key per track,
  its two UDP ports bound here).
* ``/v1/ingest/twilio``: ``json.loads`` of every message, base64-decodes media payloads;
  ``stop`` closes 1000.
* ``/v1/ingest/fork``: the metadata text frame parsed (channels from ``mixType``), binary
  frames taken; ``stop`` closes 1000.
* AudioSocket (TCP, ``--audiosocket-port``): frames parsed, audio taken; hang-up closes.
* RTP/SRTP: a ``DatagramProtocol`` per track, pylibsrtp ``unprotect``, payload taken.
* ``POST /v1/calls/{id}/end`` closes a call's RTP ports (200, like callvault's).
* ``GET /bare/stats``: ``{"frames", "bytes", "loop_lag_ms_p99", "loop_lag_samples",
  "refused"}``; ``POST /bare/stats/reset`` zeroes them. ``?lag_from=A&lag_to=B`` adds
  ``loop_lag_window`` (``{"samples", "p50_ms", "p99_ms"}``) over the lag samples A..B-1
  (counts of ``loop_lag_samples`` read earlier), for a window a run chose afterwards.

"Taken" means the payload is in hand as bytes, counted and dropped. Frames are counted as
``callvault_frames_in_total`` counts them: one per track per 20 ms, so a Twilio media
message, an AudioSocket audio frame or an RTP packet is 1, and a stereo fork binary frame
is 2 (callvault splits it into two tracks' frames; a mono one is 1).

Loop lag: a task sleeps 50 ms in a loop and records how late it woke up, as callvault's
``callvault_event_loop_lag_seconds`` probe does; the p99 is over the samples since the last
reset.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pylibsrtp  # noqa: E402
from aiohttp import WSMsgType, web  # noqa: E402

from crypto.errors import ConfigError  # noqa: E402
from gateway import loops  # noqa: E402
from gateway.ingest.rtp import SrtpKey  # noqa: E402

PROBE_S = 0.05
MAX_LAG_SAMPLES = 100_000


class Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.frames = 0
        self.bytes = 0
        self.refused = 0
        self.lags: list[float] = []

    def document(self, lag_from: int | None = None, lag_to: int | None = None) -> dict[str, Any]:
        lags = self.lags
        p99 = float(np.percentile(np.array(lags) * 1000, 99)) if lags else 0.0
        out: dict[str, Any] = {
            "frames": self.frames,
            "bytes": self.bytes,
            "refused": self.refused,
            "loop_lag_ms_p99": round(p99, 3),
            "loop_lag_samples": len(lags),
        }
        if lag_from is not None and lag_to is not None:
            window = np.array(lags[lag_from:lag_to]) * 1000
            p50, p99 = np.percentile(window, (50, 99)) if window.size else (None, None)
            out["loop_lag_window"] = {
                "samples": int(window.size),
                "p50_ms": None if p50 is None else round(float(p50), 3),
                "p99_ms": None if p99 is None else round(float(p99), 3),
            }
        return out


STATS = Stats()


class RtpTrack(asyncio.DatagramProtocol):
    def __init__(self, key: SrtpKey | None) -> None:
        self.srtp = key.session() if key is not None else None

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.srtp is not None:
            try:
                data = self.srtp.unprotect(data)
            except pylibsrtp.Error:
                STATS.refused += 1
                return
        payload = data[12:]
        STATS.frames += 1
        STATS.bytes += len(payload)


class AudioSocket(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        while len(buf) >= 3:
            kind, n = buf[0], int.from_bytes(buf[1:3], "big")
            if len(buf) < 3 + n:
                return
            payload = bytes(buf[3 : 3 + n])
            del buf[: 3 + n]
            if kind == 0x10:
                STATS.frames += 1
                STATS.bytes += len(payload)
            elif kind == 0x00:
                assert self.transport is not None
                self.transport.close()
                return


class Bare:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rtp: dict[str, list[asyncio.DatagramTransport]] = {}
        low, high = args.rtp_ports or (0, -1)
        self.free_ports = collections.deque(range(low + low % 2, high + 1, 2))
        """``--rtp-ports``' even ports not in use, the least recently released first."""

    async def announce(self, request: web.Request) -> web.Response:
        body = await request.json()
        call_id = body.get("call_id") or str(uuid.uuid4())
        transport = body.get("transport", "twilio")
        ingest: dict[str, Any] = {"websocket": None}
        if transport in ("twilio", "fork"):
            ingest["websocket"] = f"/v1/ingest/{transport}"
        elif transport == "audiosocket":
            ingest["audiosocket"] = {
                "address": f"127.0.0.1:{self.args.audiosocket_port}",
                "id": str(uuid.uuid4()),
            }
        elif transport == "rtp":
            ingest["rtp"] = await self.open_rtp(call_id, bool(body.get("srtp")))
        document = {
            "call_id": call_id,
            "recording_id": str(uuid.uuid4()),
            "instructions_version": 1,
            "decision": {"store_recording": True, "ai": []},
            "ingest": ingest,
            "node": "bare",
        }
        return web.json_response(document, status=201)

    async def open_rtp(self, call_id: str, srtp: bool) -> dict[str, Any]:
        ports: dict[str, int] = {}
        keys: dict[str, SrtpKey] = {}
        transports = []
        for track in ("inbound", "outbound"):
            key = SrtpKey.generate() if srtp else None
            transport = await self.bind(lambda key=key: RtpTrack(key))  # type: ignore[misc]
            transports.append(transport)
            ports[track] = transport.get_extra_info("sockname")[1]
            if key is not None:
                keys[track] = key
        self.rtp[call_id] = transports
        return {
            "host": "127.0.0.1",
            **ports,
            "rtcp": {track: port + 1 for track, port in ports.items()},
            "srtp": srtp,
            "crypto": {track: key.sdes() for track, key in keys.items()} if srtp else None,
        }

    async def bind(self, protocol: Callable[[], RtpTrack]) -> asyncio.DatagramTransport:
        """A UDP endpoint on a free port of ``--rtp-ports`` (any port without it)."""
        loop = asyncio.get_running_loop()
        if not self.args.rtp_ports:
            transport, _ = await loop.create_datagram_endpoint(protocol, ("127.0.0.1", 0))
            return transport
        for _ in range(len(self.free_ports)):
            port = self.free_ports.popleft()
            try:
                transport, _ = await loop.create_datagram_endpoint(protocol, ("127.0.0.1", port))
            except OSError:  # taken by another process: try it again later
                self.free_ports.append(port)
                continue
            return transport
        raise web.HTTPServiceUnavailable(text="no free RTP port in --rtp-ports")

    async def end(self, request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        for transport in self.rtp.pop(call_id, []):
            port = transport.get_extra_info("sockname")[1]
            transport.close()
            if self.args.rtp_ports:
                self.free_ports.append(port)
        return web.json_response({"call_id": call_id, "ended": True})

    async def twilio(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        loads, decode = json.loads, base64.b64decode
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                continue
            event = loads(message.data)
            kind = event.get("event")
            if kind == "media":
                payload = decode(event["media"]["payload"])
                STATS.frames += 1
                STATS.bytes += len(payload)
            elif kind == "stop":
                await ws.close(code=1000)
        return ws

    async def fork(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        channels = 1
        async for message in ws:
            if message.type == WSMsgType.BINARY:
                payload = message.data
                STATS.frames += channels
                STATS.bytes += len(payload)
            elif message.type == WSMsgType.TEXT:
                event = json.loads(message.data)
                if "call_id" in event:
                    channels = 2 if event.get("mixType") == "stereo" else 1
                elif event.get("event") == "stop":
                    await ws.close(code=1000)
        return ws

    async def stats(self, request: web.Request) -> web.Response:
        query = request.query
        try:
            lag_from, lag_to = int(query["lag_from"]), int(query["lag_to"])
        except (KeyError, ValueError):
            return web.json_response(STATS.document())
        return web.json_response(STATS.document(lag_from, lag_to))

    async def reset(self, request: web.Request) -> web.Response:
        STATS.reset()
        return web.json_response(STATS.document())


async def probe() -> None:
    """How late a 50 ms sleep wakes up, continuously."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + PROBE_S
        await asyncio.sleep(PROBE_S)
        lags = STATS.lags
        if len(lags) < MAX_LAG_SAMPLES:
            lags.append(max(0.0, loop.time() - due))


async def serve(args: argparse.Namespace) -> None:
    bare = Bare(args)
    app = web.Application()
    app.router.add_post("/v1/tenants/{tenant}/calls", bare.announce)
    app.router.add_post("/v1/calls/{call_id}/end", bare.end)
    app.router.add_get("/v1/ingest/twilio", bare.twilio)
    app.router.add_get("/v1/ingest/fork", bare.fork)
    app.router.add_get("/bare/stats", bare.stats)
    app.router.add_post("/bare/stats/reset", bare.reset)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(AudioSocket, "127.0.0.1", args.audiosocket_port)
    if not args.audiosocket_port:
        args.audiosocket_port = server.sockets[0].getsockname()[1]
    task = asyncio.create_task(probe())
    print(f"bare: http://127.0.0.1:{args.port} audiosocket {args.audiosocket_port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        task.cancel()
        server.close()
        await runner.cleanup()


def port_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    return int(low), int(high)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto")
    p.add_argument("--rtp-ports", type=port_range, default=None)
    p.add_argument("--audiosocket-port", type=int, default=0)
    args = p.parse_args()
    try:
        kind = loops.loop_kind(args.loop)  # the choice serve makes of CALLVAULT_HTTP__LOOP
    except ConfigError:
        p.error("uvloop is not installed")
    loops.run(serve(args), kind)


if __name__ == "__main__":
    main()

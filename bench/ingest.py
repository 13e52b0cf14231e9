"""The media path's cost: Twilio and fork ingest, and WAV export, against bare receivers and
the decryption floor, on the same input in the same run.

DESIGN.md says the event loop, not the crypto, sets ingest capacity. This program measures
how much of a core callvault spends per audio message and per call, next to what any
receiver of the same stream must spend at least:

* **Twilio ingest**: C concurrent calls, each streaming S seconds of two-track µ-law as
  Twilio Media Streams messages (20 ms frames of 160 bytes, base64 in JSON, two messages
  per 20 ms) as fast as the client can send, then ``stop`` and wait for the 1000 close.
  Baseline (``bare``): a WebSocket route on the same server, made like callvault's, that
  JSON-parses and base64-decodes every message, discards the audio and closes 1000 on
  ``stop``: the least any Twilio receiver does.
* **fork ingest**: the same with mod_audio_fork's framing: one metadata text frame, binary
  640-byte frames of stereo L16 (20 ms at 8 kHz), a ``stop`` text frame. Baseline: a route
  that receives the frames, parses the text ones and discards the binary ones.
* **Live pace**: as fast as possible, many messages arrive per socket read and per loop
  wake-up, and a short call's start and end weigh on every message; a live call sends one
  frame every 20 ms. So both transports also run P calls that each send on a 20 ms clock
  (their ticks spread evenly), and the CPU is measured over the steady state only, without
  the calls' first and last second: the share of a core the server needs for P live calls,
  and from it the live calls one core carries.
* **Export**: ``GET /v1/recordings/{id}/audio`` (the stereo WAV) of a recorded call, against
  reading the same committed objects' plaintext through ``MediaVault.read_object`` and
  concatenating it (the decryption floor of any export).
* **TLS**: callvault's Twilio ingest over WSS against the same over WS, both served by the
  same app at once (a second listening socket with the ``SSLContext`` ``callvault serve``
  builds from ``CALLVAULT_HTTP__TLS_CERT``/``__TLS_KEY``; an ECDSA P-256 certificate made
  for the run), the same calls, alternating: as fast as the client sends (``--tls-calls``)
  and at live pace (``--paced-calls``); the ratio is TLS's cost on the media path, the
  handshake of each call included.

Everything runs in one process on embedded defaults (SQLite catalog, file store, local
keyring) in a temporary data dir, over loopback: an aiohttp ``TestServer`` on the main
thread's event loop and an ``aiohttp.ClientSession`` on an event loop of its own in a
second thread. The client has its own thread so that its CPU time can be taken apart from
the server's: ``time.thread_time`` in the client thread is the client's share, and the
process's CPU time (``time.process_time``) minus it is the server's (its loop plus the
catalog's, the spool's and the file store's worker threads). Both are reported, and the
whole process.

Each contestant runs ``--rounds`` times (``--paced-rounds`` at live pace), alternating
with the other in every round (the order flips each round). Throughput (messages/s, x real
time) is the best round's; CPU per message is the median round's; a ratio is the median over
rounds of the two contestants' ratio in the same round, which cancels most of a shared
machine's drift. Every run checks that the server took every audio frame. Prints markdown
tables and one JSON line.

    python bench/ingest.py [--calls 1,10,50] [--seconds 20] [--rounds 3] [--paced-calls 50]
                           [--paced-seconds 8] [--paced-rounds 2] [--export-seconds 300]
                           [--tls-calls 10] [--only twilio,fork,paced,export,tls]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import socket
import ssl
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import numpy as np  # noqa: E402
from aiohttp import WSMsgType, web  # noqa: E402
from aiohttp.test_utils import BaseTestServer, TestServer  # noqa: E402
from arguments import positive, positive_list  # noqa: E402
from certificate import make_certificate  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402
from report import print_table  # noqa: E402

from gateway.app import build_app  # noqa: E402
from gateway.auth import ensure_operator_token  # noqa: E402
from gateway.ingest.events import MAX_MESSAGE  # noqa: E402
from gateway.logs import ACCESS, AccessLogger  # noqa: E402
from gateway.session import AUDIO_KIND  # noqa: E402
from gateway.settings import (  # noqa: E402
    AudioSocketSettings,
    CryptoSettings,
    HttpSettings,
    IngestSettings,
    Settings,
    StoreSettings,
)
from gateway.state import SERVICES, SETTINGS  # noqa: E402
from gateway.tls import ServerTls  # noqa: E402
from storage.media.codecs import codec  # noqa: E402

RATE = 8000
FRAME_MS = 20
FRAME_SAMPLES = RATE * FRAME_MS // 1000  # 160: one µ-law frame is 160 bytes
FRAMES_PER_S = 1000 // FRAME_MS
CLOSE_WAIT_S = 120.0
"""How long a client waits for the close after ``stop`` (callvault seals and commits first)."""
INSTRUCTIONS = {"recording": {"enabled": True}, "consent": {"required": False}}
STREAM_SID = "MZ" + "0" * 32

Message = str | bytes


# --- the calls' messages, built here from the protocols' documented shapes ----------------


def tone(seconds: float, hz: float, seed: int) -> np.ndarray:
    """A tone with a little noise: audio that does not repeat, as a call's does not."""
    t = np.arange(int(seconds * RATE))
    noise = np.random.default_rng(seed).integers(-300, 300, size=t.size)
    return (np.sin(2 * np.pi * hz * t / RATE) * 9000 + noise).astype(np.int16)


@dataclass(frozen=True)
class CallScript:
    """What one call sends: ``head(call_id, token)``, then ``body``, then ``tail``.

    The body (all the audio) is built once and shared by every call of a run: the media
    messages name no call, so sharing it costs nothing in realism and keeps the client's
    memory and set-up time flat in C.
    """

    head: Callable[[str, str], list[Message]]
    body: list[Message]
    tail: list[Message]
    audio_messages: int
    """Messages of ``body`` (each carries 20 ms of audio)."""
    audio_events: int
    """Audio frames the gateway counts for one call (``callvault_frames_in``)."""
    per_period: int
    """Messages of ``body`` per 20 ms of call."""


def twilio_script(seconds: int) -> CallScript:
    """Twilio Media Streams (https://www.twilio.com/docs/voice/media-streams/websocket-messages):
    ``connected``, ``start`` (the pbx token in customParameters, as Twilio cannot set
    headers), media on both tracks interleaved, ``stop``."""
    ulaw = codec("pcmu")
    tracks = {
        "inbound": ulaw.encode(tone(seconds, 440, seed=1)),
        "outbound": ulaw.encode(tone(seconds, 660, seed=2)),
    }
    body: list[Message] = []
    for index in range(seconds * FRAMES_PER_S):
        for track, audio in tracks.items():
            sequence = len(body) + 2
            payload = audio[index * FRAME_SAMPLES : (index + 1) * FRAME_SAMPLES]
            body.append(
                json.dumps(
                    {
                        "event": "media",
                        "sequenceNumber": str(sequence),
                        "media": {
                            "track": track,
                            "chunk": str(sequence),
                            "timestamp": str(index * FRAME_MS),
                            "payload": base64.b64encode(payload).decode(),
                        },
                        "streamSid": STREAM_SID,
                    }
                )
            )

    def head(call_id: str, token: str) -> list[Message]:
        connected = {"event": "connected", "protocol": "Call", "version": "1.0.0"}
        start = {
            "event": "start",
            "sequenceNumber": "1",
            "start": {
                "accountSid": "AC" + "0" * 32,
                "streamSid": STREAM_SID,
                "callSid": "CA" + uuid.uuid4().hex,
                "tracks": ["inbound", "outbound"],
                "customParameters": {"call_id": call_id, "token": token},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": RATE, "channels": 1},
            },
            "streamSid": STREAM_SID,
        }
        return [json.dumps(connected), json.dumps(start)]

    stop = json.dumps({"event": "stop", "sequenceNumber": str(len(body) + 2), "stop": {}})
    return CallScript(
        head, body, [stop], audio_messages=len(body), audio_events=len(body), per_period=2
    )


def fork_script(seconds: int) -> CallScript:
    """mod_audio_fork / jambonz ``listen``: a metadata text frame, binary frames of stereo
    L16 little-endian (caller, callee interleaved), a ``stop`` text frame."""
    stereo = np.stack([tone(seconds, 440, seed=1), tone(seconds, 660, seed=2)], axis=1)
    pcm = stereo.astype("<i2").tobytes()
    size = FRAME_SAMPLES * 2 * 2  # 640 bytes: 160 samples x 2 channels x 16 bits
    body: list[Message] = [pcm[off : off + size] for off in range(0, len(pcm), size)]

    def head(call_id: str, token: str) -> list[Message]:
        return [json.dumps({"call_id": call_id, "channels": 2, "sample_rate": RATE})]

    stop = json.dumps({"event": "stop"})
    # Each stereo frame is split into one Audio event per track.
    return CallScript(
        head, body, [stop], audio_messages=len(body), audio_events=2 * len(body), per_period=1
    )


# --- the bare receivers (the baselines) ---------------------------------------------------


@dataclass
class Tally:
    """Audio messages a bare receiver took (mutable on purpose: the routes count into it)."""

    messages: int = 0


TALLY = web.AppKey("bench_tally", Tally)


def _bare_socket() -> web.WebSocketResponse:
    # Made like callvault's ingest sockets (gateway.ingest.endpoints: no aiohttp heartbeat),
    # so the two differ only in what they do with a message. No pings come in a run.
    return web.WebSocketResponse(max_msg_size=MAX_MESSAGE)


async def bare_twilio(request: web.Request) -> web.WebSocketResponse:
    """The least a Twilio receiver does: parse each message, decode the audio, drop it."""
    ws = _bare_socket()
    await ws.prepare(request)
    tally = request.app[TALLY]
    async for message in ws:
        if message.type is not WSMsgType.TEXT:
            break
        msg = json.loads(message.data)
        event = msg.get("event")
        if event == "media":
            base64.b64decode(msg["media"]["payload"], validate=True)
            tally.messages += 1
        elif event == "stop":
            await ws.close(code=1000, message=b"stop")
            break
    return ws


async def bare_fork(request: web.Request) -> web.WebSocketResponse:
    """The least a fork receiver does: parse the text frames, take and drop the audio."""
    ws = _bare_socket()
    await ws.prepare(request)
    tally = request.app[TALLY]
    async for message in ws:
        if message.type is WSMsgType.BINARY:
            tally.messages += 1
        elif message.type is WSMsgType.TEXT:
            if json.loads(message.data).get("event") == "stop":
                await ws.close(code=1000, message=b"stop")
                break
        else:
            break
    return ws


class BenchServer(TestServer):
    """A test server with the access log ``callvault serve`` uses."""

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        return web.AppRunner(self.app, access_log_class=AccessLogger, access_log=ACCESS, **kwargs)


# --- the client, on an event loop of its own in a second thread ----------------------------


@dataclass(frozen=True)
class Run:
    """What one contestant's run measured over its window: wall time, CPU time (whole
    process, client thread), audio messages sent, and how late the pacing ran."""

    wall_s: float
    process_cpu_s: float
    client_cpu_s: float
    messages: int
    max_lag_s: float = 0.0

    @property
    def server_cpu_s(self) -> float:
        return self.process_cpu_s - self.client_cpu_s


@dataclass
class Sending:
    """Shared by a run's callers in the client thread (mutable on purpose): audio messages
    sent so far, and the worst lateness of a paced send inside the measured window (the
    connection storm of the first periods is outside it)."""

    messages: int = 0
    max_lag_s: float = 0.0
    in_window: bool = False


@dataclass(frozen=True)
class Plan:
    """What the client does: ``calls`` heads (one per call) each followed by the shared
    body and tail; paced at one period of ``per_period`` messages every 20 ms when
    ``paced``, else as fast as it can."""

    url: str
    headers: dict[str, str]
    heads: list[list[Message]]
    body: list[Message]
    tail: list[Message]
    per_period: int
    paced: bool
    flush_interval_s: float
    tls: ssl.SSLContext | None = None
    """The client's context for a ``wss://`` url (it trusts the bench's certificate)."""


async def _send(ws: aiohttp.ClientWebSocketResponse, message: Message) -> None:
    if isinstance(message, str):
        await ws.send_str(message)
    else:
        await ws.send_bytes(message)


async def _call(
    session: aiohttp.ClientSession, plan: Plan, head: list[Message], due: float, sending: Sending
) -> None:
    """One call: connect, send the head, the audio (each period at ``due + i * 20 ms`` when
    paced), the tail, and wait for the server's 1000 close."""
    loop = asyncio.get_running_loop()
    async with session.ws_connect(plan.url, headers=plan.headers) as ws:
        for message in head:
            await _send(ws, message)
        body, step = plan.body, plan.per_period
        for i in range(0, len(body), step):
            if plan.paced:
                # A live PBX sends each 20 ms frame when it has it; the bench does the same.
                at = due + i // step * FRAME_MS / 1000
                wait = at - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                elif sending.in_window:
                    sending.max_lag_s = max(sending.max_lag_s, -wait)
            for message in body[i : i + step]:
                await _send(ws, message)
            sending.messages += len(body[i : i + step])
        for message in plan.tail:
            await _send(ws, message)
        closing = await ws.receive(timeout=CLOSE_WAIT_S)
    if closing.type is not WSMsgType.CLOSE or closing.data != 1000:
        raise RuntimeError(f"{plan.url}: the server did not close 1000 after stop: {closing}")


def _mark(sending: Sending) -> tuple[float, float, float, int]:
    return time.perf_counter(), time.process_time(), time.thread_time(), sending.messages


def _between(a: tuple[float, float, float, int], b: tuple[float, float, float, int]) -> Run:
    return Run(
        wall_s=b[0] - a[0],
        process_cpu_s=b[1] - a[1],
        client_cpu_s=b[2] - a[2],
        messages=b[3] - a[3],
    )


async def _client(plan: Plan, seconds: int) -> Run:
    closing: list[asyncio.Future[None]] = []
    trace = aiohttp.TraceConfig()

    async def on_request_end(
        session: aiohttp.ClientSession, context: Any, params: aiohttp.TraceRequestEndParams
    ) -> None:
        # Each WebSocket's connection, to wait for its close: a TLS connection's shutdown
        # outlives the session's close, and must end before this thread's loop does.
        connection = params.response.connection
        if connection is not None and connection.protocol is not None:
            if (closed := connection.protocol.closed) is not None:
                closing.append(closed)

    trace.on_request_end.append(on_request_end)
    connector = aiohttp.TCPConnector(limit=0, ssl=plan.tls or True)
    async with aiohttp.ClientSession(connector=connector, trace_configs=[trace]) as session:
        run = await _calls(session, plan, seconds)
    if closing:
        await asyncio.wait(closing, timeout=CLOSE_WAIT_S)
    return run


async def _calls(session: aiohttp.ClientSession, plan: Plan, seconds: int) -> Run:
    sending = Sending()
    loop = asyncio.get_running_loop()
    calls = len(plan.heads)
    first = loop.time() + 0.25
    # Live calls neither start together nor tick in step. Paced calls start spread over
    # one flush interval (so their timed flushes do not all fall in the same instant,
    # which only calls started in the same 20 ms would do) and their 20 ms ticks are
    # spread evenly too.
    spread = min(plan.flush_interval_s, seconds / 4) if plan.paced else 0.0
    step = (spread + FRAME_MS / 1000) / calls
    dues = [first + k * step for k in range(calls)]
    start = _mark(sending)
    running = asyncio.gather(
        *(
            _call(session, plan, head, due, sending)
            for head, due in zip(plan.heads, dues, strict=True)
        )
    )
    if not plan.paced:
        await running
        return _between(start, _mark(sending))
    # Paced: measure the steady state only, from a margin after the last call started
    # to a margin before the first one ends (connecting, starting, sealing and
    # committing happen outside this window).
    margin = min(1.0, seconds / 5)
    await asyncio.sleep(dues[-1] + margin - loop.time())
    opened = _mark(sending)
    sending.in_window = True
    await asyncio.sleep(first + seconds - margin - loop.time())
    window = _between(opened, _mark(sending))
    sending.in_window = False
    await running
    return Run(
        wall_s=window.wall_s,
        process_cpu_s=window.process_cpu_s,
        client_cpu_s=window.client_cpu_s,
        messages=window.messages,
        max_lag_s=sending.max_lag_s,
    )


def run_client(plan: Plan, seconds: int) -> Run:
    """Carry out ``plan`` from this (worker) thread, on an event loop of its own."""
    return asyncio.run(_client(plan, seconds))


# --- the bench ----------------------------------------------------------------------------


@dataclass
class Bench:
    """The server under test, a tenant that records without consent, and its tokens."""

    app: web.Application
    server: BaseTestServer
    http: aiohttp.ClientSession
    registry: CollectorRegistry
    tenant: str = "bench"
    tokens: dict[str, str] = field(default_factory=dict)
    """Bearer tokens by role: the operator's, and the tenant's pbx and admin tokens."""
    recordings: dict[str, str] = field(default_factory=dict)
    """call id -> recording id of every call announced."""
    tls_port: int = 0
    """The port where the same app serves TLS (WSS), 0 when the run has none."""
    tls_client: ssl.SSLContext | None = None
    """A client context that trusts the certificate served on ``tls_port``."""
    client_thread: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="bench-client")
    )
    """The one thread the client runs in (its event loop is made anew for every run)."""

    @property
    def pbx(self) -> str:
        return self.tokens["pbx"]

    @property
    def admin(self) -> str:
        return self.tokens["admin"]

    async def call(self, method: str, path: str, token: str, body: object = None) -> Any:
        """One control-API request; its JSON answer (any non-2xx answer is an error)."""
        async with self.http.request(
            method,
            self.server.make_url(path),
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        ) as response:
            if response.status >= 300:
                raise RuntimeError(f"{method} {path}: {response.status} {await response.text()}")
            return await response.json()

    async def set_up_tenant(self) -> None:
        """Create the tenant, its pbx and admin tokens, and instruct it to record."""
        operator = self.tokens["operator"]
        await self.call("POST", "/v1/tenants", operator, {"id": self.tenant, "name": "Bench"})
        for role in ("pbx", "admin"):
            answer = await self.call(
                "POST", f"/v1/tenants/{self.tenant}/tokens", operator, {"role": role}
            )
            self.tokens[role] = answer["token"]
        await self.call("PUT", f"/v1/tenants/{self.tenant}/instructions", self.admin, INSTRUCTIONS)

    async def announce(self, transport: str) -> str:
        body = {"from": "+40711111111", "to": "+40722222222", "transport": transport}
        answer = await self.call("POST", f"/v1/tenants/{self.tenant}/calls", self.pbx, body)
        self.recordings[answer["call_id"]] = answer["recording_id"]
        return str(answer["call_id"])

    def frames_in(self, transport: str) -> int:
        """``callvault_frames_in`` of a transport: the audio frames the gateway took."""
        value = self.registry.get_sample_value(
            "callvault_frames_in_total", {"transport": transport}
        )
        return int(value or 0)


@asynccontextmanager
async def open_bench(data_dir: Path, *, tls: bool = False) -> AsyncIterator[Bench]:
    """The gateway on embedded defaults in ``data_dir``, with the bare routes beside its
    own, serving on loopback; a tenant set up to record. With ``tls`` the same app also
    serves TLS on a second loopback port, with the context ``callvault serve`` builds."""
    # Every setting is given explicitly (none left to CALLVAULT_* variables), so that the
    # environment cannot point the bench at another catalog or store.
    settings = Settings(
        data_dir=data_dir,
        database_url=None,
        master_key=None,
        operator_token=None,
        audiosocket=AudioSocketSettings(port=0),
        ingest=IngestSettings(),
        store=StoreSettings(),
        crypto=CryptoSettings(),
    )
    registry = CollectorRegistry()
    app = build_app(settings, registry=registry)
    app[TALLY] = Tally()
    app.router.add_get("/bench/bare/twilio", bare_twilio)
    app.router.add_get("/bench/bare/fork", bare_fork)
    async with BenchServer(app) as server, aiohttp.ClientSession() as http:
        operator = await ensure_operator_token(app[SERVICES].catalog, None, now=datetime.now(UTC))
        if operator is None:
            raise RuntimeError("a fresh data dir already had an operator token")
        bench = Bench(app, server, http, registry, tokens={"operator": operator})
        if tls:
            await serve_tls(bench, data_dir.parent)
        try:
            await bench.set_up_tenant()
            yield bench
        finally:
            bench.client_thread.shutdown()


async def serve_tls(bench: Bench, directory: Path) -> None:
    """A second listening socket of the bench's app (its runner), over TLS."""
    chain, key, client = make_certificate(directory)
    context = ServerTls(HttpSettings(tls_cert=chain, tls_key=key)).context
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    runner = bench.server.runner
    assert runner is not None
    site = web.SockSite(runner, sock, ssl_context=context)
    await site.start()
    bench.tls_port, bench.tls_client = sock.getsockname()[1], client


async def stream_calls(
    bench: Bench,
    transport: str,
    script: CallScript,
    calls: int,
    *,
    bare: bool,
    seconds: int,
    paced: bool = False,
    tls: bool = False,
) -> Run:
    """Announce ``calls`` calls (callvault; not timed), then stream them all at once from
    the client thread; checks that the server took every audio frame."""
    if bare:
        call_ids = [f"bare-{i}" for i in range(calls)]
        path, before = f"/bench/bare/{transport}", bench.app[TALLY].messages
    else:
        call_ids = [await bench.announce(transport) for _ in range(calls)]
        path, before = f"/v1/ingest/{transport}", bench.frames_in(transport)
    url = bench.server.make_url(path)
    if tls:
        url = url.with_scheme("https").with_port(bench.tls_port)
    plan = Plan(
        url=str(url),
        # Twilio carries the token in start (it cannot set headers); fork on the upgrade.
        headers={} if transport == "twilio" else {"Authorization": f"Bearer {bench.pbx}"},
        heads=[script.head(call_id, bench.pbx) for call_id in call_ids],
        body=script.body,
        tail=script.tail,
        per_period=script.per_period,
        paced=paced,
        flush_interval_s=bench.app[SETTINGS].ingest.flush_interval.total_seconds(),
        tls=bench.tls_client if tls else None,
    )
    # A thread of the bench's own, not the loop's default executor: the gateway hands its
    # spool's file I/O to that executor, and the client must not take one of its workers.
    run = await asyncio.get_running_loop().run_in_executor(
        bench.client_thread, run_client, plan, seconds
    )
    if bare:
        taken, expected = bench.app[TALLY].messages - before, script.audio_messages * calls
    else:
        taken, expected = bench.frames_in(transport) - before, script.audio_events * calls
    if taken != expected:
        raise RuntimeError(f"{transport}: the server took {taken} audio frames of {expected}")
    return run


def per_round_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """Median over rounds of one quantity's ratio to another in the same round."""
    return statistics.median(n / d for n, d in zip(numerators, denominators, strict=True))


Contestants = Mapping[str, Mapping[str, bool]]
"""Two contestants by name, the baseline first: ``stream_calls``'s ``bare`` and ``tls``."""
VERSUS_BARE: Contestants = {"bare": {"bare": True}, "callvault": {"bare": False}}
VERSUS_WS: Contestants = {"ws": {"bare": False}, "wss": {"bare": False, "tls": True}}
"""callvault's ingest over WSS against the same over WS (the same app, calls and script)."""


async def run_rounds(
    bench: Bench,
    transport: str,
    script: CallScript,
    calls: int,
    seconds: int,
    rounds: int,
    *,
    paced: bool,
    contestants: Contestants = VERSUS_BARE,
) -> dict[str, list[Run]]:
    """Both contestants ``rounds`` times, the order flipping every round."""
    runs: dict[str, list[Run]] = {name: [] for name in contestants}
    names = list(contestants)
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else reversed(names):
            run = await stream_calls(
                bench,
                transport,
                script,
                calls,
                seconds=seconds,
                paced=paced,
                bare=contestants[name].get("bare", False),
                tls=contestants[name].get("tls", False),
            )
            runs[name].append(run)
    return runs


def cpu_figures(runs: dict[str, list[Run]]) -> dict[str, float | int]:
    """CPU per audio message (median round) of each contestant, and the per-round ratios
    (the second contestant's over the first's, the baseline)."""
    row: dict[str, float | int] = {}
    for name, each in runs.items():
        for part in ("process", "client", "server"):
            row[f"{name}_{part}_us_per_message"] = round(
                statistics.median(getattr(r, f"{part}_cpu_s") / r.messages for r in each) * 1e6, 2
            )
    bare, cv = runs.values()
    for part in ("client", "server", "process"):
        row[f"{part}_cpu_ratio"] = round(
            per_round_ratio(
                [getattr(r, f"{part}_cpu_s") / r.messages for r in cv],
                [getattr(r, f"{part}_cpu_s") / r.messages for r in bare],
            ),
            2,
        )
    return row


async def bench_ingest(
    bench: Bench,
    transport: str,
    script: CallScript,
    calls: int,
    seconds: int,
    rounds: int,
    contestants: Contestants = VERSUS_BARE,
) -> dict[str, float | int]:
    """As fast as the client can send: throughput and CPU per message."""
    runs = await run_rounds(
        bench, transport, script, calls, seconds, rounds, paced=False, contestants=contestants
    )
    messages = script.audio_messages * calls
    row: dict[str, float | int] = {"calls": calls, "messages_per_round": messages}
    for name, each in runs.items():
        best = min(r.wall_s for r in each)
        row[f"{name}_messages_per_s"] = round(messages / best)
        # Audio-seconds of call taken per wall second: how many live calls this pace is.
        row[f"{name}_x_realtime"] = round(seconds * calls / best, 1)
    row.update(cpu_figures(runs))
    baseline, subject = runs.values()
    row["throughput_ratio"] = round(
        per_round_ratio([r.wall_s for r in baseline], [r.wall_s for r in subject]), 3
    )
    return row


async def bench_paced(
    bench: Bench,
    transport: str,
    script: CallScript,
    calls: int,
    seconds: int,
    rounds: int,
    contestants: Contestants = VERSUS_BARE,
) -> dict[str, float | int]:
    """Live calls (one period every 20 ms each): the share of a core the server spends in
    the steady state, and so the live calls one core could carry."""
    runs = await run_rounds(
        bench, transport, script, calls, seconds, rounds, paced=True, contestants=contestants
    )
    row: dict[str, float | int] = {"calls": calls}
    for name, each in runs.items():
        share = statistics.median(r.server_cpu_s / r.wall_s for r in each)
        if share <= 0:
            raise RuntimeError(f"{transport}: no server CPU time measured; lengthen the run")
        row[f"{name}_server_core_share"] = round(share, 3)
        row[f"{name}_calls_per_core"] = round(calls / share)
        row[f"{name}_max_lag_ms"] = round(max(r.max_lag_s for r in each) * 1000, 1)
    row.update(cpu_figures(runs))
    return row


async def bench_export(bench: Bench, seconds: int, rounds: int) -> dict[str, float | int]:
    """Record one call of ``seconds`` over Twilio, then time its WAV export against reading
    its objects' plaintext through the vault."""
    await stream_calls(bench, "twilio", twilio_script(seconds), 1, bare=False, seconds=seconds)
    recording = bench.recordings[next(reversed(bench.recordings))]
    vault = bench.app[SERVICES].vault
    stored = await vault.catalog.objects.list(bench.tenant, recording_id=recording)
    objects = [o.id for o in stored if o.kind == AUDIO_KIND and o.state == "committed"]
    url = bench.server.make_url(f"/v1/recordings/{recording}/audio")
    headers = {"Authorization": f"Bearer {bench.admin}"}

    async def export() -> int:
        size = 0
        async with bench.http.get(url, headers=headers) as response:
            if response.status != 200:
                raise RuntimeError(f"export: {response.status} {await response.text()}")
            async for chunk in response.content.iter_chunked(1 << 16):
                size += len(chunk)
        return size

    async def floor() -> int:
        parts = [await vault.read_object(bench.tenant, object_id) for object_id in objects]
        return len(b"".join(parts))

    wav_bytes = await export()
    if wav_bytes != 44 + seconds * RATE * 4:
        raise RuntimeError(f"export: {wav_bytes} bytes of WAV for {seconds} s of stereo")
    plaintext_bytes = await floor()
    times: dict[str, list[float]] = {"export": [], "floor": []}
    for round_ in range(rounds):
        order = ("export", "floor") if round_ % 2 == 0 else ("floor", "export")
        for name in order:
            started = time.perf_counter()
            await (export() if name == "export" else floor())
            times[name].append(time.perf_counter() - started)
    best = {name: min(each) for name, each in times.items()}
    return {
        "seconds": seconds,
        "objects": len(objects),
        "wav_bytes": wav_bytes,
        "plaintext_bytes": plaintext_bytes,
        "export_wav_mbps": round(wav_bytes / best["export"] / 1e6, 1),
        "export_x_realtime": round(seconds / best["export"]),
        "floor_plaintext_mbps": round(plaintext_bytes / best["floor"] / 1e6, 1),
        "floor_x_realtime": round(seconds / best["floor"]),
        "time_ratio": round(per_round_ratio(times["export"], times["floor"]), 2),
    }


def cpu_cells(r: dict[str, float | int]) -> list[object]:
    return [
        r["callvault_client_us_per_message"],
        r["bare_server_us_per_message"],
        r["callvault_server_us_per_message"],
        r["bare_process_us_per_message"],
        r["callvault_process_us_per_message"],
        f"**{r['server_cpu_ratio']}x**",
        f"{r['process_cpu_ratio']}x",
    ]


CPU_HEAD = [
    "client µs",
    "server µs bare",
    "server µs cv",
    "process µs bare",
    "process µs cv",
    "server cv/bare",
    "process cv/bare",
]


def print_report(report: dict[str, Any]) -> None:
    for transport in ("twilio", "fork"):
        if transport not in report:
            continue
        unit = "2 messages" if transport == "twilio" else "1 message"
        print(
            f"\n{transport} ingest, as fast as the client sends ({unit} per 20 ms of call; "
            "CPU in µs per audio message)"
        )
        head = ["calls", "msgs/s bare", "msgs/s cv", "x real time bare", "x real time cv"]
        head += [*CPU_HEAD, "throughput cv/bare"]
        rows: list[list[object]] = []
        for r in report[transport]:
            rows.append(
                [
                    r["calls"],
                    r["bare_messages_per_s"],
                    r["callvault_messages_per_s"],
                    r["bare_x_realtime"],
                    r["callvault_x_realtime"],
                    *cpu_cells(r),
                    f"{r['throughput_ratio']}x",
                ]
            )
        print_table(head, rows)
    if "paced" in report:
        print_paced(report["paced"])
    if "export" in report:
        print_export(report["export"])
    if "tls" in report:
        print_tls(report["tls"])


def print_paced(paced: dict[str, Any]) -> None:
    print(
        f"\nlive pace: {paced['twilio']['calls']} calls sending every 20 ms, steady state "
        "(CPU in µs per audio message; core share = server CPU s per wall s)"
    )
    head = ["transport", "core share bare", "core share cv", "calls/core bare", "calls/core cv"]
    head += [*CPU_HEAD, "client lag ms (max)"]
    rows = []
    for transport in ("twilio", "fork"):
        r = paced[transport]
        rows.append(
            [
                transport,
                r["bare_server_core_share"],
                r["callvault_server_core_share"],
                r["bare_calls_per_core"],
                f"**{r['callvault_calls_per_core']}**",
                *cpu_cells(r),
                max(r["bare_max_lag_ms"], r["callvault_max_lag_ms"]),
            ]
        )
    print_table(head, rows)


def print_export(e: dict[str, Any]) -> None:
    print(f"\nexport of one {e['seconds']} s call ({e['objects']} objects)")
    head = ["WAV MB/s", "x real time", "floor MB/s", "floor x real time", "time export/floor"]
    print_table(
        head,
        [
            [
                e["export_wav_mbps"],
                e["export_x_realtime"],
                e["floor_plaintext_mbps"],
                e["floor_x_realtime"],
                f"{e['time_ratio']}x",
            ]
        ],
    )


def print_tls(tls: dict[str, Any]) -> None:
    print(
        f"\nTwilio ingest over WSS vs WS (callvault both; {tls['protocol']}, {tls['cipher']}, "
        "ECDSA P-256 certificate; the same calls alternating; CPU in µs per audio message)"
    )
    head = ["run", "calls", "ws", "wss", "client µs ws", "client µs wss", "server µs ws"]
    head += ["server µs wss", "client wss/ws", "server wss/ws", "process wss/ws"]
    rows: list[list[object]] = []
    for r in tls["fast"]:
        rows.append(
            [
                "fast (msgs/s)",
                r["calls"],
                r["ws_messages_per_s"],
                r["wss_messages_per_s"],
                *tls_cells(r),
            ]
        )
    r = tls["paced"]
    rows.append(
        [
            "live pace (calls/core)",
            r["calls"],
            r["ws_calls_per_core"],
            r["wss_calls_per_core"],
            *tls_cells(r),
        ]
    )
    print_table(head, rows)
    throughput = ", ".join(f"{r['calls']} calls {r['throughput_ratio']}x" for r in tls["fast"])
    print(f"throughput wss/ws (fast): {throughput}")


def tls_cells(r: dict[str, float | int]) -> list[object]:
    return [
        r["ws_client_us_per_message"],
        r["wss_client_us_per_message"],
        r["ws_server_us_per_message"],
        r["wss_server_us_per_message"],
        f"{r['client_cpu_ratio']}x",
        f"**{r['server_cpu_ratio']}x**",
        f"{r['process_cpu_ratio']}x",
    ]


async def negotiated(bench: Bench) -> tuple[str, str]:
    """The TLS version and cipher a client of the bench's TLS port gets."""
    assert bench.tls_client is not None
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", bench.tls_port, ssl=bench.tls_client
    )
    tls = writer.get_extra_info("ssl_object")
    version, cipher = tls.version(), tls.cipher()[0]
    writer.close()
    await writer.wait_closed()
    return str(version), str(cipher)


SECTIONS = ("twilio", "fork", "paced", "export", "tls")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    calls: list[int] = args.calls
    only: set[str] = args.only
    scripts = {"twilio": twilio_script(args.seconds), "fork": fork_script(args.seconds)}
    paced = {"twilio": twilio_script(args.paced_seconds), "fork": fork_script(args.paced_seconds)}
    report: dict[str, Any] = {
        "bench": "ingest",
        "calls": calls,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "paced_calls": args.paced_calls,
        "paced_seconds": args.paced_seconds,
        "paced_rounds": args.paced_rounds,
        "tls_calls": args.tls_calls,
        "sections": [name for name in SECTIONS if name in only],
    }
    with tempfile.TemporaryDirectory(prefix="callvault-bench-") as tmp:
        async with open_bench(Path(tmp) / "var", tls="tls" in only) as bench:
            for transport, script in scripts.items():
                if transport not in only:
                    continue
                report[transport] = [
                    await bench_ingest(bench, transport, script, c, args.seconds, args.rounds)
                    for c in calls
                ]
            if "tls" in only:
                report["tls"] = await bench_tls(bench, args, scripts["twilio"], paced["twilio"])
            if "paced" in only:
                report["paced"] = {
                    transport: await bench_paced(
                        bench,
                        transport,
                        script,
                        args.paced_calls,
                        args.paced_seconds,
                        args.paced_rounds,
                    )
                    for transport, script in paced.items()
                }
            if "export" in only:
                report["export"] = await bench_export(bench, args.export_seconds, args.rounds)
    return report


async def bench_tls(
    bench: Bench, args: argparse.Namespace, fast: CallScript, paced: CallScript
) -> dict[str, Any]:
    """Twilio over WSS against WS: as fast as the client sends, then at live pace."""
    protocol, cipher = await negotiated(bench)
    rows = [
        await bench_ingest(bench, "twilio", fast, c, args.seconds, args.rounds, VERSUS_WS)
        for c in args.tls_calls
    ]
    live = await bench_paced(
        bench,
        "twilio",
        paced,
        args.paced_calls,
        args.paced_seconds,
        args.paced_rounds,
        VERSUS_WS,
    )
    return {"protocol": protocol, "cipher": cipher, "fast": rows, "paced": live}


def sections(text: str) -> set[str]:
    chosen = {part.strip() for part in text.split(",") if part.strip()}
    if not chosen or chosen - set(SECTIONS):
        raise argparse.ArgumentTypeError(f"choose among {','.join(SECTIONS)}")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--calls", type=positive_list, default=[1, 10, 50], help="concurrent calls, e.g. 1,10,50"
    )
    parser.add_argument("--seconds", type=positive, default=20, help="audio seconds per call")
    parser.add_argument("--rounds", type=positive, default=3, help="rounds of each contestant")
    parser.add_argument(
        "--paced-calls", type=positive, default=50, help="calls of the live-pace run"
    )
    parser.add_argument(
        "--paced-seconds", type=positive, default=8, help="seconds of the live-pace run"
    )
    parser.add_argument(
        "--paced-rounds", type=positive, default=2, help="rounds of the live-pace run"
    )
    parser.add_argument(
        "--export-seconds", type=positive, default=300, help="length of the exported call"
    )
    parser.add_argument(
        "--tls-calls",
        type=positive_list,
        default=[10],
        help="concurrent calls of the WSS vs WS run as fast as the client sends, e.g. 1,10",
    )
    parser.add_argument(
        "--only",
        type=sections,
        default=set(SECTIONS),
        help=f"the sections to run, comma-separated (default all: {','.join(SECTIONS)})",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    report = asyncio.run(run(args))
    print(
        f"# sections: {','.join(report['sections'])}; "
        f"fast: {args.seconds} s per call, {args.rounds} rounds; live pace: "
        f"{args.paced_calls} calls, {args.paced_seconds} s, {args.paced_rounds} rounds "
        "(rates: best round; CPU: median round; ratios: median of per-round ratios); "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, aiohttp {aiohttp.__version__}; "
        f"{time.perf_counter() - started:.0f} s in all"
    )
    print_report(report)
    print(json.dumps(report))


if __name__ == "__main__":
    main()

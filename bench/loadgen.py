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

What it does: with ``--setup-token`` it first creates a tenant of its own (recording on,
consent not required, unencrypted RTP allowed, every limit at 1,000,000); otherwise it uses
``--tenant`` with its pbx token and a token that may read recordings. It announces the
first N calls (``POST /v1/tenants/{t}/calls``, ``ANNOUNCE_CONCURRENCY`` at a time), then
starts their streams spread evenly over ``--ramp`` (so the API's pace does not stretch the
ramp; ``announce_s`` says how long announcing took: an RTP call that sends nothing for
``rtp.timeout``, 30 s, after its announcement is ended). Each call streams one 20 ms frame
per track per tick (``bench/loadcalls.py``): Twilio Media Streams (``connected``,
``start``, two ``media`` messages a tick, each its own write, ``stop``, then the server's
1000 close), mod_audio_fork (metadata, one 640-byte stereo L16 binary frame a tick,
``stop``), AudioSocket (the id frame, one 320-byte slin frame a tick, hang-up) or RTP/SRTP
(a connected UDP socket per track, PCMU, pylibsrtp ``protect``, then ``POST
/v1/calls/{id}/end``). ``mixed`` cycles twilio, fork, audiosocket, srtp over the calls.

One ticker drives all calls: call i ticks in sub-slot i % ``SLOTS`` of the 20 ms, so the
load is spread evenly; a tick that runs late sends every frame due (nothing is skipped, so
a stalled load generator bursts), and its lateness is the ``send_lag``. A step whose
``send_lag_ms_p99_steady`` is above 20 ms measured the load generator, not the server.
``others_on_core_share`` says how much of the load generator's core other processes took
over the steady window (on a shared machine, the usual reason it lagged).

The check (``bench/loadframes.py``): every frame carries a marker (index, call, track)
over a per-(call, track) base block, so after the calls end each recording's export
(``GET /v1/recordings/{id}/audio``, fetched ``VERIFY_CONCURRENCY`` at a time) is compared
with the regenerated frames: a frame counts as stored only if it lies sample-exact at its
place, the rest of the track silent (a missing, duplicated, misplaced or altered frame
fails). With ``--bare`` the check is bare.py's own count of frames taken (``GET
/bare/stats``, the delta over the run, once it has caught up or stalled for 1 s).

``--minutes M`` (soak): each of the N lanes starts a new call as its last one ends until M
minutes have passed; calls are checked as they end.

Output: a table, and with ``--json`` one JSON line (interface.md's fields and more): frames
sent, checked, lost; calls failed with the first reasons; send lag p99/max (ms) over the
run and over the steady window; the load generator's CPU seconds, its CPU (and kernel) µs
per frame and CPU share over the steady window; the window itself (``steady_from``, when
all N calls were live; ``steady_until``, when the first began to end; unix times); counts
per transport. Exit 0 when nothing was lost, 1 when something was (or a call failed), 2 on
a usage or setup error. ``async def run(Options) -> Result`` does the same from Python.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import resource
import secrets
import sys
import time
import wave
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import numpy as np  # noqa: E402

from bench.loadcalls import FRAME_S, Call, SetupError, bearer  # noqa: E402
from bench.loadframes import aligned, check_track  # noqa: E402
from bench.procstat import core_busy_seconds  # noqa: E402
from crypto.errors import ConfigError  # noqa: E402
from gateway import loops  # noqa: E402

TRANSPORTS = ("twilio", "fork", "audiosocket", "srtp", "rtp")
MIXED = ("twilio", "fork", "audiosocket", "srtp")
SLOTS = 10
"""Sub-slots of the 20 ms tick: call i ticks in slot i % SLOTS."""
VERIFY_CONCURRENCY = 8
ANNOUNCE_CONCURRENCY = 32
EXPORT_WAIT_S = 120.0
LIMIT = 1_000_000
INSTRUCTIONS = {
    "recording": {"enabled": True},
    "consent": {"required": False},
    "transport": {"allow_unencrypted_rtp": True},
}


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
    ptime: int = 20
    """Milliseconds of audio per RTP/SRTP datagram (20 ms frames packed together)."""
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
    loadgen_sys_us_per_frame: float = 0.0
    """The part of it spent in the kernel (sends; loopback's receive path runs there too)."""
    send_lag_ms_p99_steady: float = 0.0
    send_lag_ms_max_steady: float = 0.0
    """The same over the steady window only (all N calls live, none ending)."""
    loadgen_cpu_share: float = 0.0
    """The loadgen's CPU seconds per wall second over the steady window."""
    others_on_core_share: float | None = None
    """When pinned to one core: what other processes used of it over the steady window
    (a shared machine's noise; ``None`` when not pinned)."""
    wall_s: float = 0.0
    steady_from: float | None = None
    steady_until: float | None = None
    calls_started: int = 0
    announce_s: float | None = None
    """How long announcing the first N calls took (their streams start after)."""
    by_transport: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per transport: calls, calls_failed, frames_sent, frames_checked (export checks only)."""
    bare: bool = False
    loop: str = ""


# --- the run --------------------------------------------------------------------------------


class Run:
    def __init__(self, options: Options) -> None:
        self.o = options
        parts = urlsplit(options.base)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.result = Result(options.transport, options.calls, options.seconds, bare=options.bare)
        self.slots: list[list[Call]] = [[] for _ in range(SLOTS)]
        self.lags: list[float] = []
        self.lag_at: list[float] = []
        self.live = 0
        self.started = 0
        self.frames_sent = 0
        self.steady: list[tuple[float, float, int, float, float | None, float]] = []
        """(unix time, system CPU, frames sent, loop time, this core's busy seconds, process
        time) at the steady window's ends."""
        self.ended_any = False
        self.announced = 0
        self.all_announced = asyncio.Event()
        self.begin = self.ramp_from = 0.0
        self.ended: list[Call] = []
        self.checks: set[asyncio.Task[None]] = set()
        self.verify = asyncio.Semaphore(VERIFY_CONCURRENCY)
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
                self.lag_at.append(now)
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
        number = lane
        first = True
        while True:
            call = Call(number, self.transport_of(number), int(self.o.seconds * 50))
            call.per_datagram = self.o.ptime // 20
            await self.one(call, http, gate, lane if first else None)
            first = False
            self.ended.append(call)
            if self.o.minutes and not self.o.bare:
                task = asyncio.create_task(self.bounded_check(http, call))
                self.checks.add(task)
                task.add_done_callback(self.checks.discard)
            number += self.o.calls
            if not self.o.minutes or loop.time() >= deadline:
                return

    async def one(
        self, call: Call, http: aiohttp.ClientSession, gate: asyncio.Semaphore, lane: int | None
    ) -> None:
        """Announce the call, stream it, end it. The first N calls (``lane`` given) are all
        announced first, then start spread over the ramp, so that the API's pace does not
        stretch the ramp; a soak's later calls start as soon as they are announced."""
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
        except (OSError, SetupError, TimeoutError, aiohttp.ClientError, KeyError) as e:
            call.failure = f"announce: {type(e).__name__}: {str(e)[:120]}"
        finally:
            if lane is not None:
                self.announced += 1
                if self.announced == self.o.calls:
                    self.ramp_from = loop.time()
                    self.result.announce_s = round(self.ramp_from - self.begin, 3)
                    self.all_announced.set()
        if call.failure:
            return
        try:
            if lane is not None:
                await self.all_announced.wait()
                start_at = self.ramp_from + self.o.ramp * lane / self.o.calls
                await asyncio.sleep(start_at - loop.time())
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
        now = asyncio.get_running_loop().time()
        self.steady.append(
            (
                time.time(),
                os.times().system,
                self.frames_sent + live,
                now,
                core_busy(),
                time.process_time(),
            )
        )

    async def bounded_check(self, http: aiohttp.ClientSession, call: Call) -> None:
        """``check``, ``VERIFY_CONCURRENCY`` at a time (a soak's checks too: as many calls
        ending at once must not flood the server with export polls)."""
        async with self.verify:
            await self.check(http, call)

    async def check(self, http: aiohttp.ClientSession, call: Call) -> None:
        if call.failure is not None or not call.announced:
            return
        try:
            pcm = await self.export(http, call.announced["recording_id"])
        except (OSError, TimeoutError, aiohttp.ClientError, SetupError, wave.Error) as e:
            call.failure = f"export: {type(e).__name__}: {str(e)[:120]}"
            return
        checks = [
            check_track(pcm[:, track], call.encoding, call.number, track, call.sent)
            for track in range(call.tracks)
        ]
        misplaced = aligned(call.transport, checks)
        for track, found in enumerate(checks):
            if misplaced is not None:  # each frame in line with its track, not with the call
                found.matched, found.failure = 0, found.failure or misplaced
            self.result.frames_checked += found.matched
            call.checked += found.matched
            call.lost += found.lost
            if found.failure and not call.failure:
                call.failure = f"{call.transport} track {track}: {found.failure}"

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
            self.begin = loop.time()
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
                await asyncio.gather(*(self.bounded_check(http, c) for c in self.ended))
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
        for c in self.ended:
            row = r.by_transport.setdefault(
                c.transport, {"calls": 0, "calls_failed": 0, "frames_sent": 0, "frames_checked": 0}
            )
            row["calls"] += 1
            row["calls_failed"] += c.failure is not None or c.lost > 0
            row["frames_sent"] += c.sent * c.tracks
            row["frames_checked"] += c.checked
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
            (t0, s0, f0, l0, b0, c0), (t1, s1, f1, l1, b1, c1) = self.steady[:2]
            if t1 > t0:
                r.steady_from, r.steady_until = round(t0, 3), round(t1, 3)
                if f1 > f0:
                    r.loadgen_cpu_us_per_frame = round((c1 - c0) / (f1 - f0) * 1e6, 3)
                    r.loadgen_sys_us_per_frame = round((s1 - s0) / (f1 - f0) * 1e6, 3)
                r.loadgen_cpu_share = round((c1 - c0) / (t1 - t0), 3)
                if b0 is not None and b1 is not None:
                    others = (b1 - b0) - (c1 - c0)
                    r.others_on_core_share = round(max(0.0, others) / (t1 - t0), 3)
                at = np.array(self.lag_at)
                steady = np.array(self.lags)[(at >= l0) & (at <= l1)] * 1000
                if len(steady):
                    r.send_lag_ms_p99_steady = round(float(np.percentile(steady, 99)), 3)
                    r.send_lag_ms_max_steady = round(float(steady.max()), 3)
        return r


async def run(options: Options) -> Result:
    """Drive ``options.calls`` calls and check them (importable; see the module doc)."""
    if options.transport not in (*TRANSPORTS, "mixed"):
        raise SetupError(f"unknown transport {options.transport!r}")
    raise_fd_limit()
    result = await Run(options).run()
    result.loop = loops.running_kind()
    return result


def core_busy() -> float | None:
    """Busy seconds (all processes) of the one core this process is pinned to, if it is."""
    cores = os.sched_getaffinity(0)
    if len(cores) != 1:
        return None
    try:
        return core_busy_seconds(next(iter(cores)))
    except RuntimeError:
        return None


def raise_fd_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard = 1 << 16 if hard == resource.RLIM_INFINITY else hard
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


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
    p.add_argument(
        "--ptime",
        type=int,
        default=20,
        help="ms of audio per RTP/SRTP datagram: 20 (default) to 200, a multiple of 20",
    )
    args = p.parse_args(argv)
    if not 20 <= args.ptime <= 200 or args.ptime % 20:
        p.error("--ptime: 20 to 200 ms, a multiple of 20")
    if args.calls < 1 or args.seconds < 0.02 or args.ramp < 0 or args.minutes < 0:
        p.error("--calls >= 1, --seconds >= 0.02, --ramp and --minutes >= 0")
    return Options(**vars(args))


def main(argv: list[str] | None = None) -> int:
    try:
        options = parse(argv)
    except SystemExit as e:
        return 2 if e.code else 0
    try:
        result = loops.run(run(options), loops.loop_kind(options.loop))
    except (SetupError, ConfigError, aiohttp.ClientError, OSError) as e:  # setup, server gone
        print(f"loadgen: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
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
        ("steady: send lag p99 / max", f"{r.send_lag_ms_p99_steady:.2f} / "
         f"{r.send_lag_ms_max_steady:.2f} ms"),
        ("steady: loadgen CPU share, others on its core", f"{r.loadgen_cpu_share:.2f}, "
         f"{r.others_on_core_share}"),
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

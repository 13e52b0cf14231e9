"""The RTP/SRTP ingest's zero-loss capacity on one core, against a bare SRTP receiver's.

The packet rate it takes with zero loss, next to a bare asyncio SRTP receiver's on the same
packets in the same run, and the paced stereo calls it holds.

UDP cannot push back: a receiver that falls behind loses packets once its socket buffers
are full. So the figure that matters is the highest rate a receiver *sustains with zero
loss*, and the number of live calls that rate is. This program measures both:

* **Throughput**: S concurrent SRTP streams (S/2 stereo calls, two tracks each) of 160-byte
  PCMU packets, sent at a total rate of R packets/s, round robin over the streams (so each
  stream gets R/S packets/s, evenly spaced). For each S, R is searched (a flood probe for a
  first estimate, then up by 20 % until a step fails, down by 20 % until one passes, then
  bisected to 3 %) for the highest rate that passes; the lowest rate that failed is
  reported too, and the ratio of the two contestants' highest passing rates. Contestants:

  - **callvault**: the real app (``gateway.app.build_app`` on embedded defaults in a
    temporary data dir, an aiohttp runner on a free port), calls announced over HTTP with a
    pbx token (``transport: rtp``, ``codec: pcmu``, SRTP), each stream sent to the port and
    with the key its announcement handed out;
  - **bare** (the baseline): one asyncio ``DatagramProtocol`` per stream on the same
    default event loop, that only unprotects each datagram with pylibsrtp and appends its
    payload to a file of its own: the least any SRTP receiver written this way does.

* **Paced calls**: N stereo calls at live pace (one packet per track every 20 ms, the
  calls' ticks spread evenly over the 20 ms, their starts spread over callvault's 2 s flush
  interval as live calls' are, so that their timed flushes do not all fall together), N
  raised (a ladder, then bisected to 10 calls) until a step fails; the largest N that
  passed, confirmed by a second step (or N - 10 where that fails), and the receiver's share
  of its core there (CPU seconds per wall second while all N calls were sending). The bare
  receiver runs once at that N for comparison.

A step **passes** when every packet sent was accounted for as delivered (callvault:
``callvault_frames_in_total{transport="rtp"}`` rose by the packets sent, read from
``/metrics``; bare: its own count) *and* the receiver had caught up within
``DRAIN_LIMIT_S`` (100 ms) of the last packet sent, plus callvault's
``rtp.read_interval`` (the default, 100 ms: datagrams may wait that long to be read). The
second condition keeps the socket buffers from passing a rate the receiver does not
sustain: with many streams, their default buffers (``net.core.rmem_default``, left as it
is for both receivers: neither sets
``SO_RCVBUF``) hold seconds of backlog. A failing step reports where its packets went: the
receiver's drop outcomes (``callvault_rtp_datagrams_total``), the kernel's receive-buffer
drops (``/proc/net/snmp``), and callvault's flush failures.

Processes and cores (the machine has 2): the receiver under test runs in a process of its
own pinned to the first core (callvault's worker threads, the catalog's, the spool's, are
pinned with it: "one core" means all of the gateway); the sender and this program run in
two processes pinned to the second. The sender builds every step's packets (RTP headers
and pylibsrtp ``protect``) before the step starts, then sends them on connected UDP sockets
(one per stream, as a PBX's source port per stream) in batches at most ~0.5 ms apart, and
reports its own lateness. Loopback's kernel receive path mostly runs on the sender's core,
the same for both receivers. Both receivers are alive all along, and the contestants
alternate step by step (the order flips each step); a stream keeps its SSRC, sequence
numbers, timestamps and SRTP session across steps, so calls are announced once and live
for the whole run (``rtp.timeout`` is raised for that). CPU is read from ``/proc/<pid>/stat``
(all the receiver's threads), and the receiver core's busy time from ``/proc/stat``: what
the receiver did not use of it ("other on core") tells how much the shared machine
disturbed a step.

At the end, one paced call is ended and its recording checked: its ``duration_s`` and its
exported WAV match the packets sent on it, and the left channel is exactly the µ-law sent.
Prints markdown tables and one JSON line.

    python bench/rtp.py [--streams 2,20,200] [--seconds 3] [--steps 6] [--paced-seconds 6]
                        [--paced-start 100] [--quick] [--profile CALLS]

The defaults take about 4-5 minutes, ``--quick`` about one. ``--profile CALLS`` adds a
cProfile of callvault's event loop thread over a paced run of CALLS calls (cProfile's own
cost per call inflates small functions: read it for the ranking, not the µs).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import cProfile
import http.client
import io
import json
import math
import multiprocessing
import os
import platform
import pstats
import resource
import secrets
import socket
import statistics
import struct
import sys
import tempfile
import time
import wave
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pylibsrtp  # noqa: E402
from aiohttp import web  # noqa: E402
from arguments import positive, positive_list  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from report import print_table  # noqa: E402

from bench.procstat import core_busy_seconds, cpu_seconds  # noqa: E402
from gateway.app import build_app  # noqa: E402
from gateway.auth import ensure_operator_token  # noqa: E402
from gateway.ingest.rtp import KEY_LENGTH, SrtpKey  # noqa: E402
from gateway.logs import ACCESS, AccessLogger  # noqa: E402
from gateway.settings import (  # noqa: E402
    AudioSocketSettings,
    CryptoSettings,
    HttpSettings,
    IngestSettings,
    LimitsSettings,
    RtpSettings,
    Settings,
    StoreSettings,
)
from gateway.state import SERVICES  # noqa: E402
from storage.media.codecs import codec  # noqa: E402

RATE = 8000
FRAME_SAMPLES = 160
"""One 20 ms PCMU packet: 160 samples, 160 bytes."""
PACKETS_PER_S = 50
"""Per track at live pace."""
PT_PCMU = 0
TONES = (440, 660)
"""Even streams (a call's inbound track) carry the first tone, odd ones the second."""
RTP_PORTS = (20000, 31999)
"""callvault's ``rtp.port_min..port_max``: 3000 calls' worth (4 ports a call), below
Linux's ephemeral range (32768-60999), where the bare receiver, the sender and the HTTP
server bind."""
INSTRUCTIONS = {"recording": {"enabled": True}, "consent": {"required": False}}
TENANT = "bench"

DRAIN_LIMIT_S = 0.1
READ_INTERVAL_S = RtpSettings().read_interval.total_seconds()
"""callvault's default ``rtp.read_interval``, which its drain limit adds."""
"""A passing step's receiver has taken every packet within this long of the last one sent
(at 3 s steps: a receiver more than ~3 % short of the rate fails)."""
STALL_S = 0.5
"""The receiver's count has not moved for this long: what it has not taken is lost."""
POLL_S = 0.02
"""How often the receiver's count is read after a step."""
DRAIN_CAP_S = 30.0
PROBE_PACKETS = 60_000
"""Packets of the flood probe (sent as fast as the sender can)."""
MIN_SLEEP_S = 0.0005
"""The sender sleeps at least this long between batches."""
WARM_S = 1.0
"""CPU is measured from this long (at most a quarter of the step) after a step's first
packet, or half a second after its last call started ..."""
TAIL_S = 0.5
"""... to this long (at most a quarter of the step) before its first call's last packet."""
FLUSH_INTERVAL_S = 2.0
"""callvault's ``ingest.flush_interval`` (its default): paced calls' starts are spread over
it, as live calls' starts are, so that their timed flushes do not all fall together."""
SEARCH_UP = 1.2
SEARCH_DOWN = 0.8
SEARCH_PRECISION = 1.03
"""The search stops once the failing rate is within 3 % of the passing one."""
PACED_GRAIN = 10
"""Paced calls are bisected to a multiple of this."""
MAX_CALLS = (RTP_PORTS[1] - RTP_PORTS[0]) // 4 - 1
"""The most paced calls the port range holds (a fresh call is added to confirm)."""
CONFIRM_TRIES = 3
"""Tries to confirm the most paced calls, one grain fewer each time."""


# --- cores and CPU -------------------------------------------------------------------------


def cores() -> tuple[int, int]:
    """The receiver's core and the sender's (the same one on a 1-core machine), chosen once,
    before this process pins itself to the sender's."""
    available = sorted(os.sched_getaffinity(0))
    return available[0], available[1] if len(available) > 1 else available[0]


def pin(core: int) -> None:
    os.sched_setaffinity(0, {core})


def raise_fd_limit() -> None:
    """4 sockets per call: lift the soft descriptor limit to the hard one."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 16
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def kernel_udp_drops() -> int:
    """The kernel's UDP receive-buffer drops, machine-wide (``/proc/net/snmp``)."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()]
    head, values = [pair for pair in zip(lines, lines[1:], strict=False) if pair[0][0] == "Udp:"][0]
    return int(values[head.index("RcvbufErrors")])


# --- the sender process --------------------------------------------------------------------


def tone_payloads(hz: float) -> list[bytes]:
    """One second of a tone as 50 PCMU payloads; a stream's packet k carries payload k % 50."""
    t = np.arange(RATE)
    pcm = (np.sin(2 * np.pi * hz * t / RATE) * 9000).astype(np.int16)
    ulaw = codec("pcmu").encode(pcm)
    return [ulaw[i : i + FRAME_SAMPLES] for i in range(0, RATE, FRAME_SAMPLES)]


@dataclass
class SendStream:
    """One SRTP stream's sending state (mutable on purpose: it continues across steps)."""

    sock: socket.socket
    srtp: pylibsrtp.Session
    ssrc: int
    payloads: list[bytes]
    sent: int = 0
    """Packets built so far; the next one's index (its payload, timestamp, sequence)."""

    def packets(self, count: int) -> list[bytes]:
        out = []
        for _ in range(count):
            k = self.sent
            header = struct.pack(
                "!BBHII", 0x80, PT_PCMU, k % 65536, k * FRAME_SAMPLES % (1 << 32), self.ssrc
            )
            out.append(self.srtp.protect(header + self.payloads[k % len(self.payloads)]))
            self.sent += 1
        return out


@dataclass(frozen=True)
class Sent:
    """What the sender did in one step (times are ``time.monotonic``, shared by processes)."""

    packets: int
    start: float
    end: float
    """When the last packet went out."""
    max_lag_s: float
    """The latest a batch went out after its first packet was due."""
    errors: int

    @property
    def rate(self) -> float:
        return self.packets / max(self.end - self.start, 1e-9)


def schedule(
    streams: int, per_stream: int, rate: float, spread: float
) -> tuple[list[int], list[float]]:
    """When each packet goes out: ``(index, due)`` lists in sending order, ``index =
    k * streams + s`` for stream s's packet k, ``due`` in seconds after the start.

    Stream s's packet k is due at ``offset(s) + (k * streams + s) / rate``: every stream at
    ``rate / streams`` packets/s, the streams interleaved evenly (a call's two tracks one
    after the other), and ``offset(s)`` the start of call s // 2, the calls' starts spread
    evenly over ``spread`` seconds. All at once when ``rate`` is infinite (a flood)."""
    total = streams * per_stream
    if math.isinf(rate):
        return list(range(total)), [0.0] * total
    calls = math.ceil(streams / 2)
    k = np.arange(per_stream)[:, None]
    s = np.arange(streams)[None, :]
    due = ((s // 2) * (spread / calls) + (k * streams + s) / rate).ravel()
    order = np.argsort(due, kind="stable")
    return order.tolist(), due[order].tolist()


def send_schedule(
    sends: list[Callable[[bytes], object]], packets: list[bytes], due: list[float], start: float
) -> Sent:
    """Send packet i at ``start + due[i]``, in batches of what is due, sleeping at least
    ``MIN_SLEEP_S`` between batches."""
    total, i, max_lag, errors, end = len(packets), 0, 0.0, 0, start
    while time.monotonic() < start:
        time.sleep(max(start - time.monotonic(), 0))
    while i < total:
        now = time.monotonic()
        ready = bisect.bisect_right(due, now - start, i)
        if ready > i:
            max_lag = max(max_lag, now - start - due[i])
            for j in range(i, ready):
                try:
                    sends[j](packets[j])
                except OSError:  # a full buffer on a flood, or a port gone
                    errors += 1
            i = ready
            end = time.monotonic()
        else:
            time.sleep(max(start + due[i] - now, MIN_SLEEP_S))
    return Sent(total, start, end, max_lag, errors)


def sender_main(conn: Connection, core: int) -> None:
    """The sender process: ``("add", [(port, key), ...])`` opens streams and answers their
    ids; ``("run", ids, rate, per_stream, spread)`` builds ``per_stream`` packets for each
    (see ``schedule``), answers ``("ready", start)``, sends them and answers a ``Sent``;
    ``("sent", id)`` answers the packets sent on a stream so far; ``("stop",)``."""
    pin(core)
    raise_fd_limit()
    payloads = [tone_payloads(hz) for hz in TONES]
    streams: list[SendStream] = []
    while True:
        command = conn.recv()
        if command[0] == "add":
            ids = []
            # Streams come in pairs (a call's inbound and outbound tracks): one tone each.
            for index, (port, material) in enumerate(command[1]):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.bind(("127.0.0.1", 0))
                sock.connect(("127.0.0.1", port))
                srtp = SrtpKey(material).session(outbound=True)
                ids.append(len(streams))
                streams.append(SendStream(sock, srtp, secrets.randbits(32), payloads[index % 2]))
            conn.send(ids)
        elif command[0] == "run":
            _, ids, rate, per_stream, spread = command
            chosen = [streams[i] for i in ids]
            built = [stream.packets(per_stream) for stream in chosen]
            count = len(chosen)
            order, due = schedule(count, per_stream, rate, spread)
            packets = [built[i % count][i // count] for i in order]
            sends = [chosen[i % count].sock.send for i in order]
            start = time.monotonic() + 0.2
            conn.send(("ready", start))
            conn.send(send_schedule(sends, packets, due, start))
        elif command[0] == "sent":
            conn.send(streams[command[1]].sent)
        else:
            for stream in streams:
                stream.sock.close()
            conn.send("stopped")
            return


# --- the bare receiver process -------------------------------------------------------------


class BareTrack(asyncio.DatagramProtocol):
    """The baseline: unprotect, append the payload to a file, count."""

    def __init__(self, key: SrtpKey, path: Path) -> None:
        self.srtp = key.session()
        self.file = path.open("ab")
        self.received = 0
        self.refused = 0

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            packet = self.srtp.unprotect(data)
        except pylibsrtp.Error:
            self.refused += 1
            return
        self.file.write(packet[12:])
        self.received += 1


def bare_main(conn: Connection, core: int, data_dir: str) -> None:
    """The bare receiver's process: ``("open", [key, ...])`` binds a port per key and
    answers the ports; ``("count",)`` answers (delivered, handled); ``("stop",)``."""
    pin(core)
    raise_fd_limit()
    asyncio.run(_bare(conn, Path(data_dir)))


async def _bare(conn: Connection, data_dir: Path) -> None:
    loop = asyncio.get_running_loop()
    tracks: list[BareTrack] = []
    transports: list[asyncio.BaseTransport] = []
    opening: set[asyncio.Task[None]] = set()
    stopped = asyncio.Event()

    async def open_tracks(keys: list[bytes]) -> None:
        ports = []
        for material in keys:
            track = BareTrack(SrtpKey(material), data_dir / f"track-{len(tracks)}.raw")
            transport, _ = await loop.create_datagram_endpoint(
                lambda track=track: track,  # type: ignore[misc]
                local_addr=("127.0.0.1", 0),
            )
            tracks.append(track)
            transports.append(transport)
            ports.append(transport.get_extra_info("sockname")[1])
        conn.send(ports)

    def on_command() -> None:
        command = conn.recv()
        if command[0] == "open":
            task = loop.create_task(open_tracks(command[1]))
            opening.add(task)
            task.add_done_callback(opening.discard)
        elif command[0] == "count":
            delivered = sum(t.received for t in tracks)
            conn.send((delivered, delivered + sum(t.refused for t in tracks)))
        else:
            stopped.set()

    loop.add_reader(conn.fileno(), on_command)
    await stopped.wait()
    loop.remove_reader(conn.fileno())
    for transport, track in zip(transports, tracks, strict=True):
        transport.close()
        track.file.close()
    conn.send("stopped")


# --- the callvault receiver process --------------------------------------------------------


def callvault_main(conn: Connection, core: int, data_dir: str) -> None:
    """callvault's process: the app on a free port; answers (port, operator token), then
    ``("profile", on)`` starts or stops (answering the stats) a cProfile of its loop;
    ``("stop",)``."""
    pin(core)
    raise_fd_limit()
    asyncio.run(_callvault(conn, Path(data_dir)))


async def _callvault(conn: Connection, data_dir: Path) -> None:
    # Every setting is given explicitly (none left to CALLVAULT_* variables). Calls live for
    # the whole run, idle while other steps run: rtp.timeout and start_timeout are raised so
    # that none ends under the bench.
    settings = Settings(
        data_dir=data_dir,
        database_url=None,
        master_key=None,
        operator_token=None,
        http=HttpSettings(host="127.0.0.1", port=0),
        audiosocket=AudioSocketSettings(port=0),
        ingest=IngestSettings(start_timeout=timedelta(hours=2)),
        rtp=RtpSettings(port_min=RTP_PORTS[0], port_max=RTP_PORTS[1], timeout=timedelta(hours=2)),
        store=StoreSettings(),
        crypto=CryptoSettings(),
        # The tenant limits (issue 16's defaults: 50 RTP calls, 600 announcements a
        # minute) would refuse the bench's calls: it announces thousands, all live at once.
        limits=LimitsSettings(
            live_calls=10 * MAX_CALLS, rtp_calls=10 * MAX_CALLS, announces_per_minute=10 * MAX_CALLS
        ),
    )
    app = build_app(settings)
    runner = web.AppRunner(app, access_log_class=AccessLogger, access_log=ACCESS)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    operator = await ensure_operator_token(app[SERVICES].catalog, None, now=datetime.now(UTC))
    port = runner.addresses[0][1]
    conn.send((port, operator))
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    profiler = cProfile.Profile()

    def on_command() -> None:
        command = conn.recv()
        if command[0] == "profile" and command[1]:
            profiler.enable()
        elif command[0] == "profile":
            profiler.disable()
            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out)
            conn.send(profile_rows(stats))
        else:
            stopped.set()

    loop.add_reader(conn.fileno(), on_command)
    await stopped.wait()
    loop.remove_reader(conn.fileno())
    await runner.cleanup()
    conn.send("stopped")


def profile_rows(stats: pstats.Stats) -> list[dict[str, Any]]:
    """Every function's calls, own time and cumulative time (seconds)."""
    entries: dict[tuple[str, int, str], tuple[int, int, float, float, object]]
    entries = stats.stats  # type: ignore[attr-defined]
    return [
        {
            "function": f"{shorten(path)}:{line}({name})",
            "calls": calls,
            "own_s": own,
            "cumulative_s": cumulative,
        }
        for (path, line, name), (_, calls, own, cumulative, _) in entries.items()
    ]


def shorten(path: str) -> str:
    root = str(Path(__file__).resolve().parent.parent) + "/"
    if path.startswith(root):
        return path[len(root) :]
    marker = "site-packages/"
    return path[path.index(marker) + len(marker) :] if marker in path else path


# --- the contestants, seen from this (the main) process ------------------------------------


@dataclass(frozen=True)
class Counts:
    delivered: int
    """Packets the receiver took as audio."""
    handled: int
    """Datagrams it handled in any way (delivered or dropped by its own checks)."""
    outcomes: dict[str, int] = field(default_factory=dict)
    flush_failures: int = 0


class Api:
    """callvault's HTTP API over one kept-alive connection."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def request(self, method: str, path: str, token: str | None, body: object = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = None if body is None else json.dumps(body).encode()
        self.conn.request(method, path, body=data, headers=headers)
        response = self.conn.getresponse()
        payload = response.read()
        if response.status >= 300:
            raise RuntimeError(f"{method} {path}: {response.status} {payload[:300]!r}")
        content = response.getheader("Content-Type", "")
        return json.loads(payload) if content.startswith("application/json") else payload

    def close(self) -> None:
        self.conn.close()


class Contestant:
    """A receiver under test: its process (``conn`` to it, its pid, its core) and the
    streams open on it (their ids at the sender)."""

    name: str

    def __init__(self, sender: Connection, conn: Connection, pid: int, core: int) -> None:
        self.sender = sender
        self.conn = conn
        self.pid = pid
        self.core = core
        self.streams: list[int] = []

    def ensure_streams(self, count: int) -> list[int]:
        """The first ``count`` streams (a call's two tracks are adjacent), opened as needed."""
        missing = count - len(self.streams)
        if missing > 0:
            targets = self._open(missing)
            self.sender.send(("add", targets))
            self.streams += self.sender.recv()
        return self.streams[:count]

    def _open(self, count: int) -> list[tuple[int, bytes]]:
        raise NotImplementedError

    def counts(self) -> Counts:
        raise NotImplementedError


class Bare(Contestant):
    name = "bare"

    def _open(self, count: int) -> list[tuple[int, bytes]]:
        keys = [secrets.token_bytes(KEY_LENGTH) for _ in range(count)]
        self.conn.send(("open", keys))
        ports: list[int] = self.conn.recv()
        return list(zip(ports, keys, strict=True))

    def counts(self) -> Counts:
        self.conn.send(("count",))
        delivered, handled = self.conn.recv()
        return Counts(delivered, handled, {"refused": handled - delivered})


class Callvault(Contestant):
    name = "callvault"

    def __init__(self, sender: Connection, conn: Connection, pid: int, core: int) -> None:
        super().__init__(sender, conn, pid, core)
        port, self.operator = conn.recv()
        self.api = Api(port)
        self.tokens: dict[str, str] = {}
        self.calls: list[dict[str, Any]] = []
        self.api.request("POST", "/v1/tenants", self.operator, {"id": TENANT, "name": "Bench"})
        for role in ("pbx", "admin"):
            answer = self.api.request(
                "POST", f"/v1/tenants/{TENANT}/tokens", self.operator, {"role": role}
            )
            self.tokens[role] = answer["token"]
        self.api.request(
            "PUT", f"/v1/tenants/{TENANT}/instructions", self.tokens["admin"], INSTRUCTIONS
        )

    def _open(self, count: int) -> list[tuple[int, bytes]]:
        # Streams are opened in pairs: a call's inbound and outbound tracks.
        targets = []
        for _ in range(math.ceil(count / 2)):
            body = {
                "from": "+40711111111",
                "to": "+40722222222",
                "transport": "rtp",
                "codec": "pcmu",
                "srtp": True,
            }
            answer = self.api.request(
                "POST", f"/v1/tenants/{TENANT}/calls", self.tokens["pbx"], body
            )
            self.calls.append(answer)
            offer = answer["ingest"]["rtp"]
            for track in ("inbound", "outbound"):
                key = SrtpKey.from_sdes(offer["crypto"][track])
                targets.append((offer[track], key.material))
        return targets

    def ensure_streams(self, count: int) -> list[int]:
        return super().ensure_streams(2 * math.ceil(count / 2))[:count]

    def counts(self) -> Counts:
        text = self.api.request("GET", "/metrics", None).decode()
        outcomes: dict[str, int] = {}
        delivered = failures = 0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "callvault_rtp_datagrams_total":
                    outcomes[sample.labels["outcome"]] = int(sample.value)
                elif sample.name == "callvault_frames_in_total":
                    if sample.labels.get("transport") == "rtp":
                        delivered = int(sample.value)
                elif sample.name == "callvault_flush_failures_total":
                    failures = int(sample.value)
        return Counts(delivered, sum(outcomes.values()), outcomes, failures)

    def profile(self, on: bool) -> list[dict[str, Any]] | None:
        self.conn.send(("profile", on))
        return self.conn.recv() if not on else None


# --- steps ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One contestant's run at one rate: what was sent, taken, lost, and the CPU it took."""

    contestant: str
    streams: int
    requested_pps: float
    sent: int
    sent_pps: int
    """The rate the sender achieved."""
    delivered: int
    lost: int
    drain_ms: float | None
    """How long after the last packet the receiver had taken all of them (None: it never
    did)."""
    busy_s: float
    """From the first packet until the receiver's count last moved (20 ms resolution)."""
    handled: int
    """Datagrams the receiver handled in any way (delivered or dropped by its checks)."""
    cpu_share: float
    """Receiver CPU seconds per wall second over the step's steady part."""
    other_share: float
    """The receiver's core's busy time, less the receiver's, per wall second over the same
    part: other processes (the machine is shared) and interrupts; ideally near 0."""
    sender_lag_ms: float
    kernel_drops: int
    """UDP receive-buffer drops during the step (``/proc/net/snmp`` RcvbufErrors)."""
    receiver_drops: dict[str, int]
    """The receiver's own drop outcomes in this step (callvault's, by outcome)."""
    flush_failures: int
    """callvault's ``callvault_flush_failures`` during the step (its audio stays buffered
    and is flushed again, or dropped as ``overload`` once too much is buffered)."""

    @property
    def passed(self) -> bool:
        limit = DRAIN_LIMIT_S + (READ_INTERVAL_S if self.contestant == "callvault" else 0.0)
        return self.lost == 0 and self.drain_ms is not None and self.drain_ms <= limit * 1e3

    @property
    def us_per_packet(self) -> float:
        """CPU per packet at the step's full rate (after its calls' starts)."""
        if math.isinf(self.requested_pps) or not self.requested_pps:
            return 0.0
        return self.cpu_share / self.requested_pps * 1e6

    def row(self) -> dict[str, Any]:
        out = asdict(self)
        out["passed"] = self.passed
        out["us_per_packet"] = round(self.us_per_packet, 2)
        return out


def run_step(
    sender: Connection,
    contestant: Contestant,
    ids: list[int],
    rate: float,
    seconds: float,
    spread: float = 0.0,
) -> Step:
    """Send ``rate`` packets/s for ``seconds`` over the sender's streams ``ids`` of
    ``contestant`` (every stream's share of ``PROBE_PACKETS`` at once when ``rate`` is
    infinite), the calls' starts spread over ``spread`` s, and account for every packet."""
    streams = len(ids)
    flood = math.isinf(rate)
    per_stream = max(PROBE_PACKETS // streams if flood else round(rate * seconds / streams), 1)
    before, kernel_before = contestant.counts(), kernel_udp_drops()
    sender.send(("run", ids, rate, per_stream, spread))
    _, start = sender.recv()
    cpu: list[tuple[float, float, float]] = []
    if not flood:
        cpu_from = start + (spread + 0.5 if spread else min(WARM_S, seconds / 4))
        cpu_to = start + per_stream * streams / rate - min(TAIL_S, seconds / 4)
        if cpu_to - cpu_from >= 0.25:
            for at in (cpu_from, cpu_to):
                time.sleep(max(at - time.monotonic(), 0))
                core = core_busy_seconds(contestant.core)
                cpu.append((time.monotonic(), cpu_seconds(contestant.pid), core))
    sent: Sent = sender.recv()
    after, drain_ms, changed = before, None, sent.end
    while time.monotonic() - sent.end < DRAIN_CAP_S:
        counts = contestant.counts()
        now = time.monotonic()
        if counts.handled != after.handled or counts.delivered != after.delivered:
            changed = now
        after = counts
        if after.delivered - before.delivered >= sent.packets:
            drain_ms = max(now - sent.end, 0.0) * 1e3
            break
        if now - changed >= STALL_S:
            break
        time.sleep(POLL_S)
    delivered = after.delivered - before.delivered
    drops = {
        outcome: n - before.outcomes.get(outcome, 0)
        for outcome, n in after.outcomes.items()
        if outcome != "audio" and n - before.outcomes.get(outcome, 0)
    }
    share = other = 0.0
    if cpu:
        (t0, c0, b0), (t1, c1, b1) = cpu
        share = (c1 - c0) / (t1 - t0)
        other = max((b1 - b0) / (t1 - t0) - share, 0.0)
    return Step(
        contestant=contestant.name,
        streams=streams,
        requested_pps=rate,
        sent=sent.packets,
        sent_pps=round(sent.rate),
        delivered=delivered,
        lost=sent.packets - delivered,
        drain_ms=None if drain_ms is None else round(drain_ms, 1),
        busy_s=round(changed - sent.start, 3),
        handled=after.handled - before.handled,
        cpu_share=round(share, 3),
        other_share=round(other, 3),
        sender_lag_ms=round(sent.max_lag_s * 1e3, 1),
        kernel_drops=max(kernel_udp_drops() - kernel_before, 0),
        receiver_drops=drops,
        flush_failures=after.flush_failures - before.flush_failures,
    )


def probe(sender: Connection, contestant: Contestant, streams: int) -> float:
    """A first estimate of the rate the receiver takes: datagrams it handled per second of a
    flood (more than it can take, so the kernel drops the rest)."""
    step = run_step(sender, contestant, contestant.ensure_streams(streams), math.inf, 0)
    return step.handled / max(step.busy_s, 0.05)


@dataclass
class Search:
    """The highest passing rate: up by ``SEARCH_UP`` until a step fails, down by
    ``SEARCH_DOWN`` until one passes, then bisected (geometric mean)."""

    rate: float
    passed: float | None = None
    failed: float | None = None
    steps: list[Step] = field(default_factory=list)

    def record(self, step: Step) -> None:
        self.steps.append(step)
        if step.passed:
            self.passed = max(self.passed or 0.0, step.sent_pps)
        else:
            self.failed = min(self.failed or math.inf, step.requested_pps)
        if self.failed is None:
            self.rate *= SEARCH_UP
        elif self.passed is None:
            self.rate *= SEARCH_DOWN
        else:
            self.rate = math.sqrt(self.passed * self.failed)

    @property
    def done(self) -> bool:
        return (
            self.passed is not None
            and self.failed is not None
            and self.failed / self.passed <= SEARCH_PRECISION
        )


def search_throughput(
    sender: Connection, contestants: list[Contestant], streams: int, seconds: float, steps: int
) -> dict[str, Any]:
    """Both contestants' highest zero-loss rate over ``streams`` streams, step by step in
    alternation (the order flips every step)."""
    estimates = {c.name: probe(sender, c, streams) for c in contestants}
    searches = {c.name: Search(rate=0.9 * estimates[c.name]) for c in contestants}
    for index in range(steps + 4):
        order = contestants if index % 2 == 0 else contestants[::-1]
        for contestant in order:
            search = searches[contestant.name]
            # Past the step budget, only a contestant with no passing rate goes on.
            if search.done or (index >= steps and search.passed is not None):
                continue
            ids = contestant.ensure_streams(streams)
            search.record(run_step(sender, contestant, ids, round(search.rate), seconds))
    row: dict[str, Any] = {"streams": streams, "calls": math.ceil(streams / 2)}
    for name, search in searches.items():
        best = max((s for s in search.steps if s.passed), key=lambda s: s.sent_pps, default=None)
        row[f"{name}_probe_pps"] = round(estimates[name])
        row[f"{name}_pps"] = best.sent_pps if best else 0
        row[f"{name}_fail_pps"] = round(search.failed) if search.failed else None
        row[f"{name}_us_per_packet"] = round(best.us_per_packet, 2) if best else None
        row[f"{name}_cpu_share"] = best.cpu_share if best else None
        row[f"{name}_steps"] = [s.row() for s in search.steps]
    row["ratio"] = round(row["callvault_pps"] / row["bare_pps"], 3) if row["bare_pps"] else None
    cv_us, bare_us = row["callvault_us_per_packet"], row["bare_us_per_packet"]
    row["cpu_ratio"] = round(cv_us / bare_us, 2) if cv_us and bare_us else None
    return row


def search_paced(
    sender: Connection,
    callvault: Callvault,
    bare: Bare,
    start: int,
    seconds: float,
    most: int = MAX_CALLS,
) -> dict[str, Any]:
    """The most stereo calls at live pace with zero loss: a ladder (+``start`` calls a
    step) up to the first loss, bisected to ``PACED_GRAIN`` calls; the best confirmed by a
    second step with its last call replaced by a fresh one (whose recording is then
    checked), or one grain fewer where that fails; and the bare receiver at that number.
    The ladder stops at ``most`` calls."""
    spread = min(FLUSH_INTERVAL_S, seconds / 3)
    steps: list[Step] = []

    def run(contestant: Contestant, ids: list[int]) -> Step:
        step = run_step(sender, contestant, ids, len(ids) * PACKETS_PER_S, seconds, spread)
        steps.append(step)
        return step

    passed, failed, calls = 0, None, start
    while failed is None and calls <= most:
        if run(callvault, callvault.ensure_streams(2 * calls)).passed:
            passed, calls = calls, calls + start
        else:
            failed = calls
    while failed is not None and failed - passed > PACED_GRAIN:
        calls = (passed + failed) // 2 // PACED_GRAIN * PACED_GRAIN
        if calls <= passed:
            break
        if run(callvault, callvault.ensure_streams(2 * calls)).passed:
            passed = calls
        else:
            failed = calls
    row: dict[str, Any] = {
        "max_calls": passed,
        "first_loss_calls": failed,
        "seconds": seconds,
        "spread_s": round(spread, 2),
    }
    if not passed:
        row["steps"] = [s.row() for s in steps]
        return row
    # The confirmation: the same number of calls, the last one fresh (never sent to before),
    # so that its recording holds exactly this step's packets. Where it fails, one grain
    # fewer is confirmed instead (at most CONFIRM_TRIES tries).
    for _ in range(CONFIRM_TRIES):
        fresh = callvault.ensure_streams(len(callvault.streams) + 2)[-2:]
        confirm = run(callvault, callvault.streams[: 2 * (passed - 1)] + fresh)
        if confirm.passed or passed <= PACED_GRAIN:
            break
        failed, passed = passed, passed - PACED_GRAIN
    row.update(max_calls=passed, first_loss_calls=failed, confirmed=confirm.passed)
    sender.send(("sent", fresh[0]))
    row["recording"] = check_recording(callvault, len(callvault.calls) - 1, sender.recv())
    at_best = [
        s for s in steps if s.contestant == "callvault" and s.streams == 2 * passed and s.passed
    ] or [confirm]
    share = statistics.median(s.cpu_share for s in at_best)
    row["core_share"] = round(share, 3)
    row["us_per_packet"] = round(statistics.median(s.us_per_packet for s in at_best), 2)
    row["calls_per_core"] = round(passed / share) if share else None
    bare_step = run(bare, bare.ensure_streams(2 * passed))
    row["bare_passed"] = bare_step.passed
    row["bare_core_share"] = bare_step.cpu_share
    row["bare_us_per_packet"] = round(bare_step.us_per_packet, 2)
    row["cpu_ratio"] = round(share / bare_step.cpu_share, 2) if bare_step.cpu_share else None
    row["steps"] = [s.row() for s in steps]
    return row


# --- the recording check and the profile ----------------------------------------------------


def check_recording(callvault: Callvault, index: int, packets: int) -> dict[str, Any]:
    """End call ``index`` and check its recording: its duration and exported WAV hold the
    ``packets`` sent on each track, the left channel exactly the µ-law sent."""
    call = callvault.calls[index]
    callvault.api.request("POST", f"/v1/calls/{call['call_id']}/end", callvault.tokens["pbx"])
    recording = f"/v1/recordings/{call['recording_id']}"
    meta = callvault.api.request("GET", recording, callvault.tokens["admin"])
    wav = callvault.api.request("GET", f"{recording}/audio", callvault.tokens["admin"])
    with wave.open(io.BytesIO(wav)) as reader:
        frames = reader.getnframes()
        pcm = np.frombuffer(reader.readframes(frames), dtype="<i2").reshape(-1, 2)
    expected = packets * FRAME_SAMPLES
    payloads = tone_payloads(TONES[0])
    left = codec("pcmu").decode(b"".join(payloads[k % len(payloads)] for k in range(packets)))
    exact = pcm.shape[0] >= expected and bool(np.array_equal(pcm[:expected, 0], left))
    # The outbound track starts where its first packet arrived: up to a packet later.
    length_ok = expected <= frames <= expected + FRAME_SAMPLES
    return {
        "packets_per_track": packets,
        "expected_samples": expected,
        "duration_s": meta["duration_s"],
        "wav_frames": frames,
        "left_exact": exact,
        # duration_s is rounded to the millisecond.
        "ok": exact and length_ok and abs(meta["duration_s"] * RATE - frames) <= RATE / 2000 + 1,
    }


def run_profile(
    sender: Connection, callvault: Callvault, calls: int, seconds: float
) -> list[dict[str, Any]]:
    """cProfile of callvault's event loop thread over a paced run of ``calls`` calls."""
    ids = callvault.ensure_streams(2 * calls)
    callvault.profile(True)
    spread = min(FLUSH_INTERVAL_S, seconds / 3)
    step = run_step(sender, callvault, ids, len(ids) * PACKETS_PER_S, seconds, spread)
    rows = callvault.profile(False) or []
    rows.sort(key=lambda r: r["own_s"], reverse=True)
    return [{"packets": step.sent, "lost": step.lost}, *rows]


# --- the run -------------------------------------------------------------------------------


@contextmanager
def processes(
    data_dir: Path, receiver_core: int, sender_core: int
) -> Iterator[tuple[Connection, Callvault, Bare]]:
    """The sender, callvault and the bare receiver, each in its own process."""
    context = multiprocessing.get_context("spawn")
    pipes = {name: context.Pipe() for name in ("sender", "callvault", "bare")}
    (data_dir / "callvault").mkdir()
    (data_dir / "bare").mkdir()
    started = [
        context.Process(target=sender_main, args=(pipes["sender"][1], sender_core)),
        context.Process(
            target=callvault_main,
            args=(pipes["callvault"][1], receiver_core, str(data_dir / "callvault")),
        ),
        context.Process(
            target=bare_main, args=(pipes["bare"][1], receiver_core, str(data_dir / "bare"))
        ),
    ]
    for process in started:
        process.start()
    sender = pipes["sender"][0]
    callvault = None
    try:
        callvault = Callvault(sender, pipes["callvault"][0], started[1].pid or 0, receiver_core)
        bare = Bare(sender, pipes["bare"][0], started[2].pid or 0, receiver_core)
        yield sender, callvault, bare
    finally:
        if callvault is not None:
            callvault.api.close()
        for near, _ in pipes.values():
            try:
                near.send(("stop",))
                if near.poll(60):
                    near.recv()
            except (OSError, EOFError):
                pass
        for process in started:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()
        for near, far in pipes.values():
            near.close()
            far.close()


def run(args: argparse.Namespace, receiver_core: int, sender_core: int) -> dict[str, Any]:
    pin(sender_core)
    report: dict[str, Any] = {
        "bench": "rtp",
        "streams": args.streams,
        "seconds": args.seconds,
        "steps": args.steps,
        "paced_seconds": args.paced_seconds,
        "paced_start": args.paced_start,
        "paced_max": args.paced_max,
        "drain_limit_ms": DRAIN_LIMIT_S * 1e3,
        "rmem_default": int(Path("/proc/sys/net/core/rmem_default").read_text()),
    }
    with tempfile.TemporaryDirectory(prefix="callvault-bench-rtp-") as tmp:
        with processes(Path(tmp), receiver_core, sender_core) as (sender, callvault, bare):
            contestants: list[Contestant] = [bare, callvault]
            report["throughput"] = [
                search_throughput(sender, contestants, s, args.seconds, args.steps)
                for s in args.streams
            ]
            report["paced"] = search_paced(
                sender, callvault, bare, args.paced_start, args.paced_seconds, args.paced_max
            )
            if args.profile:
                rows = run_profile(sender, callvault, args.profile, args.paced_seconds)
                report["profile"] = {"calls": args.profile, **rows[0], "top": rows[1:41]}
    return report


# --- output --------------------------------------------------------------------------------


STEP_HEAD = [
    "receiver",
    "pps asked",
    "pps sent",
    "lost",
    "kernel drops",
    "receiver drops",
    "flush failures",
    "drain ms",
    "core share",
    "other on core",
    "µs/packet",
    "sender lag ms",
    "",
]


def step_cells(s: dict[str, Any], *, paced: bool = False) -> list[object]:
    """A step's row; paced steps show the call count instead of the rate achieved (which
    their ramp of call starts lowers)."""
    drops = ", ".join(f"{k} {v}" for k, v in s["receiver_drops"].items()) or None
    return [
        s["contestant"],
        s["streams"] // 2 if paced else round(s["requested_pps"]),
        round(s["requested_pps"]) if paced else s["sent_pps"],
        s["lost"],
        s["kernel_drops"],
        drops,
        s["flush_failures"] or None,
        s["drain_ms"],
        s["cpu_share"] or None,
        s["other_share"] if s["cpu_share"] else None,
        s["us_per_packet"] or None,
        s["sender_lag_ms"],
        "pass" if s["passed"] else "FAIL",
    ]


def print_report(report: dict[str, Any]) -> None:
    print(
        "\nHighest packet rate with zero loss on one core (SRTP, 160-byte PCMU; µs/pkt: the "
        "receiver's CPU per packet at that rate; 'lost at': the lowest rate that failed)"
    )
    head = ["streams", "calls", "bare pps", "cv pps", "cv/bare", "bare lost at", "cv lost at"]
    head += ["bare µs/pkt", "cv µs/pkt", "CPU cv/bare"]
    rows: list[list[object]] = []
    for r in report["throughput"]:
        rows.append(
            [
                r["streams"],
                r["calls"],
                r["bare_pps"],
                r["callvault_pps"],
                f"**{r['ratio']}x**",
                r["bare_fail_pps"],
                r["callvault_fail_pps"],
                r["bare_us_per_packet"],
                r["callvault_us_per_packet"],
                None if r["cpu_ratio"] is None else f"{r['cpu_ratio']}x",
            ]
        )
    print_table(head, rows)
    p = report["paced"]
    print(
        f"\nPaced stereo calls (50 packets/s per track, SRTP), {p['seconds']} s steps: the "
        "most calls with zero loss (core share: receiver CPU s per wall s, steady state)"
    )
    head = ["max calls", "first fail at", "confirmed", "pps", "core share cv", "calls/core cv"]
    head += ["cv µs/pkt", "core share bare", "bare µs/pkt", "CPU cv/bare"]
    print_table(
        head,
        [
            [
                f"**{p['max_calls']}**",
                p["first_loss_calls"],
                p.get("confirmed"),
                p["max_calls"] * 2 * PACKETS_PER_S,
                p.get("core_share") or None,
                p.get("calls_per_core"),
                p.get("us_per_packet") or None,
                p.get("bare_core_share") or None,
                p.get("bare_us_per_packet") or None,
                None if p.get("cpu_ratio") is None else f"{p['cpu_ratio']}x",
            ]
        ],
    )
    for r in report["throughput"]:
        print(
            f"\nSearch steps, {r['streams']} streams (after flood probes: bare "
            f"{r['bare_probe_pps']}, callvault {r['callvault_probe_pps']} packets/s handled)"
        )
        steps = r["bare_steps"] + r["callvault_steps"]
        print_table(STEP_HEAD, [step_cells(s) for s in steps])
    print(
        f"\nPaced steps (each call {p['seconds']} s, the calls' starts spread over "
        f"{p['spread_s']} s; CPU over the part when all were sending)"
    )
    head = ["receiver", "calls", "pps", *STEP_HEAD[3:]]
    print_table(head, [step_cells(s, paced=True) for s in p["steps"]])
    if "recording" in p:
        c = p["recording"]
        print(
            f"\nRecording check (the confirmation step's fresh call, ended): "
            f"{c['packets_per_track']} packets per track, duration_s {c['duration_s']}, WAV "
            f"{c['wav_frames']} frames (expected {c['expected_samples']}), left channel exactly "
            f"the µ-law sent: {c['left_exact']}: {'ok' if c['ok'] else 'MISMATCH'}"
        )
    if "profile" in report:
        prof = report["profile"]
        print(
            f"\ncProfile of callvault's loop thread, {prof['calls']} paced calls, "
            f"{prof['packets']} packets ({prof['lost']} lost); top by own time"
        )
        print_table(
            ["function", "calls", "own s", "own µs/packet", "cumulative s"],
            [
                [
                    r["function"],
                    r["calls"],
                    round(r["own_s"], 3),
                    round(r["own_s"] / prof["packets"] * 1e6, 2),
                    round(r["cumulative_s"], 3),
                ]
                for r in prof["top"][:30]
            ],
        )


def positive_seconds(text: str) -> float:
    value = float(text)
    if not 0 < value < 600:
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds in (0, 600)")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--streams", type=positive_list, default=[2, 20, 200], help="concurrent streams"
    )
    parser.add_argument(
        "--seconds", type=positive_seconds, default=3.0, help="seconds per search step"
    )
    parser.add_argument(
        "--steps", type=positive, default=6, help="search steps per receiver after the probe"
    )
    parser.add_argument(
        "--paced-seconds", type=positive_seconds, default=6.0, help="seconds per paced step"
    )
    parser.add_argument(
        "--paced-start", type=positive, default=100, help="calls of the first paced step and rung"
    )
    parser.add_argument(
        "--paced-max",
        type=positive,
        default=MAX_CALLS,
        help="the paced ladder stops here (default: what the port range holds)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a ~1 minute run: --streams 20 --seconds 2 --steps 3 --paced-seconds 2",
    )
    parser.add_argument(
        "--profile", type=int, default=0, metavar="CALLS", help="also cProfile CALLS paced calls"
    )
    args = parser.parse_args()
    args.paced_max = min(args.paced_max, MAX_CALLS)
    if args.quick:
        args.streams, args.seconds, args.steps, args.paced_seconds = [20], 2.0, 3, 2.0
    started = time.perf_counter()
    receiver_core, sender_core = cores()
    report = run(args, receiver_core, sender_core)
    print(
        f"# {args.seconds} s search steps, {args.steps} per receiver after a flood probe; paced: "
        f"{args.paced_seconds} s steps from {args.paced_start} calls; receiver pinned to core "
        f"{receiver_core}, sender to core {sender_core}; SO_RCVBUF left at the default "
        f"({report['rmem_default']} bytes) for both; a pass: zero loss and caught up within "
        f"{DRAIN_LIMIT_S * 1e3:.0f} ms; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, pylibsrtp "
        f"{pylibsrtp.__version__}; {time.perf_counter() - started:.0f} s in all"
    )
    print_report(report)
    print(json.dumps(report))


if __name__ == "__main__":
    main()

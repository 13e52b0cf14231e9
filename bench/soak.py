"""Soak: paced calls of every transport against one ``callvault serve`` for minutes, with
faults if asked, and what was lost (``make soak``; not in CI).

The calls are ``tests.paced.PacedCall``: announced over the API, sending 20 ms frames in
real time over Twilio Media Streams, mod_audio_fork, AudioSocket, SRTP and plain RTP in
turn, ``--calls`` at a time, each ``--call-seconds`` long; as one ends, the next starts. Each
ended call's export is fetched and compared with what was sent (``tests.paced.track_loss``):
every sample kept must be the one sent, the gaps silent, and a call that ended normally
must have lost nothing. The serve process is this program's own (a temporary data dir,
SQLite or with ``--postgres`` a private PostgreSQL, the file store, no AI workers).

Faults, each on its own period (0: never):

* ``--kill-every S``: ``kill -9`` of serve, then a restart on the same data dir; the
  WebSocket calls reconnect, AudioSocket calls hang up through the API, RTP calls are left
  to the reconnect grace (``tests.paced``). The kill comes at once, without waiting for the
  server to have read what was sent, so frames still in a socket count as lost too.
* ``--catalog-restart-every S`` (with ``--postgres``): PostgreSQL stopped (fast) and started
  again ``--outage-s`` later, under the running serve.

Reported: calls made and checked, 20 ms frames sent per track, frames lost, frames lost
beyond the flush interval (per track and fault: what it lost past the interval, and one
frame of rounding), the most lost at one fault, calls whose check failed (and why), and
serve's RSS over time. A table and a JSON line (STYLE.md §13).

    python bench/soak.py [--minutes 3] [--calls 8] [--call-seconds 20] [--flush-s 2]
                         [--kill-every 60] [--postgres --catalog-restart-every 90]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
from arguments import positive  # noqa: E402
from report import print_table  # noqa: E402

from tests.gateway import Gateway, free_port  # noqa: E402
from tests.paced import (  # noqa: E402
    FRAME,
    RATE,
    Endpoint,
    PacedCall,
    Tenant,
    Transport,
    channel,
    export,
    gateway_process,
    track_loss,
)
from tests.postgres import PrivatePostgres, postgres_bin  # noqa: E402

OPERATOR = "a-long-operator-token-for-the-soak-run-0123456789"
MIX: tuple[tuple[Transport, bool], ...] = (
    ("twilio", False),
    ("fork", False),
    ("audiosocket", False),
    ("rtp", True),
    ("rtp", False),
)
RECORD_ANY_RTP = {
    "recording": {"enabled": True},
    "consent": {"required": False},
    "transport": {"allow_unencrypted_rtp": True},
}


@dataclass
class Tally:
    calls: int = 0
    checked: int = 0
    frames_sent: int = 0
    frames_lost: int = 0
    lost_by: Counter[str] = field(default_factory=Counter)
    """Frames lost by how their connection ended: ``cut`` (a kill), ``drop``, ``stop``."""
    refused: int = 0
    """Announcements refused 503 ``catalog_unavailable`` during a catalog outage."""
    frames_beyond: int = 0
    worst_ms: float = 0.0
    kills: int = 0
    catalog_restarts: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    rss: list[tuple[float, int, float]] = field(default_factory=list)
    """(when, which serve process: 1 + the restarts before it, RSS in MiB)."""


class Soak:
    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root
        self.data_dir = root / "var"
        self.tally = Tally()
        self.up = asyncio.Event()
        self.endpoint: Endpoint | None = None
        self.process: Any = None
        self.live: set[PacedCall] = set()
        self.checks: set[asyncio.Task[None]] = set()
        self.stack = contextlib.ExitStack()
        self.postgres: PrivatePostgres | None = None
        self.serves = 0
        self.beyond = int(args.flush_s * RATE) + FRAME

    def settings(self) -> dict[str, str]:
        rtp = self.args.rtp_port
        settings = {
            "CALLVAULT_OPERATOR_TOKEN": OPERATOR,
            "CALLVAULT_INGEST__FLUSH_INTERVAL": f"PT{self.args.flush_s}S",
            "CALLVAULT_INGEST__RECONNECT_GRACE": "PT5S",
            "CALLVAULT_RTP__PORT_MIN": str(rtp),
            "CALLVAULT_RTP__PORT_MAX": str(rtp + 8 * self.args.calls + 7),
            "CALLVAULT_AI__WORKERS": "0",
        }
        if self.postgres is not None:
            settings["CALLVAULT_DATABASE_URL"] = self.postgres.url
        return settings

    def start_serve(self) -> None:
        self.serves += 1
        process, endpoint = self.stack.enter_context(
            gateway_process(self.root, f"serve-{self.serves}", self.data_dir, **self.settings())
        )
        self.process, self.endpoint = process, endpoint

    async def run(self) -> Tally:
        args = self.args
        if args.postgres:
            bin_dir = postgres_bin()
            if bin_dir is None:
                raise SystemExit("--postgres: PostgreSQL's server binaries are not installed")
            self.postgres = PrivatePostgres(bin_dir, free_port())
            self.stack.callback(self.postgres.remove)
            self.postgres.init()
            self.postgres.start()
        with self.stack:
            await asyncio.to_thread(self.start_serve)
            assert self.endpoint is not None
            self.up.set()
            async with aiohttp.ClientSession() as http:
                gateway = Gateway(
                    client=aiohttp.ClientSession(base_url=self.endpoint.base),  # type: ignore[arg-type]
                    operator=OPERATOR,
                )
                async with gateway.client:
                    tokens = await gateway.tenant("soak", RECORD_ANY_RTP)
                tenant = Tenant(tokens.id, tokens.admin, tokens.pbx)
                deadline = time.monotonic() + args.minutes * 60
                background = [
                    asyncio.create_task(self.sample_rss(deadline)),
                    asyncio.create_task(self.faults(deadline)),
                ]
                lanes = [
                    asyncio.create_task(self.lane(http, tenant, lane, deadline))
                    for lane in range(args.calls)
                ]
                await asyncio.gather(*lanes)
                for task in background:
                    task.cancel()
                await asyncio.gather(*background, return_exceptions=True)
                await asyncio.gather(*self.checks)
                self.sample()
        return self.tally

    async def lane(
        self, http: aiohttp.ClientSession, tenant: Tenant, lane: int, deadline: float
    ) -> None:
        """One call after another, the transports in turn, until the deadline."""
        number = lane
        while time.monotonic() < deadline:
            transport, srtp = MIX[number % len(MIX)]
            call = PacedCall(transport, tenant, self.args.call_seconds, number, srtp=srtp)
            number += self.args.calls
            await self.up.wait()
            assert self.endpoint is not None
            try:
                await call.announce(http, self.endpoint)
            except (AssertionError, aiohttp.ClientError, OSError) as e:
                if "catalog_unavailable" in str(e):  # the 503 an outage gives, as it should
                    self.tally.refused += 1
                else:
                    self.tally.failures[f"announce: {str(e)[:60]}"] += 1
                await asyncio.sleep(1)
                continue
            self.tally.calls += 1
            self.live.add(call)
            try:
                await call.run(http)
            except (AssertionError, aiohttp.ClientError, OSError) as e:
                self.tally.failures[f"{transport} run: {str(e)[:60]}"] += 1
            self.live.discard(call)
            task = asyncio.create_task(self.check(http, call, tenant))
            self.checks.add(task)
            task.add_done_callback(self.checks.discard)

    async def check(self, http: aiohttp.ClientSession, call: PacedCall, tenant: Tenant) -> None:
        """Compare the call's export with what was sent; count what is missing."""
        await self.up.wait()
        assert self.endpoint is not None
        try:
            pcm, meta = await export(
                http, self.endpoint.base, tenant.admin, call.recording_id, wait_s=60
            )
            for track in call.pcm:
                sent = call.sent(track)
                lost = track_loss(pcm[:, channel(track)], sent)
                for part, missing in zip(call.parts, lost, strict=True):
                    self.tally.frames_sent += part.count
                    self.tally.frames_lost += -(-missing // FRAME)
                    self.tally.lost_by[part.ended_by] += -(-missing // FRAME)
                    if part.ended_by == "stop" and missing:
                        self.tally.failures[f"{call.transport}: lost audio at a normal end"] += 1
                    if missing > self.beyond:
                        self.tally.frames_beyond += (missing - self.beyond) // FRAME
                    self.tally.worst_ms = max(self.tally.worst_ms, missing * 1000 / RATE)
            self.tally.checked += 1
        except (AssertionError, aiohttp.ClientError, OSError, KeyError) as e:
            self.tally.failures[f"{call.transport} check: {str(e)[:80]}"] += 1

    async def faults(self, deadline: float) -> None:
        args = self.args
        periods = {"kill": args.kill_every, "catalog": args.catalog_restart_every}
        due = {name: time.monotonic() + period for name, period in periods.items() if period}
        while due:
            name = min(due, key=due.__getitem__)
            await asyncio.sleep(max(0.0, due[name] - time.monotonic()))
            if time.monotonic() > deadline - args.call_seconds:
                return  # the last calls end undisturbed, so that every one is checked
            due[name] += periods[name]
            if name == "kill":
                await self.kill_and_restart()
            else:
                await self.restart_catalog()

    async def kill_and_restart(self) -> None:
        self.sample()
        self.up.clear()
        for call in list(self.live):
            call.cut()
        self.process.process.kill()
        self.process.process.wait(timeout=10)
        self.tally.kills += 1
        await asyncio.to_thread(self.start_serve)
        assert self.endpoint is not None
        for call in list(self.live):
            call.back(self.endpoint)
        self.up.set()

    async def restart_catalog(self) -> None:
        assert self.postgres is not None
        await asyncio.to_thread(self.postgres.stop)
        await asyncio.sleep(self.args.outage_s)
        await asyncio.to_thread(self.postgres.start)
        self.tally.catalog_restarts += 1
        if self.process.process.poll() is not None:
            self.tally.failures["serve exited during a catalog restart"] += 1

    async def sample_rss(self, deadline: float) -> None:
        while time.monotonic() < deadline + 120:
            self.sample()
            await asyncio.sleep(self.args.rss_every)

    def sample(self) -> None:
        """serve's resident memory now (MiB), from /proc."""
        with contextlib.suppress(OSError, AttributeError):
            status = Path(f"/proc/{self.process.process.pid}/status").read_text()
            kib = next(int(line.split()[1]) for line in status.splitlines() if "VmRSS" in line)
            self.tally.rss.append((time.monotonic(), self.serves, kib / 1024))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--calls", type=positive, default=8, help="calls at a time")
    parser.add_argument("--call-seconds", type=float, default=20.0)
    parser.add_argument("--flush-s", type=float, default=2.0, help="ingest.flush_interval")
    parser.add_argument("--kill-every", type=float, default=0.0, help="seconds; 0: never")
    parser.add_argument("--postgres", action="store_true", help="a private PostgreSQL catalog")
    parser.add_argument("--catalog-restart-every", type=float, default=0.0)
    parser.add_argument("--outage-s", type=float, default=2.0)
    parser.add_argument("--rss-every", type=float, default=10.0)
    parser.add_argument("--rtp-port", type=int, default=24000, help="first RTP port")
    args = parser.parse_args()
    if args.catalog_restart_every and not args.postgres:
        parser.error("--catalog-restart-every needs --postgres")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="callvault-soak-") as root:
        tally = asyncio.run(Soak(args, Path(root)).run())
    report(args, tally, time.monotonic() - started)


def report(args: argparse.Namespace, tally: Tally, wall_s: float) -> None:
    start = tally.rss[0][0] if tally.rss else 0.0
    rss = [(round(at - start), serve, round(mib, 1)) for at, serve, mib in tally.rss]
    print_table(
        ["figure", "value"],
        [
            ("minutes (wall)", f"{wall_s / 60:.1f}"),
            ("calls at a time x seconds", f"{args.calls} x {args.call_seconds:g}"),
            ("flush interval", f"{args.flush_s:g} s"),
            ("kills (kill -9 + restart)", tally.kills),
            ("catalog restarts", tally.catalog_restarts),
            ("calls made", tally.calls),
            ("calls checked", tally.checked),
            ("20 ms frames sent (per track)", tally.frames_sent),
            ("frames lost", tally.frames_lost),
            ("frames lost, by how the connection ended", _by(tally.lost_by)),
            ("announces refused 503 during catalog outages", tally.refused),
            ("frames lost beyond the flush interval", tally.frames_beyond),
            ("most lost on one track at a fault", f"{tally.worst_ms:.0f} ms"),
            ("failed checks", sum(tally.failures.values())),
            ("serve RSS first / max / last", _rss_summary(rss)),
        ],
    )
    if tally.failures:
        print_table(["failure", "count"], sorted(tally.failures.items()))
    print_table(["t (s)", "serve process", "RSS (MiB)"], rss)
    print(
        json.dumps(
            {
                "bench": "soak",
                "minutes": args.minutes,
                "calls_at_a_time": args.calls,
                "call_seconds": args.call_seconds,
                "flush_s": args.flush_s,
                "kills": tally.kills,
                "catalog_restarts": tally.catalog_restarts,
                "calls": tally.calls,
                "checked": tally.checked,
                "frames_sent": tally.frames_sent,
                "frames_lost": tally.frames_lost,
                "frames_lost_by": dict(tally.lost_by),
                "announces_refused_503": tally.refused,
                "frames_lost_beyond_flush": tally.frames_beyond,
                "worst_ms_lost": round(tally.worst_ms),
                "failures": dict(tally.failures),
                "rss_mib": rss,
            }
        )
    )


def _by(counts: Counter[str]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counts.items())) or "-"


def _rss_summary(rss: list[tuple[int, int, float]]) -> str:
    if not rss:
        return "-"
    return f"{rss[0][2]} / {max(m for _, _, m in rss)} / {rss[-1][2]} MiB"


if __name__ == "__main__":
    main()

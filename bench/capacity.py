"""Live stereo calls per core with nothing lost: callvault against a bare receiver.

The number operators size fleets by (issue 17): the most concurrent calls one core takes at
live pace with zero loss, per transport, next to the bare receiver (``bench/bare.py``) of the
same run on the same event loop kind.

Processes and cores (the machine has 2): the contestant, ``callvault serve`` (all its
threads) or ``bench/bare.py``, runs under ``taskset -c`` on the first core; the load generator
(``bench/loadgen.py``) and this program run on the second. Each step starts a fresh contestant
(callvault: embedded defaults in a fresh temporary data dir: SQLite catalog, file store,
spool, local keyring; tenant and connection limits raised so that limits are not what fails;
no AI worker processes), runs N calls whose starts are spread at ``--start-rate`` a
second (over ``--ramp`` seconds at least), each lasting that ramp plus ``--seconds`` so that
all N are live together for ``--seconds`` however large N is, and stops it. While the calls
run, this program samples the contestant every ``sample_s``: its CPU (utime + stime of all
its threads, ``/proc/PID/stat``), its RSS (``VmRSS``) and its metrics (callvault:
``/metrics``; bare: ``/bare/stats``). The steady window is the part when all N calls were
live (the load generator's ``steady_from`` and ``steady_until``); everything per step is
taken over it, between the first and the last sample inside it.

A step **passes** when the load generator found nothing lost (every frame sent stored at
its place: callvault's export, the bare receiver's own count) and no call failed, the loop
lag p99 is under 50 ms and (callvault) the ingest-to-durable p99 under the flush interval
plus 500 ms, both from histogram bucket deltas over the window (the bare receiver's lag
percentiles are its own, over the probe samples it took between the window's two samples).
A step whose load generator ran late (its send lag p99 over 20 ms) is **loadgen-bound**:
reported, not a verdict on the contestant, and the search goes no higher.

Search per contestant (``Search``): from ``--start`` calls, x ``--growth`` until a step does not
pass, then bisected until the first non-passing N is within ``--precision`` of the best
passing one, which is then run once more to confirm it (where that fails, the next best is
bisected and confirmed). The two contestants step in alternation, the order flipping.

Per step: N, verdict and why, the contestant's core share (CPU s per wall s), calls per core
(N / share), CPU µs per frame (a frame: 20 ms of one track, so 2 per stereo call per tick and
1 for AudioSocket's mono; counted from the calls live, the same for both contestants), loop
lag p50/p99, ingest-to-durable p50/p99, RSS idle (before the calls) and steady (at the
window's end), and RSS per live call = (steady - idle) / N; and "other on core": the busy
time of the contestant's core (``/proc/stat``) not the contestant's, per wall second, which
says how much the shared machine disturbed the step (ideally near 0). callvault's share
includes answering this program's scrapes of ``/metrics`` (as it answers Prometheus's).
``--memory-calls`` runs that many calls of ``--memory-transport`` once on callvault, whatever
the verdict, for its RSS per live call (at the highest RSS seen when the step had no steady
window). Over SRTP its datagrams carry ``--memory-ptime`` ms of audio (100 by default): each
call buffers, seals and stores the same audio through the same objects as at 20 ms, with a
fifth of the datagrams, so that one core can keep 1,000 calls live while they are measured
(at 20 ms it cannot: bench/README.md).

Prints a markdown table per transport and a summary, one JSON line, and writes a PNG
(``--plot``): calls against core share and loop lag p99 per transport, both contestants.

    python bench/capacity.py [--transports twilio,fork,audiosocket,srtp] [--loop uvloop|asyncio]
        [--start 100|twilio=N,...] [--seconds 20] [--ramp 2] [--start-rate 25]
        [--memory-calls 1000] [--plot PATH] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.capacity_report import CONTESTANTS, plot, print_report, print_step  # noqa: E402
from bench.capacity_rules import (  # noqa: E402
    DURABLE_LIMIT_S,
    LAG_LIMIT_S,
    SEND_LAG_LIMIT_MS,
    Search,
    bucket_delta,
    judge,
    ms,
    parse_histograms,
    quantile,
    sample_total,
)
from bench.procstat import core_busy_seconds, cpu_seconds  # noqa: E402

TRANSPORTS = ("twilio", "fork", "audiosocket", "srtp")
TRACKS = {"twilio": 2, "fork": 2, "audiosocket": 1, "srtp": 2}
"""Tracks a call of each transport carries (AudioSocket is mono: the inbound track)."""
FRAMES_PER_S = 50
"""Per track at live pace: one 20 ms frame."""
LAG_METRIC = "callvault_event_loop_lag_seconds"
DURABLE_METRIC = "callvault_ingest_durable_seconds"
FRAMES_METRIC = "callvault_frames_in_total"
ACTIVE_METRIC = "callvault_active_calls"
RTP_PORTS = (12000, 19999)
"""Both contestants' RTP/SRTP port range: 2000 calls' worth (4 ports a call), below Linux's
ephemeral range and apart from bench/rtp.py's (20000-31999), which may run beside this."""
READY_TIMEOUT_S = 60.0
DEFAULTS = {
    "seconds": 20.0,
    "ramp": 2.0,
    "precision": 0.05,
    "max_steps": 10,
    "memory_calls": 1000,
    "memory_seconds": 20.0,
    "memory_ramp": 5.0,
}
"""The run's defaults, and ``--quick``'s (options given on the command line win)."""
QUICK = {
    "seconds": 6.0,
    "ramp": 1.0,
    "precision": 0.1,
    "max_steps": 4,
    "memory_calls": 200,
    "memory_seconds": 8.0,
    "memory_ramp": 2.0,
}
START_RATE = 25.0
"""Call starts per second in a step: a busy PBX's burst (1,000 calls of 3 minutes start
~5.5 a second), not all N calls within two seconds, whose set-up work (two catalog rows,
DEKs and spool files a call) would then be measured as the media path's."""
START = {"twilio": 120, "fork": 150, "audiosocket": 200, "srtp": 300}
"""Where each transport's search starts by default: near what a core took in earlier runs
(bench/README.md), so a search spends its steps near the answer."""


HUGE = "100000"
"""callvault's tenant and connection limits in these runs: none of them is what fails."""


# --- the contestant's process --------------------------------------------------------------


def cores() -> tuple[int, int]:
    """The contestant's core and the load generator's (the same on a 1-core machine)."""
    available = sorted(os.sched_getaffinity(0))
    return available[0], available[1] if len(available) > 1 else available[0]


def rss_kib(pid: int) -> int:
    """``VmRSS`` of ``pid`` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 10.0, method: str = "GET") -> bytes:
    request = urllib.request.Request(url, method=method)  # noqa: S310 - our own loopback
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        return bytes(response.read())


def python_env(**extra: str) -> dict[str, str]:
    """This environment without ``CALLVAULT_`` settings, this tree first on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLVAULT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


@dataclass
class Contestant:
    """A started contestant: its process (pid = the interpreter's: taskset execs it)."""

    kind: str
    core: int
    process: subprocess.Popen[bytes]
    base: str
    token: str | None
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def log_tail(self, chars: int = 2000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def start_contestant(
    kind: str, loop: str, data_dir: Path, core: int, settings: Mapping[str, str] | None = None
) -> Contestant:
    """``callvault serve`` or ``bench/bare.py`` on ``core``, ready. ``settings``: more
    ``CALLVAULT_`` variables for ``serve`` (``--setting``), over this module's."""
    port = free_port()
    log_path = data_dir / f"{kind}.log"
    pin = ["taskset", "-c", str(core)]
    token: str | None = None
    if kind == "callvault":
        token = secrets.token_urlsafe(36)
        command = [*pin, sys.executable, "-m", "gateway.cli", "serve"]
        env = python_env(
            CALLVAULT_DATA_DIR=str(data_dir / "data"),
            CALLVAULT_OPERATOR_TOKEN=token,
            CALLVAULT_HTTP__PORT=str(port),
            CALLVAULT_HTTP__LOOP=loop,
            CALLVAULT_HTTP__MAX_CONNECTIONS=HUGE,
            CALLVAULT_HTTP__MAX_CONNECTIONS_PER_PEER=HUGE,
            CALLVAULT_AUDIOSOCKET__PORT=str(free_port()),
            CALLVAULT_AUDIOSOCKET__MAX_CONNECTIONS=HUGE,
            CALLVAULT_AUDIOSOCKET__MAX_CONNECTIONS_PER_PEER=HUGE,
            CALLVAULT_RTP__PORT_MIN=str(RTP_PORTS[0]),
            CALLVAULT_RTP__PORT_MAX=str(RTP_PORTS[1]),
            # The loadgen announces every call before the streams start: at 1000 calls that
            # can take longer than the 30 s an RTP call may wait for its first packet.
            CALLVAULT_RTP__TIMEOUT="PT10M",
            CALLVAULT_LIMITS__LIVE_CALLS=HUGE,
            CALLVAULT_LIMITS__RTP_CALLS=HUGE,
            CALLVAULT_LIMITS__ANNOUNCES_PER_MINUTE=HUGE,
            # Transcription is not the media path; its worker would share the core.
            CALLVAULT_AI__WORKERS="0",
        )
        env.update(settings or {})
        ready = f"http://127.0.0.1:{port}/readyz"
    else:
        command = [*pin, sys.executable, str(ROOT / "bench" / "bare.py"), "--port", str(port)]
        command += ["--loop", loop, "--rtp-ports", f"{RTP_PORTS[0]}-{RTP_PORTS[1]}"]
        command += ["--audiosocket-port", str(free_port())]
        env = python_env()
        ready = f"http://127.0.0.1:{port}/bare/stats"
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and programs
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    contestant = Contestant(kind, core, process, f"http://127.0.0.1:{port}", token, log_path)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            http_get(ready, timeout=1)
            return contestant
        except OSError:  # refused while starting, or a 503 until ready
            if process.poll() is not None or time.monotonic() > deadline:
                contestant.stop()
                raise RuntimeError(f"{kind} did not start:\n{contestant.log_tail()}") from None
            time.sleep(0.1)  # polling another process's readiness


# --- one step ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """The contestant at one moment (``t``: unix time)."""

    t: float
    cpu_s: float
    rss_kib: int
    metrics: str = ""
    """callvault's ``/metrics`` text (parsed afterwards, for the two window edges only)."""
    stats: Mapping[str, Any] = field(default_factory=dict)
    """The bare receiver's ``/bare/stats``."""
    core_busy_s: float = 0.0
    """The contestant's core's busy time so far, every process's (``/proc/stat``)."""


def take_sample(contestant: Contestant) -> Sample:
    text, stats = "", {}
    if contestant.kind == "callvault":
        text = http_get(f"{contestant.base}/metrics").decode()
    else:
        stats = json.loads(http_get(f"{contestant.base}/bare/stats"))
    pid = contestant.pid
    busy = core_busy_seconds(contestant.core)
    return Sample(time.time(), cpu_seconds(pid), rss_kib(pid), text, stats, busy)


def loadgen_command(
    contestant: Contestant,
    transport: str,
    calls: int,
    seconds: float,
    ramp: float,
    core: int,
    loop: str,
    ptime: int = 20,
) -> list[str]:
    command = ["taskset", "-c", str(core), sys.executable, str(ROOT / "bench" / "loadgen.py")]
    command += ["--base", contestant.base, "--transport", transport, "--calls", str(calls)]
    command += ["--seconds", str(seconds), "--ramp", str(ramp), "--loop", loop, "--json"]
    if ptime != 20:
        command += ["--ptime", str(ptime)]
    if contestant.kind == "bare":
        command.append("--bare")
    else:
        assert contestant.token is not None  # noqa: S101 - callvault always has one
        command.append(f"--setup-token={contestant.token}")  # a token may begin with "-"
    return command


def last_json_line(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                return None
            return value if isinstance(value, dict) else None
    return None


@dataclass(frozen=True)
class StepOptions:
    loop: str = "uvloop"
    seconds: float = 20.0
    ramp: float = 2.0
    loadgen_loop: str = "uvloop"
    cores: tuple[int, int] = (0, 1)
    start_rate: float = 0.0
    """Calls started per second at most (0: all N within ``ramp``): a step of N calls ramps
    over ``max(ramp, N / start_rate)`` and each call lasts that ramp longer, so the window
    when all N are live stays ``seconds`` long however large N grows."""
    settings: Mapping[str, str] = field(default_factory=dict)
    """``CALLVAULT_`` variables for ``callvault serve`` (``--setting``)."""
    ptime: int = 20
    """Milliseconds of audio per RTP/SRTP datagram (the loadgen's ``--ptime``)."""

    def spread(self, calls: int) -> tuple[float, float]:
        """The ramp and the call length of a step of ``calls`` calls."""
        ramp = max(self.ramp, calls / self.start_rate) if self.start_rate > 0 else self.ramp
        if self.start_rate <= 0:
            return ramp, self.seconds
        return ramp, self.seconds + ramp

    @property
    def sample_s(self) -> float:
        """How often the contestant is sampled: about ten times in a call."""
        return min(max(self.seconds / 10, 0.25), 1.0)


def run_step(options: StepOptions, kind: str, transport: str, calls: int) -> dict[str, Any]:
    """``calls`` calls of ``transport`` against a fresh contestant ``kind``: its record."""
    with tempfile.TemporaryDirectory(prefix=f"callvault-capacity-{kind}-") as tmp:
        try:
            contestant = start_contestant(
                kind, options.loop, Path(tmp), options.cores[0], options.settings
            )
        except RuntimeError as e:  # not a verdict on its capacity, but no pass either
            why = [str(e).splitlines()[0], *str(e).splitlines()[-3:]]
            return {"contestant": kind, "transport": transport, "calls": calls,
                    "verdict": "error", "why": why}  # fmt: skip
        try:
            return _measure(options, contestant, transport, calls, Path(tmp))
        finally:
            contestant.stop()


def _measure(
    options: StepOptions, contestant: Contestant, transport: str, calls: int, tmp: Path
) -> dict[str, Any]:
    time.sleep(0.5)  # let the fresh process settle before its idle RSS is taken
    idle = take_sample(contestant)
    out_path, err_path = tmp / "loadgen.out", tmp / "loadgen.err"
    ramp, seconds = options.spread(calls)
    command = loadgen_command(
        contestant,
        transport,
        calls,
        seconds,
        ramp,
        options.cores[1],
        options.loadgen_loop,
        options.ptime,
    )
    samples: list[Sample] = []
    with out_path.open("wb") as out, err_path.open("wb") as err:
        loadgen = subprocess.Popen(command, cwd=ROOT, env=python_env(), stdout=out, stderr=err)  # noqa: S603
        next_at = time.monotonic()
        while loadgen.poll() is None:
            next_at += options.sample_s
            try:
                samples.append(take_sample(contestant))
            except (OSError, ValueError):  # a scrape that timed out under load: skip it
                pass
            time.sleep(max(next_at - time.monotonic(), 0.0))
    report = last_json_line(out_path.read_text(errors="replace"))
    if report is None:
        tail = err_path.read_text(errors="replace")[-1500:]
        tail = " ".join(tail.split())[-300:]
        report = {"error": f"loadgen exit {loadgen.returncode} without a JSON line: {tail}"}
    steady = steady_window(samples, report)
    lags = None
    if contestant.kind == "bare" and steady is not None:
        lags = bare_window_lag(contestant, *steady)
    peak = max(samples, key=lambda s: s.rss_kib, default=None)
    most_live = max((round(sample_total(s.metrics, ACTIVE_METRIC)) for s in samples), default=0)
    record = record_step(
        contestant.kind, transport, calls, report, idle, steady, lags, loadgen.returncode,
        peak, most_live or None,
    )  # fmt: skip
    return {**record, "ramp_s": round(ramp, 2), "call_s": round(seconds, 2)}


def bare_window_lag(contestant: Contestant, first: Sample, last: Sample) -> Mapping[str, Any]:
    """The bare receiver's loop lag over the probe samples it took between two of ours
    (``/bare/stats?lag_from=&lag_to=``; a receiver without that answers its lag since its
    start, with no ``loop_lag_window`` in it)."""
    lag_from = int(first.stats.get("loop_lag_samples", 0))
    lag_to = int(last.stats.get("loop_lag_samples", 0))
    query = f"lag_from={lag_from}&lag_to={lag_to}"
    try:
        return dict(json.loads(http_get(f"{contestant.base}/bare/stats?{query}")))
    except (OSError, ValueError):
        return {}


def steady_window(
    samples: Sequence[Sample], report: Mapping[str, Any]
) -> tuple[Sample, Sample] | None:
    """The first and last samples inside the load generator's steady window (None: it
    reported none, or fewer than two samples fell inside it)."""
    if report.get("steady_from") is None or report.get("steady_until") is None:
        return None
    start, end = float(report["steady_from"]), float(report["steady_until"])
    inside = [s for s in samples if start <= s.t <= end]
    return (inside[0], inside[-1]) if len(inside) >= 2 else None


def record_step(
    kind: str,
    transport: str,
    calls: int,
    report: Mapping[str, Any],
    idle: Sample,
    steady: tuple[Sample, Sample] | None,
    bare_lags: Mapping[str, Any] | None,
    returncode: int | None,
    peak: Sample | None = None,
    most_live: int | None = None,
) -> dict[str, Any]:
    """A step's record from the load generator's report, the contestant's sample at idle
    and the two at the ends of the steady window, and (bare) its lag over the window."""
    callvault = kind == "callvault"
    record: dict[str, Any] = {
        "contestant": kind,
        "transport": transport,
        "calls": calls,
        "loadgen_exit": returncode,
        "frames_sent": report.get("frames_sent"),
        "frames_lost": report.get("frames_lost"),
        "calls_failed": report.get("calls_failed"),
        "failures": list(report.get("failures") or [])[:3],
        "send_lag_ms_p99": report.get("send_lag_ms_p99"),
        "send_lag_ms_p99_steady": report.get("send_lag_ms_p99_steady"),
        "loadgen_others_on_core": report.get("others_on_core_share"),
        "rss_idle_kib": idle.rss_kib,
        "rss_peak_kib": None if peak is None else peak.rss_kib,
    }
    lag = durable = None
    if steady is not None:
        first, last = steady
        wall = last.t - first.t
        cpu = last.cpu_s - first.cpu_s
        share = cpu / wall
        other = max((last.core_busy_s - first.core_busy_s) / wall - share, 0.0)
        frames = calls * TRACKS[transport] * FRAMES_PER_S * wall
        record.update(
            window_s=round(wall, 2),
            core_share=round(share, 3),
            other_on_core=round(other, 3),
            calls_per_core=round(calls / share) if share > 0 else None,
            us_per_frame=round(cpu / frames * 1e6, 2),
            rss_steady_kib=last.rss_kib,
            rss_per_call_kib=round((last.rss_kib - idle.rss_kib) / calls, 1),
            rss_scope="steady",
        )
        if callvault:
            edges = [parse_histograms(s.metrics, (LAG_METRIC, DURABLE_METRIC)) for s in steady]
            lag = bucket_delta(edges[0].get(LAG_METRIC, ()), edges[1].get(LAG_METRIC, ()))
            durable = bucket_delta(
                edges[0].get(DURABLE_METRIC, ()), edges[1].get(DURABLE_METRIC, ())
            )
            counted = sample_total(last.metrics, FRAMES_METRIC)
            counted -= sample_total(first.metrics, FRAMES_METRIC)
            # callvault_frames_in_total counts RTP datagrams: at --ptime 100 a fifth of
            # the 20 ms frames (us_per_frame counts frames, from the calls live).
            record["frames_counted"] = round(counted)
        else:
            record["frames_counted"] = last.stats.get("frames", 0) - first.stats.get("frames", 0)
    lag_p99 = durable_p99 = None
    if callvault:
        lag_p99, durable_p99 = quantile(lag or (), 0.99), quantile(durable or (), 0.99)
        record["lag_ms_p50"] = ms(quantile(lag or (), 0.5))
        record["durable_ms_p50"] = ms(quantile(durable or (), 0.5))
        record["durable_ms_p99"] = ms(durable_p99)
    elif bare_lags:
        # Its own percentiles over the probe samples it took in the window; where bare.py
        # cannot slice them, over every sample since its start (announcements and ramp too).
        window = bare_lags.get("loop_lag_window")
        if window:
            p50, p99 = window.get("p50_ms"), window.get("p99_ms")
        else:
            p50, p99 = None, bare_lags.get("loop_lag_ms_p99")
        lag_p99 = None if p99 is None else p99 / 1e3
        record["lag_ms_p50"] = p50
        record["lag_scope"] = "window" if window else "since start"
    record["lag_ms_p99"] = ms(lag_p99)
    verdict, why = judge(report, lag_p99, durable_p99, callvault=callvault)
    if steady is None:
        verdict, why = ("fail" if verdict == "pass" else verdict), [*why, "no steady window"]
    record["verdict"], record["why"] = verdict, why
    if steady is None:
        # No window with all N live: the peak RSS is reported, but no RSS per live call.
        # callvault's gauge counts calls from their announcement (all N, before any stream),
        # so dividing by it would credit the memory of fewer live calls to N.
        record["most_calls_live"] = most_live
        record["rss_scope"] = "none: no steady window, so no figure per live call"
    return record


# --- the run -------------------------------------------------------------------------------

Step = Callable[[str, str, int], dict[str, Any]]
"""``(contestant, transport, calls) -> record``: ``run_step`` with its options bound."""


def search_transport(
    step: Step,
    transport: str,
    contestants: Sequence[str],
    start: int,
    growth: float,
    precision: float,
    most: int,
    max_steps: int,
) -> dict[str, Any]:
    """Each contestant's search over ``transport``, a step of each in turn (order flipping)."""
    searches = {c: Search(start, growth, precision, most) for c in contestants}
    records: dict[str, list[dict[str, Any]]] = {c: [] for c in contestants}
    turn = 0
    while True:
        order = list(contestants) if turn % 2 == 0 else list(contestants)[::-1]
        ran = False
        for contestant in order:
            search = searches[contestant]
            calls = search.next()
            if calls is None or len(search.history) >= max_steps:
                continue
            record = step(contestant, transport, calls)
            search.record(calls, record["verdict"])
            records[contestant].append(record)
            print_step(record)
            ran = True
        turn += 1
        if not ran:
            break
    out: dict[str, Any] = {"transport": transport}
    for contestant, search in searches.items():
        result = search.result()
        at_best = [
            r
            for r in records[contestant]
            if r["calls"] == result["max_calls"] and r["verdict"] == "pass"
        ]
        for key in ("core_share", "calls_per_core", "us_per_frame", "rss_per_call_kib"):
            values = [r[key] for r in at_best if r.get(key) is not None]
            result[key] = round(statistics.median(values), 3) if values else None
        result["steps"] = records[contestant]
        out[contestant] = result
    cv, bare = out.get("callvault", {}), out.get("bare", {})
    if cv.get("max_calls") and bare.get("max_calls"):
        # The goal's figure: calls that passed, against calls that passed.
        out["ratio"] = round(cv["max_calls"] / bare["max_calls"], 3)
    if cv.get("calls_per_core") and bare.get("calls_per_core"):
        # N / core share: a projection, equal to the calls a core takes only where the
        # contestant's own CPU was what stopped it.
        out["ratio_per_core"] = round(cv["calls_per_core"] / bare["calls_per_core"], 3)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    contestant_core, loadgen_core = cores()
    os.sched_setaffinity(0, {loadgen_core})
    options = StepOptions(
        args.loop,
        args.seconds,
        args.ramp,
        args.loadgen_loop,
        (contestant_core, loadgen_core),
        start_rate=args.start_rate,
        settings=args.setting,
    )

    def step(kind: str, transport: str, calls: int) -> dict[str, Any]:
        return run_step(options, kind, transport, calls)

    report: dict[str, Any] = {
        "bench": "capacity",
        "loop": args.loop,
        "seconds": args.seconds,
        "ramp": args.ramp,
        "start_rate": args.start_rate,
        "settings": args.setting,
        "start": args.start,
        "growth": args.growth,
        "precision": args.precision,
        "cores": [contestant_core, loadgen_core],
        "transports": [
            search_transport(
                step,
                t,
                args.contestants,
                args.start[t],
                args.growth,
                args.precision,
                args.most,
                args.max_steps,
            )
            for t in args.transports
        ],
    }
    if args.memory_calls:
        memory_options = replace(
            options,
            seconds=args.memory_seconds,
            ramp=args.memory_ramp,
            ptime=args.memory_ptime if args.memory_transport == "srtp" else 20,
        )
        record = run_step(memory_options, "callvault", args.memory_transport, args.memory_calls)
        print_step(record)
        report["memory"] = {
            **record,
            "seconds": args.memory_seconds,
            "ptime_ms": memory_options.ptime,
        }
    return report


def setting(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` of ``--setting``: ``(CALLVAULT_NAME, VALUE)``."""
    name, sep, value = text.partition("=")
    name = name.strip().upper().removeprefix("CALLVAULT_")
    if not sep or not name or not all(c.isalnum() or c == "_" for c in name):
        raise argparse.ArgumentTypeError("NAME=VALUE, e.g. RTP__READ_INTERVAL=PT0S")
    return "CALLVAULT_" + name, value


def names(choices: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        chosen = [part.strip() for part in text.split(",") if part.strip()]
        unknown = [c for c in chosen if c not in choices]
        if unknown or not chosen:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}")
        return chosen

    return parse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transports", type=names(TRANSPORTS), default=list(TRANSPORTS))
    parser.add_argument("--contestants", type=names(CONTESTANTS), default=list(CONTESTANTS))
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="both contestants' event loop",
    )
    parser.add_argument("--loadgen-loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument(
        "--start",
        type=starts,
        default=starts(""),
        help="calls of the first step: N for every transport, or transport=N,... "
        f"(the rest as by default: {', '.join(f'{t}={n}' for t, n in START.items())})",
    )
    parser.add_argument("--growth", type=float, default=1.5, help="factor between steps")
    parser.add_argument("--precision", type=float, help="bisect to this fraction (0.05)")
    parser.add_argument("--most", type=int, default=1900, help="the search stops here")
    parser.add_argument("--max-steps", type=int, help="steps per search at most (10)")
    parser.add_argument("--seconds", type=float, help="length of each call (20)")
    parser.add_argument("--ramp", type=float, help="calls' starts spread over (2) at least")
    parser.add_argument(
        "--start-rate",
        type=float,
        default=START_RATE,
        help=f"calls started per second at most ({START_RATE:g}): N calls ramp over "
        "max(--ramp, N / rate) s and last that much longer than --seconds, which is then the "
        "steady window's length; 0: all within --ramp, calls of --seconds",
    )
    parser.add_argument("--memory-calls", type=int, help="calls of the memory step (1000; 0: none)")
    parser.add_argument("--memory-transport", choices=TRANSPORTS, default="srtp")
    parser.add_argument("--memory-seconds", type=float, help="(20)")
    parser.add_argument("--memory-ramp", type=float, help="(5)")
    parser.add_argument(
        "--memory-ptime",
        type=int,
        default=100,
        help="ms of audio per SRTP datagram in the memory step (100): the same audio, "
        "buffers and objects per call as at 20 ms, in a fifth of the datagrams, so that "
        "one core keeps 1,000 calls live",
    )
    parser.add_argument(
        "--setting",
        type=setting,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a callvault setting for serve, repeatable: RTP__READ_INTERVAL=PT0S for "
        "CALLVAULT_RTP__READ_INTERVAL",
    )
    parser.add_argument("--plot", type=Path, default=ROOT / "bench" / "capacity.png")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 6 s calls, 10 %% precision, 4 steps a search, 200 memory calls",
    )
    args = parser.parse_args()
    if not 20 <= args.memory_ptime <= 200 or args.memory_ptime % 20:
        parser.error("--memory-ptime: 20 to 200 ms, a multiple of 20 (the loadgen's --ptime)")
    args.setting = dict(args.setting)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    started = time.perf_counter()
    report = run(args)
    report["wall_s"] = round(time.perf_counter() - started)
    print(
        f"# contestant pinned to core {report['cores'][0]}, loadgen and this program to core "
        f"{report['cores'][1]}; {args.loop} loop; {args.seconds} s with all calls live, starts "
        f"over max({args.ramp} s, N / {args.start_rate:g} per s); pass: zero loss, loop lag p99 "
        f"< {LAG_LIMIT_S * 1e3:.0f} ms, "
        f"ingest-to-durable p99 < {DURABLE_LIMIT_S * 1e3:.0f} ms (callvault), loadgen send "
        f"lag p99 <= {SEND_LAG_LIMIT_MS:.0f} ms; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}; {report['wall_s']} s"
        + "".join(f"; {name}={value}" for name, value in args.setting.items())
    )
    print_report(report)
    title = (
        f"callvault vs bare receiver, {args.loop}, one core, {args.seconds:g} s calls "
        "(o pass, x fail, ^ loadgen-bound)"
    )
    plot(report["transports"], args.plot, title)
    report["plot"] = str(args.plot)
    print(json.dumps(report, default=str))


def starts(text: str) -> dict[str, int]:
    """``--start``: ``N`` (every transport) or ``twilio=N,srtp=M`` (the rest by default)."""
    if text.strip().isdigit():
        return dict.fromkeys(TRANSPORTS, int(text))
    found = dict(START)
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        if name not in TRANSPORTS or not value.isdigit() or int(value) < 1:
            raise argparse.ArgumentTypeError(f"--start: {item!r} is not transport=N")
        found[name] = int(value)
    return found


if __name__ == "__main__":
    main()

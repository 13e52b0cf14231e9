"""The AI workers of ``serve``, run as child processes that ``serve`` supervises.

A worker decodes whole tracks and runs a model: a call too long for the box, or a model
too big for it, can run the process out of memory. In ``serve``'s own process that would
take ingest down for every tenant, and the retried job would do it again. So each of
``settings.ai.workers`` workers is a child process (``python -m gateway.workers``), and a
worker that dies takes only itself down:

- the child builds its worker from ``serve``'s own ``Settings`` (the environment and the
  flags, merged and validated once in ``serve``), sent as JSON on its stdin: secrets
  included, never on its command line, which ``ps`` shows to every user;
- the child asks the kernel to kill it first when memory runs out (``oom_score_adj``
  1000) and when ``serve`` dies, however it dies (``PR_SET_PDEATHSIG`` on Linux; on any OS
  it also stops when its stdin, ``serve``'s end of the pipe, closes): no orphan workers;
- a child that exits or is killed is logged with how it ended, counted in
  ``callvault_ai_worker_restarts_total`` and started again after a backoff that doubles
  (1 s to 60 s) while children keep dying young. The job it held comes back when its lease
  ends; a job that kills every worker that takes it fails after its last attempt with a
  reason (``ai.worker``), so a poisonous call cannot crash workers forever;
- on shutdown each child gets SIGTERM (it hands its job back, uncounted) and SIGKILL after
  the grace period.

Metrics: each child writes its ``callvault_ai_*`` metrics to files in a directory of the
data dir (prometheus_client's multiprocess mode, enabled in the child alone), and ``serve``'s
``/metrics`` adds up every child's files, those of children that died included, so the
counters never go back (``ChildMetrics``). A dead child's files are folded into one archive
file per metric type and removed, so that a restart storm leaves a bounded number of files
for each scrape to read. The webhook sender stays in ``serve``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector
from pydantic import BaseModel, SecretStr

from gateway.settings import Settings

log = logging.getLogger("gateway.workers")  # also when run as __main__ (the child)

RESTART_BACKOFF_S = 1.0
"""Wait before starting a dead child again; doubles while children keep dying young."""
RESTART_BACKOFF_MAX_S = 60.0
HEALTHY_S = 60.0
"""A child that lived this long died of something new: its successor waits the least."""
STOP_GRACE_S = 10.0
"""How long a child may take to hand its job back after SIGTERM before it is killed."""
KILL_WAIT_S = 5.0
"""How long serve waits for a SIGKILLed child to be reaped before it stops without it."""
OOM_SCORE_ADJ = 1000
"""The kernel's OOM killer picks the process with the highest score: a worker, not serve."""
METRICS_PREFIX = "callvault_ai_"
PR_SET_PDEATHSIG = 1


class WorkerSupervisor:
    """Starts ``settings.ai.workers`` worker children, starts again any that dies, stops them."""

    def __init__(
        self,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        grace_s: float = STOP_GRACE_S,
    ) -> None:
        self._settings = settings
        self._payload = settings_payload(settings)
        self._grace_s = grace_s
        self.metrics_dir = (settings.data_dir / "ai-metrics").resolve()
        self._children: dict[int, asyncio.subprocess.Process] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.restarts = Counter(
            "callvault_ai_worker_restarts",
            "AI worker processes started again after one ended, by how it ended (a signal's "
            "name, e.g. SIGKILL from the OOM killer, or exit).",
            ["how"],
            registry=registry,
        )
        self.running = Gauge(
            "callvault_ai_worker_processes",
            "AI worker child processes of this serve that are running.",
            registry=registry,
        )
        self.running.set_function(lambda: len(self.pids()))
        self.child_metrics = ChildMetrics(self.metrics_dir)
        if registry is not None:
            registry.register(self.child_metrics)

    def pids(self) -> list[int]:
        """The process ids of the children running now."""
        return [p.pid for p in self._children.values() if p.returncode is None]

    async def start(self) -> None:
        """Start every child (serve does not wait for them to load their models)."""
        self.metrics_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.metrics_dir.glob("*.db"):  # counters of a previous serve
            stale.unlink()
        for slot in range(1, self._settings.ai.workers + 1):
            try:
                first: asyncio.subprocess.Process | None = await self._spawn(slot)
            except OSError as e:
                log.error("AI worker %d did not start: %s", slot, e)
                first = None
            self._tasks.append(
                asyncio.create_task(self._keep(slot, first), name=f"callvault-ai-{slot}")
            )

    async def stop(self) -> None:
        """SIGTERM every child, SIGKILL those still running after the grace period."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        live = [p for p in self._children.values() if p.returncode is None]
        for process in live:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in live)), timeout=self._grace_s)
        except TimeoutError:
            for process in live:
                if process.returncode is None:
                    log.warning(
                        "AI worker (pid %d) still running %.0f s after SIGTERM: killed",
                        process.pid,
                        self._grace_s,
                    )
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
            try:
                await asyncio.wait_for(
                    asyncio.gather(*(p.wait() for p in live)), timeout=KILL_WAIT_S
                )
            except TimeoutError:  # stuck in the kernel (D state): serve stops anyway
                log.error(
                    "AI worker(s) %s not gone %.0f s after SIGKILL",
                    [p.pid for p in live if p.returncode is None],
                    KILL_WAIT_S,
                )
        for process in self._children.values():
            _close_stdin(process)

    async def _keep(self, slot: int, process: asyncio.subprocess.Process | None) -> None:
        """Wait for child ``slot`` to end and start it again, until cancelled."""
        backoff = RESTART_BACKOFF_S
        started = time.monotonic()
        while True:
            if process is not None:
                code = await process.wait()
                _close_stdin(process)
                try:
                    await asyncio.to_thread(self.child_metrics.archive, process.pid)
                except OSError as e:
                    log.error("AI worker %d's metrics not archived: %s", slot, e)
                how = _how(code)
                self.restarts.labels(how).inc()
                if time.monotonic() - started >= HEALTHY_S:
                    backoff = RESTART_BACKOFF_S
                log.error(
                    "AI worker %d (pid %d) ended (%s%s); starting another in %.0f s",
                    slot,
                    process.pid,
                    how if how != "exit" else f"exit status {code}",
                    ": perhaps the kernel's OOM killer" if how == "SIGKILL" else "",
                    backoff,
                    extra={"worker_pid": process.pid, "how": how},
                )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RESTART_BACKOFF_MAX_S)
            started = time.monotonic()
            try:
                process = await self._spawn(slot)
            except OSError as e:
                log.error("AI worker %d did not start: %s", slot, e)
                process = None

    async def _spawn(self, slot: int) -> asyncio.subprocess.Process:
        env = {
            **os.environ,
            "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
            # The child imports what serve imported, from where serve found it (-P: not
            # from whatever directory serve was started in).
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-P",
            "-m",
            "gateway.workers",
            f"--slot={slot}",
            f"--parent={os.getpid()}",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,  # it logs to stderr, serve's
            env=env,
            # Not in serve's process group: a Ctrl-C at serve's terminal reaches serve
            # alone, which stops its children itself (SIGTERM, then SIGKILL).
            start_new_session=True,
        )
        self._children[slot] = process
        assert process.stdin is not None  # noqa: S101 - stdin=PIPE
        process.stdin.write(self._payload + b"\n")
        with contextlib.suppress(ConnectionError):  # it died at once: _keep sees it exit
            await process.stdin.drain()
        log.info("AI worker %d started (pid %d)", slot, process.pid)
        return process


class ChildMetrics:
    """A collector of the ``callvault_ai_*`` metrics the worker children wrote to their
    files in ``path`` (counters and histograms summed over every child, living or dead).
    Other metrics a child made (its store's, unexposed) are left out: ``serve`` has its own."""

    ARCHIVED = ("counter", "histogram", "summary")
    """The metric types whose values outlive a child (its gauges die with it)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        # A scrape never reads a dead child's values both in its files and in the archive.
        self._lock = threading.Lock()

    def describe(self) -> list[Metric]:
        return []  # names unknown until the children have written them

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            files = [str(p) for p in self._path.glob("*.db")]
            metrics = MultiProcessCollector.merge(files, accumulate=True)
        for metric in metrics:
            if metric.name.startswith(METRICS_PREFIX):
                yield metric

    def archive(self, pid: int) -> None:
        """Fold the files of dead child ``pid`` into ``<type>_archive.db`` (its
        ``callvault_ai_*`` counters, histograms and summaries, added up) and remove them
        (blocking file I/O). Each file's values move at once or not at all: a failure part
        way (a full disk) leaves the archive as it was and the child's file counted where
        it is, never both."""
        with self._lock:
            for path in sorted(self._path.glob(f"*_{pid}.db")):
                kind = path.name.split("_", 1)[0]
                if kind in self.ARCHIVED:
                    self._fold(kind, path)
                else:
                    path.unlink()

    def _fold(self, kind: str, path: Path) -> None:
        """The archive with ``path``'s values added is written beside it (a name a scrape
        does not read), synced, and swapped in as ``path`` is moved out of the scrape's
        sight; only then is the moved file removed. (Were serve killed between the two
        renames, that child's values would be lost, not counted twice.)"""
        archive = self._path / f"{kind}_archive.db"
        staged = self._path / f"{kind}_archive.db.new"
        moved = path.with_name(f"{path.name}.archived")
        try:
            staged.unlink(missing_ok=True)  # left by a serve killed here: not a base
            new = MmapedDict(str(staged))
            try:
                if archive.exists():
                    for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(
                        str(archive)
                    ):
                        new.write_value(key, value, timestamp)
                for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(str(path)):
                    if orjson.loads(key)[0].startswith(METRICS_PREFIX):
                        new.write_value(key, new.read_value(key)[0] + value, timestamp)
            finally:
                new.close()
            with staged.open("rb") as written:
                os.fsync(written.fileno())
            path.rename(moved)
            try:
                os.replace(staged, archive)
            except OSError:
                moved.rename(path)
                raise
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        moved.unlink()


def settings_payload(settings: Settings) -> bytes:
    """``settings`` as JSON, secrets in clear: for a child's stdin, never for argv or a log."""
    return orjson.dumps(_reveal(settings.model_dump(mode="json"), settings))


def settings_from_payload(payload: bytes) -> Settings:
    """The ``Settings`` that ``settings_payload`` sent, as they were (not merged again
    with this process's environment: serve's are the settings)."""
    return Settings.model_validate(orjson.loads(payload))


def _reveal(dumped: Any, value: Any) -> Any:
    """``dumped`` (a JSON dump, secrets masked) with the secrets of ``value`` put back."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, BaseModel):
        return {name: _reveal(dumped[name], getattr(value, name)) for name in dumped}
    return dumped


def _how(returncode: int) -> str:
    """``SIGKILL`` for a child a signal ended, ``exit`` for one that exited."""
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return "exit"


def _close_stdin(process: asyncio.subprocess.Process) -> None:
    if process.stdin is not None and not process.stdin.is_closing():
        process.stdin.close()


# --- the child -------------------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    """Be killed when serve dies (Linux); exit now if it is already gone."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # serve died before prctl took effect
        os._exit(0)


def _prefer_oom_kill() -> None:
    """Ask the kernel's OOM killer to pick this worker before serve (best effort)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/oom_score_adj").write_text(str(OOM_SCORE_ADJ))


async def _run_child(settings: Settings, slot: int, grace_s: float) -> None:
    """One worker until SIGTERM/SIGINT or until serve's end of stdin closes: the job in
    hand is handed back (not counted as an attempt)."""
    from ai.worker import WorkerMetrics
    from gateway.services import build_worker, open_services

    loop = asyncio.get_running_loop()
    async with open_services(settings) as services:
        worker = build_worker(
            settings, services, now=lambda: datetime.now(UTC), metrics=WorkerMetrics(None)
        )

        async def work() -> None:
            name = await worker.load()
            log.info("AI worker %d (pid %d) ready with model %s", slot, os.getpid(), name)
            await worker.run()

        task = asyncio.create_task(work(), name="callvault-ai")

        def orphaned() -> None:
            if os.read(sys.stdin.fileno(), 4096):
                return
            loop.remove_reader(sys.stdin.fileno())
            log.warning("AI worker %d: serve is gone; stopping", slot)
            task.cancel()
            loop.call_later(grace_s, os._exit, 1)  # an inference thread that will not stop

        loop.add_reader(sys.stdin.fileno(), orphaned)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception as e:  # the model did not load (serve checked it: rare)
            log.error("AI worker %d stopped: %s", slot, getattr(e, "message", e))
            raise SystemExit(1) from None
        finally:
            await worker.close()


def child_main(argv: Sequence[str] | None = None) -> int:
    """The child's entry point: ``python -m gateway.workers --slot N --parent PID``, the
    settings on stdin."""
    from gateway.logs import configure_logging

    parser = argparse.ArgumentParser(prog="python -m gateway.workers")
    parser.add_argument("--slot", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    _prefer_oom_kill()
    configure_logging(json_lines=True)
    payload = sys.stdin.buffer.readline()
    if not payload:
        return 0  # serve went away before sending the settings
    settings = settings_from_payload(payload)
    asyncio.run(_run_child(settings, args.slot, STOP_GRACE_S))
    return 0


if __name__ == "__main__":
    sys.exit(child_main())

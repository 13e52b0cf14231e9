"""``serve``'s AI workers are child processes: a worker the OOM killer takes leaves ingest
recording, and a killed ``serve`` leaves no worker behind.

A real ``callvault serve`` (``CALLVAULT_AI__WORKERS=1``, the packaged tiny.en model) and
real signals: the worker child is SIGKILLed, as the kernel's OOM killer does, while a
paced Twilio call is recording and while the worker holds a job. The call is exported
whole, a new child (another pid) takes the job up when its lease ends and analyses it.
Then ``serve`` itself is SIGKILLed and its child must exit within seconds. ``serve`` is
started with ``--data-dir`` (a flag, not the environment): its child finds the job in that
data dir. (That ``serve`` stops its children on SIGTERM is checked by ``stop_serve``
of tests/functional/test_cli.py.)
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from tests.ai import sample_call
from tests.gateway import (
    ULAW,
    Process,
    Server,
    alive,
    bearer,
    callvault_env,
    free_port,
    metric_value,
    read_wav,
    tone,
    twilio_connected,
    twilio_media,
    twilio_start,
    twilio_stop,
    wait_until_ready,
    worker_children,
)
from tests.leaks import WATCH
from tests.served import announce, push_call, tenant, wait_for_status

pytestmark = pytest.mark.integration

WORKER = {
    "CALLVAULT_AI__WORKERS": "1",
    "CALLVAULT_AI__MODEL": "tiny.en",
    "CALLVAULT_AI__LEASE": "PT3S",
    "CALLVAULT_AI__POLL_INTERVAL": "PT0.1S",
}
TIMEOUT_S = 60.0
PACED_S = 1.0
"""The paced call's audio, sent over and over until the test stops it (after the kill)."""
PACED_MAX_S = 90.0
"""A paced call that nobody stops ends after this (the test then fails: it did not span
the kill)."""
SPEECH_S = 10
"""Seconds of the sample call the analysed call keeps."""
ORPHAN_S = 5.0
"""How soon a worker follows its killed serve."""


async def until(
    check: Callable[[], Any], what: str, log: Callable[[], str], timeout_s: float = TIMEOUT_S
) -> Any:
    """Poll ``check`` (another process's state) until it is truthy; its value."""
    deadline = time.monotonic() + timeout_s
    while not (found := check()):
        assert time.monotonic() < deadline, f"no {what}:\n{log()}"
        await asyncio.sleep(0.05)  # polling another process, not waiting for time to pass
    return found


def proc(pid: int, name: str) -> bytes:
    return Path(f"/proc/{pid}/{name}").read_bytes()


def job_row(data_dir: Path, recording_id: str) -> tuple[str, int, str | None]:
    with sqlite3.connect(data_dir / "catalog.sqlite3", timeout=10) as db:
        row = db.execute(
            "SELECT status, attempts, lease_owner FROM jobs WHERE recording_id = ?",
            (recording_id,),
        ).fetchone()
    return row[0], row[1], row[2]


async def paced_call(
    session: aiohttp.ClientSession,
    pbx: str,
    tenant_id: str,
    audio: bytes,
    started: asyncio.Event,
    stop: asyncio.Event,
) -> tuple[str, bytes]:
    """A Twilio call at real time (20 ms a frame, both tracks) that sends ``audio`` over and
    over until ``stop`` is set (a loaded machine cannot make it end before the test is
    done with it); its recording id and what it sent."""
    announced = await announce(session, tenant_id, pbx)
    async with session.ws_connect("/v1/ingest/twilio", headers=bearer(pbx)) as ws:
        await ws.send_str(twilio_connected())
        await ws.send_str(twilio_start(announced["call_id"]))
        begun = time.monotonic()
        frames = len(audio) // 160
        sent = bytearray()
        index = 0
        while not stop.is_set() and index < PACED_MAX_S * 50:
            frame = audio[(index % frames) * 160 : (index % frames + 1) * 160]
            await ws.send_str(twilio_media("inbound", index * 20, frame, sequence=2 * index + 2))
            await ws.send_str(twilio_media("outbound", index * 20, frame, sequence=2 * index + 3))
            sent += frame
            if index == 25:
                started.set()  # half a second of the call is in
            index += 1
            await asyncio.sleep(max(0.0, begun + index * 0.02 - time.monotonic()))
        await ws.send_str(twilio_stop())
        msg = await ws.receive()
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1000)
    return str(announced["recording_id"]), bytes(sent)


async def exported(session: aiohttp.ClientSession, admin: str, recording_id: str) -> np.ndarray:
    view = await (await session.get(f"/v1/recordings/{recording_id}", headers=bearer(admin))).json()
    assert view["status"] == "recorded", view
    async with session.get(f"/v1/recordings/{recording_id}/audio", headers=bearer(admin)) as r:
        assert r.status == 200, await r.text()
        channels, rate, pcm = read_wav(await r.read())
    assert (channels, rate) == (2, 8000)
    return pcm


async def metrics(session: aiohttp.ClientSession) -> str:
    async with session.get("/metrics") as r:
        return await r.text()


def start(args: list[str], env: dict[str, str], *, cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    """``python -m gateway.cli *args`` in ``cwd``, its output to ``log``."""
    WATCH.watch_file(log)
    with log.open("wb") as out:
        return subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "gateway.cli", *args],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@contextmanager
def serve_with_flag(tmp_path: Path, **settings: str) -> Iterator[Server]:
    """``callvault --data-dir <tmp_path/flagged> serve``, ready: the data dir from the flag
    alone (the environment names another one, and the cwd's default ./var is a third)."""
    port = free_port()
    operator = WATCH.remember_value("token", "an-operator-token-for-the-worker-tests-0123")
    env = callvault_env(
        tmp_path / "not-this-one",
        CALLVAULT_HTTP__PORT=str(port),
        CALLVAULT_AUDIOSOCKET__PORT="0",
        CALLVAULT_OPERATOR_TOKEN=operator,
        **settings,
    )
    data_dir = tmp_path / "flagged"
    log_path = tmp_path / "serve.log"
    process = start(["--data-dir", str(data_dir), "serve"], env, cwd=tmp_path, log=log_path)
    running = Process(process, log_path)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_ready(base, process, running.log, timeout_s=TIMEOUT_S)
        yield Server(base, operator, data_dir, running, port=port)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


async def test_a_worker_killed_like_the_oom_killer_leaves_ingest_recording(
    tmp_path: Path,
) -> None:
    with serve_with_flag(tmp_path, **WORKER) as server:
        pid = server.process.process.pid
        log = server.process.log
        await until(lambda: "ready with model" in log(), "worker ready", log)
        (first,) = worker_children(pid)
        assert proc(first, "oom_score_adj").strip() == b"1000"  # the OOM killer's first pick
        # Its settings (the operator token among them) came over a pipe, not its argv.
        assert server.operator.encode() not in proc(first, "cmdline")
        async with aiohttp.ClientSession(server.base) as session:
            ai = await tenant(
                session, server, "acme",
                {"recording": {"enabled": True}, "ai": {"transcript": True}},
            )  # fmt: skip
            rec = await tenant(session, server, "beta", {"recording": {"enabled": True}})
            audio = ULAW.encode(tone(PACED_S, 440, seed=7))
            started, stop = asyncio.Event(), asyncio.Event()
            recording = asyncio.create_task(
                paced_call(session, rec["pbx"], "beta", audio, started, stop)
            )
            await started.wait()

            call = sample_call("support")
            speech = slice(0, 8000 * SPEECH_S)  # a short job: it only has to be held
            analysed = await push_call(
                session, "acme", ai["pbx"], call.inbound[speech], call.outbound[speech]
            )
            # The child found the job in the flag's data dir, and holds it.
            status, attempts, owner = await until(
                lambda: (row := job_row(server.data_dir, analysed))[0] == "running" and row,
                "job taken",
                log,
            )
            assert (attempts, owner.split(":")[1]) == (1, str(first))
            os.kill(first, signal.SIGKILL)  # mid-job, mid-call
            await until(lambda: not alive(first), "killed worker gone", log)
            assert not recording.done()  # the call spans the kill
            stop.set()

            (second,) = await until(lambda: worker_children(pid), "new worker child", log)
            assert second != first
            recorded, sent = await recording
            pcm = await exported(session, rec["admin"], recorded)
            decoded = ULAW.decode(sent)
            assert len(pcm) == len(decoded)  # every frame, none lost to the kill
            assert np.array_equal(pcm[:, 0], decoded)
            assert np.array_equal(pcm[:, 1], decoded)

            # The job came back when its lease ended; the new child analysed it.
            view = await wait_for_status(session, analysed, ai["processor"], server.process)
            assert view["status"] == "analyzed", view
            assert job_row(server.data_dir, analysed)[:2] == ("done", 2)
            text = await metrics(session)
            assert metric_value(text, "callvault_ai_worker_restarts_total", how="SIGKILL") == 1
            # The children's AI metrics, summed on serve's /metrics.
            assert metric_value(text, "callvault_ai_jobs_total", outcome="analyzed") == 1

        # serve itself killed: its worker child follows it within seconds.
        server.process.process.send_signal(signal.SIGKILL)
        server.process.process.wait(timeout=10)
        await until(lambda: not alive(second), "orphan worker gone", log, timeout_s=ORPHAN_S)
    assert "perhaps the kernel's OOM killer" in log()
    assert not (tmp_path / "var").exists()
    assert not (tmp_path / "not-this-one").exists()

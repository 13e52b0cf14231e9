"""Promise 7 with a real process: ``callvault serve`` killed with SIGKILL in the middle of a
call loses at most the audio of its last flush; after the restart the call is either
continued by the PBX's reconnect or finalized with what was recovered."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from tests.functional.test_cli import start_serve, stop_serve
from tests.gateway import (
    ULAW,
    Gateway,
    bearer,
    read_wav,
    tone,
    twilio_call,
    twilio_start,
    twilio_stop,
)
from tests.leaks import WATCH

OPERATOR = "a-long-operator-token-for-the-crash-tests-0123456789"
FLUSH_BYTES = 1024
NO_CONSENT = {"recording": {"enabled": True}, "consent": {"required": False}}


def server_env(grace: str) -> dict[str, str]:
    return {
        "CALLVAULT_OPERATOR_TOKEN": WATCH.remember_value("token", OPERATOR),
        "CALLVAULT_INGEST__FLUSH_BYTES": str(FLUSH_BYTES),
        "CALLVAULT_INGEST__RECONNECT_GRACE": grace,
    }


async def frames_taken(session: aiohttp.ClientSession, count: int) -> None:
    """Wait until the server has taken ``count`` frames (what it acknowledged)."""
    async with asyncio.timeout(20):
        while True:
            metrics = await (await session.get("/metrics")).text()
            found = re.search(
                r'^callvault_frames_in_total\{transport="twilio"\} (\S+)$', metrics, re.M
            )
            if found and float(found.group(1)) >= count:
                return
            await asyncio.sleep(0.05)


@contextlib.contextmanager
def server_to_kill(data_dir: Path, grace: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``callvault serve`` that the test kills; cleaned up whatever happens."""
    process, base = start_serve(data_dir, **server_env(grace))
    try:
        yield process, base
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        if process.stdout:
            WATCH.watch_output(process.stdout.read(), "serve")
            process.stdout.close()


def kill(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=10) == -signal.SIGKILL


async def stream_and_get_killed(
    data_dir: Path, grace: str, audio: bytes
) -> tuple[dict[str, Any], Any]:
    """Start serve, announce a call, stream ``audio`` (no stop), SIGKILL the server once it
    took every frame; returns the announcement and the tenant's tokens."""
    with server_to_kill(data_dir, grace) as (process, base):
        async with aiohttp.ClientSession(base_url=base) as session:
            gateway = Gateway(client=session, operator=OPERATOR)  # type: ignore[arg-type]
            tenant = await gateway.tenant("acme", NO_CONSENT)
            announced = await gateway.announce(tenant)
            ws = await session.ws_connect("/v1/ingest/twilio", headers=bearer(tenant.pbx))
            await ws.send_str(twilio_start(announced["call_id"]))
            for message in twilio_call(audio):
                await ws.send_str(message)
            await frames_taken(session, len(audio) // 160)
            kill(process)
            await ws.close()
    return announced, tenant


async def finalized(
    session: aiohttp.ClientSession, admin: str, recording_id: str
) -> tuple[np.ndarray, dict[str, Any]]:
    """The recording's WAV samples and metadata, once it is no longer 'recording'."""
    async with asyncio.timeout(20):
        while True:
            response = await session.get(f"/v1/recordings/{recording_id}", headers=bearer(admin))
            meta = await response.json()
            if meta["status"] != "recording":
                break
            await asyncio.sleep(0.1)
    response = await session.get(f"/v1/recordings/{recording_id}/audio", headers=bearer(admin))
    assert response.status == 200, await response.text()
    channels, rate, pcm = read_wav(await response.read())
    assert (channels, rate) == (2, 8000)
    return pcm, dict(meta)


async def test_a_killed_server_loses_at_most_the_last_flush(tmp_path: Path) -> None:
    sent = ULAW.encode(tone(2.0, 440, seed=21))
    announced, tenant = await stream_and_get_killed(tmp_path, "PT1S", sent)

    process, base = start_serve(tmp_path, **server_env("PT1S"))
    try:
        async with aiohttp.ClientSession(base_url=base) as session:
            pcm, meta = await finalized(session, tenant.admin, announced["recording_id"])
    finally:
        stop_serve(process)
    decoded = ULAW.decode(sent)
    kept = len(pcm)
    # At most one flush's worth (plus the frame that crossed it) is lost; what is kept is exact.
    assert len(decoded) - (FLUSH_BYTES + 160) <= kept <= len(decoded)
    assert np.array_equal(pcm[:, 0], decoded[:kept])
    assert meta["status"] == "recorded"
    assert meta["duration_s"] == kept / 8000
    assert not list((tmp_path / "spool").rglob("*.sealed"))  # published and removed


async def test_after_a_restart_the_pbx_reconnects_to_the_same_recording(tmp_path: Path) -> None:
    first = ULAW.encode(tone(1.0, 440, seed=22))
    second = ULAW.encode(tone(1.0, 550, seed=23))
    announced, tenant = await stream_and_get_killed(tmp_path, "PT30S", first)
    # The first part was streamed faster than real time; an outage of 2 s makes the call's
    # wall-clock time (which places the reconnected audio) pass its audio's end for sure.
    await asyncio.sleep(2.0)

    process, base = start_serve(tmp_path, **server_env("PT30S"))
    try:
        async with aiohttp.ClientSession(base_url=base) as session:
            ws = await session.ws_connect("/v1/ingest/twilio", headers=bearer(tenant.pbx))
            await ws.send_str(twilio_start(announced["call_id"]))
            for message in twilio_call(second):
                await ws.send_str(message)
            await ws.send_str(twilio_stop())
            closing = await ws.receive(timeout=20)
            assert (closing.type, ws.close_code) == (aiohttp.WSMsgType.CLOSE, 1000)
            pcm, _meta = await finalized(session, tenant.admin, announced["recording_id"])
    finally:
        stop_serve(process)
    head, tail = ULAW.decode(first), ULAW.decode(second)
    kept = len(head) - (FLUSH_BYTES + 160)
    assert np.array_equal(pcm[:kept, 0], head[:kept])
    # The outage (kill, restart) is silence; the reconnected audio ends the recording.
    assert np.array_equal(pcm[-len(tail) :, 0], tail)
    gap = pcm[len(head) : -len(tail), 0]
    assert len(gap) > 0, f"{len(pcm)} frames: no gap between the two parts"
    assert not gap.any()


async def test_a_pause_survives_a_crash(tmp_path: Path) -> None:
    spoken = ULAW.encode(tone(1.0, 440, seed=24))
    secret = ULAW.encode(tone(1.0, 880, seed=25))  # a card number, read out after the pause
    with server_to_kill(tmp_path, "PT30S") as (process, base):
        async with aiohttp.ClientSession(base_url=base) as session:
            gateway = Gateway(client=session, operator=OPERATOR)  # type: ignore[arg-type]
            tenant = await gateway.tenant("acme", NO_CONSENT)
            announced = await gateway.announce(tenant)
            ws = await session.ws_connect("/v1/ingest/twilio", headers=bearer(tenant.pbx))
            await ws.send_str(twilio_start(announced["call_id"]))
            for message in twilio_call(spoken):
                await ws.send_str(message)
            await frames_taken(session, len(spoken) // 160)
            paused = await session.post(
                f"/v1/calls/{announced['call_id']}/pause", headers=bearer(tenant.pbx)
            )
            assert paused.status == 200
            kill(process)
            await ws.close()

    process, base = start_serve(tmp_path, **server_env("PT30S"))
    try:
        async with aiohttp.ClientSession(base_url=base) as session:
            ws = await session.ws_connect("/v1/ingest/twilio", headers=bearer(tenant.pbx))
            await ws.send_str(twilio_start(announced["call_id"]))
            for message in twilio_call(secret):  # still paused: discarded, never stored
                await ws.send_str(message)
            await ws.send_str(twilio_stop())
            await ws.receive(timeout=20)
            pcm, _meta = await finalized(session, tenant.admin, announced["recording_id"])
    finally:
        stop_serve(process)
    assert not pcm[len(spoken) :, 0].any()
    secret_pcm = ULAW.decode(secret)
    for start in range(0, len(secret_pcm) - 64, 64):
        assert secret_pcm[start : start + 64].tobytes() not in pcm.tobytes()


async def test_after_a_crash_every_call_in_progress_is_ended_after_the_grace(
    tmp_path: Path,
) -> None:
    """Also calls with nothing in the spool (announced, never streamed): none stays
    'recording' forever, so retention and AI start for all of them."""
    with server_to_kill(tmp_path, "PT1S") as (process, base):
        async with aiohttp.ClientSession(base_url=base) as session:
            gateway = Gateway(client=session, operator=OPERATOR)  # type: ignore[arg-type]
            tenant = await gateway.tenant("acme", NO_CONSENT)
            silent = await gateway.announce(tenant)
            kill(process)

    process, base = start_serve(tmp_path, **server_env("PT1S"))
    try:
        async with aiohttp.ClientSession(base_url=base) as session:
            pcm, meta = await finalized(session, tenant.admin, silent["recording_id"])
    finally:
        stop_serve(process)
    assert meta["status"] == "recorded"
    assert meta["ended_at"] is not None
    assert len(pcm) == 0

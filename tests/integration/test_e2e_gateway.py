"""``callvault serve`` end to end, as an operator runs it: one process, real ports, real disk.

The same call (two tracks of distinct tones with noise, 3 s each) is pushed through every
ingest transport a PBX has (Twilio Media Streams, mod_audio_fork, AudioSocket), fetched back
as WAV and compared sample by sample with what was sent. Then every byte the server keeps
(each file of the data dir: SQLite catalog and WAL, keyring, objects, spool; and every object
of the S3 bucket in the S3 variant) is searched for any 64-byte run of the audio as it went
over the wire: encryption at rest means none may be found. A tenant that never instructed
recording shows the other side: its streams are refused before a byte is stored.

This is the one test that exercises the CLI, the settings from the environment, the
AudioSocket listener and a clean SIGTERM together; it runs once on the file store and once on
S3 (SeaweedFS).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import numpy as np
import pytest

from tests.conftest import S3Server
from tests.gateway import (
    RECORD,
    ULAW,
    Gateway,
    TenantTokens,
    audiosocket_frame,
    audiosocket_id,
    audiosocket_uuid,
    bearer,
    frames,
    free_port,
    read_wav,
    tone,
    twilio_call,
    twilio_connected,
    twilio_start,
    twilio_stop,
    wait_until_ready,
)
from tests.leaks import WATCH
from tests.scan import RUN, PlaintextScan

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.timeout(120)

RATE = 8000
SECONDS = 3
SAMPLES = SECONDS * RATE
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
REFUSED = "recording_not_instructed"

# The call every transport carries: caller (inbound, left) and agent (outbound, right).
CALLER = tone(SECONDS, 440, seed=11)
AGENT = tone(SECONDS, 660, amplitude=7000, seed=12)
CALLER_ULAW, AGENT_ULAW = ULAW.encode(CALLER), ULAW.encode(AGENT)
CALLER_L16, AGENT_L16 = CALLER.astype("<i2").tobytes(), AGENT.astype("<i2").tobytes()
# mod_audio_fork stereo: caller and agent interleaved sample by sample.
STEREO_L16 = np.column_stack([CALLER, AGENT]).astype("<i2").tobytes()
# Audio of the refused streams: different tones, so a leak of it is told apart.
REFUSED_ULAW = ULAW.encode(tone(1, 523, seed=21))
REFUSED_L16 = tone(1, 587, seed=22).astype("<i2").tobytes()

FORK_FRAME = 160 * 2 * 2  # 20 ms at 8 kHz: 160 samples x 2 channels x 2 bytes
AUDIOSOCKET_FRAME = 160 * 2  # 20 ms at 8 kHz mono: 160 samples x 2 bytes

SENT: dict[str, bytes] = {
    "twilio inbound (µ-law)": CALLER_ULAW,
    "twilio outbound (µ-law)": AGENT_ULAW,
    "fork stereo (L16)": STEREO_L16,
    # The server splits the fork stereo frames into one L16 track per channel; AudioSocket
    # sends the caller's L16 as is.
    "fork/audiosocket inbound (L16)": CALLER_L16,
    "fork outbound (L16)": AGENT_L16,
    "refused twilio (µ-law)": REFUSED_ULAW,
    "refused audiosocket (L16)": REFUSED_L16,
}


# --- the plaintext scan -------------------------------------------------------------------


SCAN = PlaintextScan(SENT)


def assert_no_plaintext(blobs: Iterable[tuple[str, bytes]]) -> int:
    """Scan each (name, bytes); fail naming the first leak. Returns the bytes scanned."""
    scanned = 0
    for name, data in blobs:
        leak = SCAN.first_leak(data)
        assert leak is None, f"{name} holds sent audio ({leak[1]}) in the clear at byte {leak[0]}"
        scanned += len(data)
    return scanned


def data_dir_files(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` (relative path -> bytes), read now."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with suppress(FileNotFoundError):  # a temporary file the server just removed
                found[path.relative_to(root).as_posix()] = path.read_bytes()
    return found


def test_the_scan_finds_a_run_at_any_offset_and_only_a_whole_run() -> None:
    noise = bytes(np.random.default_rng(5).integers(0, 256, size=500, dtype=np.uint8))
    for offset in (0, 1, 31, 33, 63, 64, 200):
        for skew in (0, 7, 1000):  # where in the sent stream the run starts
            run = STEREO_L16[skew : skew + RUN]
            assert SCAN.first_leak(noise[:offset] + run + noise) == (offset, "fork stereo (L16)")
    # One byte short of a run, or a run with one byte changed, is not a leak.
    assert SCAN.first_leak(noise + CALLER_ULAW[100 : 100 + RUN - 1] + noise) is None
    broken = bytearray(AGENT_L16[300 : 300 + RUN])
    broken[40] ^= 0xFF
    assert SCAN.first_leak(noise + bytes(broken) + noise) is None


# --- the server process -------------------------------------------------------------------


@dataclass
class StoreUnderTest:
    """Where the server keeps objects: its environment, and a way to read every object."""

    name: str
    env: dict[str, str] = field(default_factory=dict)
    s3: S3Client | None = None
    bucket: str = ""

    def objects(self, data_dir: Path) -> dict[str, bytes]:
        """Every stored object, by key (``tenant/objects/id``)."""
        if self.s3 is None:
            root = data_dir / "objects"
            return {
                key: data
                for key, data in data_dir_files(root).items()
                if "/objects/" in key  # not the store's staging area
            }
        found = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            for item in page.get("Contents", []):
                body = self.s3.get_object(Bucket=self.bucket, Key=item["Key"])["Body"]
                found[item["Key"]] = body.read()
        return found


@pytest.fixture(
    params=["file", pytest.param("s3", marks=[pytest.mark.integration, pytest.mark.s3])]
)
def store(request: pytest.FixtureRequest) -> StoreUnderTest:
    if request.param == "file":
        return StoreUnderTest("file")  # the default: <data dir>/objects
    server: S3Server = request.getfixturevalue("seaweedfs")
    bucket: str = request.getfixturevalue("s3_bucket")
    return StoreUnderTest(
        "s3",
        env={
            "CALLVAULT_STORE__URL": f"s3://{bucket}",
            "CALLVAULT_STORE__ENDPOINT_URL": server.endpoint_url,
            "CALLVAULT_STORE__ACCESS_KEY": server.access_key,
            "CALLVAULT_STORE__SECRET_KEY": server.secret_key,
            "CALLVAULT_STORE__REGION": server.region,
        },
        s3=request.getfixturevalue("s3_admin"),
        bucket=bucket,
    )


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    base: str
    audiosocket_port: int
    data_dir: Path
    operator: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def served(tmp_path: Path, store: StoreUnderTest) -> Iterator[Served]:
    """``callvault serve`` on free ports with its own data dir, ready (``/readyz`` 200).
    Its output goes to a file (outside the data dir), so a full pipe can never stall it."""
    http_port, audiosocket_port = free_port(), free_port()
    data_dir = tmp_path / "var"
    operator = WATCH.remember_value("token", secrets.token_urlsafe(36))  # 48 characters
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLVAULT_")}
    env.update(
        CALLVAULT_DATA_DIR=str(data_dir),
        CALLVAULT_HTTP__PORT=str(http_port),
        CALLVAULT_AUDIOSOCKET__PORT=str(audiosocket_port),
        CALLVAULT_OPERATOR_TOKEN=operator,
        CALLVAULT_AI__WORKERS="0",  # no AI here: no model to load
        **store.env,
    )
    log_path = tmp_path / "serve.log"
    WATCH.watch_file(log_path)
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "gateway.cli", "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{http_port}"
    server = Served(process, base, audiosocket_port, data_dir, operator, log_path)
    try:
        wait_until_ready(base, process, server.log, timeout_s=READY_TIMEOUT_S)
        yield server
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=STOP_TIMEOUT_S)


# --- PBX side -----------------------------------------------------------------------------


async def push_twilio(session: aiohttp.ClientSession, pbx: str, call_id: str) -> None:
    async with session.ws_connect("/v1/ingest/twilio", headers=bearer(pbx)) as ws:
        await ws.send_str(twilio_connected())
        await ws.send_str(twilio_start(call_id))
        for message in twilio_call(CALLER_ULAW, AGENT_ULAW):  # 20 ms each, with timestamps
            await ws.send_str(message)
        await ws.send_str(twilio_stop())
        msg = await ws.receive()
        assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 1000, "stop")


async def push_fork(session: aiohttp.ClientSession, pbx: str, call_id: str) -> None:
    async with session.ws_connect("/v1/ingest/fork", params={"token": pbx}) as ws:
        await ws.send_str(json.dumps({"call_id": call_id, "sampleRate": RATE, "mixType": "stereo"}))
        for chunk in frames(STEREO_L16, FORK_FRAME):
            await ws.send_bytes(chunk)
        await ws.send_str(json.dumps({"event": "stop"}))
        msg = await ws.receive()
        assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 1000, "stop")


async def audiosocket_exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` in one write, then read everything the server says until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
        with suppress(ConnectionError):
            await writer.wait_closed()


def audiosocket_stream(audiosocket_id: str, pcm: bytes, *, hangup: bool = True) -> bytes:
    audio = b"".join(audiosocket_frame(0x10, chunk) for chunk in frames(pcm, AUDIOSOCKET_FRAME))
    return audiosocket_uuid(audiosocket_id) + audio + (audiosocket_frame(0x00) if hangup else b"")


async def fetch_wav(session: aiohttp.ClientSession, admin: str, recording_id: str) -> bytes:
    async with session.get(f"/v1/recordings/{recording_id}", headers=bearer(admin)) as response:
        assert response.status == 200, await response.text()
        view = await response.json()
    assert view["status"] == "recorded"
    assert view["duration_s"] == SECONDS
    async with session.get(
        f"/v1/recordings/{recording_id}/audio", headers=bearer(admin)
    ) as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "audio/wav"
        return await response.read()


def assert_stereo(wav: bytes, left: np.ndarray, right: np.ndarray) -> None:
    channels, rate, pcm = read_wav(wav)
    assert (channels, rate) == (2, RATE)
    assert pcm.shape == (SAMPLES, 2)  # lengths exact: nothing lost, nothing padded
    np.testing.assert_array_equal(pcm[:, 0], left)
    np.testing.assert_array_equal(pcm[:, 1], right)


# --- the test -----------------------------------------------------------------------------


async def refuse_streams(
    session: aiohttp.ClientSession, quiet: TenantTokens, audiosocket_port: int
) -> None:
    """A tenant on the all-off defaults: both kinds of stream are refused at their start."""
    # Twilio, never announced: the call is described in start, the token rides along too.
    twilio_id = "CA-e2e-refused"
    async with session.ws_connect("/v1/ingest/twilio") as ws:
        await ws.send_str(twilio_connected())
        facts = {"from": "+40733333333", "to": "+40744444444", "consent": "granted"}
        await ws.send_str(twilio_start(twilio_id, tracks=("inbound",), token=quiet.pbx, **facts))
        for message in twilio_call(REFUSED_ULAW):
            await ws.send_str(message)
        msg = await ws.receive()
        assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 1008, REFUSED)

    # AudioSocket: the announcement is refused and answers no AudioSocket id, so a
    # connection naming the call by its (UUID) call id gets an 0xff `unknown_call`, then EOF.
    audiosocket_call = str(uuid.uuid4())
    async with session.post(
        f"/v1/tenants/{quiet.id}/calls",
        json={
            "call_id": audiosocket_call,
            "from": "+40755555555",
            "to": "+40766666666",
            "consent": "granted",
            "transport": "audiosocket",
        },
        headers=bearer(quiet.pbx),
    ) as response:
        assert response.status == 403
        refusal = await response.json()
        assert refusal["error"] == REFUSED
        assert "ingest" not in refusal
    # A quarter second of audio after the UUID, in one write: the server reads it all
    # before it answers (so its close is a FIN, not a reset over unread data).
    answer = await audiosocket_exchange(
        audiosocket_port, audiosocket_stream(audiosocket_call, REFUSED_L16[:4000], hangup=False)
    )
    assert answer == audiosocket_frame(0xFF, b"unknown_call")

    for call_id in (twilio_id, audiosocket_call):
        async with session.get(
            f"/v1/tenants/{quiet.id}/calls/{call_id}", headers=bearer(quiet.admin)
        ) as response:
            assert response.status == 200, await response.text()
            cdr = await response.json()
        assert cdr["refusal"] == REFUSED
        assert cdr["decision"]["store_recording"] is False
    async with session.get(
        f"/v1/tenants/{quiet.id}/recordings", headers=bearer(quiet.admin)
    ) as response:
        assert (await response.json())["items"] == []


async def test_every_transport_round_trips_exactly_and_nothing_is_plaintext_at_rest(
    served: Served, store: StoreUnderTest
) -> None:
    async with aiohttp.ClientSession(base_url=served.base) as session:
        # tests.gateway.Gateway drives an aiohttp TestClient; a ClientSession with a base
        # URL answers the same calls, so the tenant helpers work against the real process.
        gateway = Gateway(client=session, operator=served.operator)  # type: ignore[arg-type]
        acme = await gateway.tenant("acme", RECORD)
        quiet = await gateway.tenant("quiet")  # default instructions: everything off

        twilio = await gateway.announce(acme, transport="twilio")
        fork = await gateway.announce(acme, transport="fork", codec="l16", sample_rate=RATE)
        audiosocket = await gateway.announce(acme, transport="audiosocket")
        for announced in (twilio, fork, audiosocket):
            assert announced["decision"]["store_recording"] is True
        assert audiosocket["ingest"]["audiosocket"]["address"] == (
            f"127.0.0.1:{served.audiosocket_port}"
        )
        secret_id = audiosocket_id(audiosocket)

        await push_twilio(session, acme.pbx, twilio["call_id"])
        await push_fork(session, acme.pbx, fork["call_id"])
        answer = await audiosocket_exchange(
            served.audiosocket_port, audiosocket_stream(secret_id, CALLER_L16)
        )
        assert answer == b""  # hangup: the server closes without an error frame

        twilio_wav = await fetch_wav(session, acme.admin, twilio["recording_id"])
        assert_stereo(twilio_wav, ULAW.decode(CALLER_ULAW), ULAW.decode(AGENT_ULAW))
        fork_wav = await fetch_wav(session, acme.admin, fork["recording_id"])
        assert_stereo(fork_wav, CALLER, AGENT)
        audiosocket_wav = await fetch_wav(session, acme.admin, audiosocket["recording_id"])
        assert_stereo(audiosocket_wav, CALLER, np.zeros(SAMPLES, np.int16))
        # The scan can fail: the fork export is exactly the stereo bytes that were sent.
        assert SCAN.first_leak(fork_wav) == (44, "fork stereo (L16)")

        await refuse_streams(session, quiet, served.audiosocket_port)

    # At rest, while the server runs (the SQLite WAL holds the latest writes).
    files = data_dir_files(served.data_dir)
    assert {"catalog.sqlite3", "catalog.sqlite3-wal", "keyring.json"} <= files.keys()
    objects = store.objects(served.data_dir)
    # One sealed object per track: Twilio 2, fork 2, AudioSocket 1; none of the refused tenant.
    assert sorted(key.split("/")[0] for key in objects) == ["acme"] * 5
    if store.s3 is not None:
        assert not any(name.startswith("objects/") for name in files)
    scanned = assert_no_plaintext([*files.items(), *objects.items()])
    assert scanned > sum(len(data) for data in SENT.values())

    # SIGTERM: a clean exit, no traceback; the catalog, checkpointed, still holds no audio.
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(timeout=STOP_TIMEOUT_S) == 0, served.log()
    log = served.log()
    assert "Traceback" not in log, log
    # The log is structured (JSON lines) and holds no secret, although the fork stream
    # carried its token in the URL and the refused Twilio stream in its start message.
    assert '"logger": "callvault.access"' in log
    secrets_used = [served.operator, acme.admin, acme.pbx, acme.processor, quiet.pbx]
    for secret in secrets_used:
        assert secret not in log and secret[3:] not in log
    assert secret_id not in log and uuid.UUID(secret_id).hex not in log  # the AudioSocket id
    assert_no_plaintext(data_dir_files(served.data_dir).items())

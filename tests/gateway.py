"""Helpers for tests of the gateway: a turnable clock, an in-process gateway with a tenant
and its tokens, ``callvault serve`` as a ready subprocess, and PBX-side senders for each
ingest protocol (built from the protocols' documented message shapes, not from our parsers,
so they check the parsers too).

In the spirit of aiortc's ``tests/utils.py``: small pair helpers that every tier reuses.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.auth import ensure_operator_token
from gateway.logs import ACCESS, AccessLogger
from gateway.state import SERVICES
from storage.media.codecs import codec
from tests.leaks import WATCH

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
ULAW = codec("pcmu")
ALL_AI = {
    "transcript": True,
    "summary": True,
    "sentiment": True,
    "talk_listen": True,
    "topics": True,
}
RECORD = {"recording": {"enabled": True}, "consent": {"required": True}}


def wait_until_ready(
    base: str,
    process: subprocess.Popen[Any],
    log: Callable[[], str],
    *,
    timeout_s: float,
    context: ssl.SSLContext | None = None,
) -> None:
    """Poll ``callvault serve``'s ``/readyz`` at ``base`` until it answers 200 (over TLS
    verified by ``context`` for an ``https`` base). If the process exits or ``timeout_s``
    passes first, kill it and fail the test with ``log()``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(  # noqa: S310
                f"{base}/readyz", timeout=1, context=context
            ) as response:
                if response.status == 200:
                    return
        except OSError:  # refused while starting, or a 503 (HTTPError) until ready
            if process.poll() is not None or time.monotonic() > deadline:
                if process.poll() is None:
                    process.kill()
                process.wait(timeout=10)
                pytest.fail(f"callvault serve did not become ready:\n{log()}")
            time.sleep(0.1)  # polling another process's readiness, not waiting for time


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- ``callvault`` as a process (the integration tier) ----------------------------------

SERVE_READY_TIMEOUT_S = 60.0
"""How long ``serve`` waits for ``/readyz``: a loaded CI machine imports the app slowly."""


@dataclass
class Process:
    """A ``callvault`` subprocess and the file its output goes to (never a pipe, so that a
    full pipe cannot stall it)."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def callvault_env(data_dir: Path, **settings: str) -> dict[str, str]:
    """This environment without its ``CALLVAULT_`` settings, plus the data dir and
    ``settings`` (so a developer's own settings never leak into a test's server)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLVAULT_")}
    env.update(CALLVAULT_DATA_DIR=str(data_dir), **settings)
    return env


@contextmanager
def callvault(command: str, log_path: Path, env: dict[str, str]) -> Iterator[Process]:
    """``python -m gateway.cli <command>`` for the ``with`` block; killed at its end."""
    WATCH.watch_file(log_path)
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "gateway.cli", command],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    running = Process(process, log_path)
    try:
        yield running
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=15)


def worker_children(pid: int) -> set[int]:
    """The AI worker children (``gateway.workers``) of process ``pid``, from /proc."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):  # it ended meanwhile
            continue
        if ppid == pid and b"gateway.workers" in cmdline:
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """Process ``pid`` runs (not ended, nor a zombie waiting for its parent)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@dataclass
class Server:
    base: str
    operator: str
    data_dir: Path
    process: Process
    port: int = 0
    trust: ssl.SSLContext | None = None
    """The client context that verifies the server's certificate (TLS only)."""


@contextmanager
def serve(
    tmp_path: Path,
    name: str,
    *,
    reach: str = "127.0.0.1",
    trust: ssl.SSLContext | None = None,
    **settings: str,
) -> Iterator[Server]:
    """``callvault serve`` on free ports, ready (``/readyz`` 200), with a bootstrap operator
    token; its data dir is ``tmp_path / name`` and its log ``tmp_path / f"{name}.log"``.
    The tests reach it at ``reach``; with ``CALLVAULT_HTTP__TLS_CERT`` among ``settings``
    over ``https``, verified by ``trust``."""
    port = free_port()
    operator = secrets.token_urlsafe(36)
    WATCH.remember("token", operator)
    data_dir = tmp_path / name
    env = callvault_env(
        data_dir,
        CALLVAULT_HTTP__PORT=str(port),
        CALLVAULT_AUDIOSOCKET__PORT="0",
        CALLVAULT_OPERATOR_TOKEN=operator,
        **settings,
    )
    scheme = "https" if "CALLVAULT_HTTP__TLS_CERT" in settings else "http"
    with callvault("serve", tmp_path / f"{name}.log", env) as process:
        base = f"{scheme}://{reach}:{port}"
        wait_until_ready(
            base, process.process, process.log, timeout_s=SERVE_READY_TIMEOUT_S, context=trust
        )
        yield Server(base, operator, data_dir, process, port=port, trust=trust)


class FakeClock:
    """The gateway's clock, turned by the test (``advance``); never sleeps."""

    def __init__(self, start: datetime = T0) -> None:
        self.current = start

    def now(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> datetime:
        self.current += timedelta(seconds=seconds)
        return self.current


class GatewayServer(TestServer):
    """A test server with the access log ``serve`` uses (path only, never the query
    string), so that tests see what production logs."""

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        return web.AppRunner(self.app, access_log_class=AccessLogger, access_log=ACCESS, **kwargs)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class TenantTokens:
    """A tenant and one token of each tenant role."""

    id: str
    admin: str
    pbx: str
    processor: str


@dataclass
class Gateway:
    """An in-process gateway (``aiohttp_client``) and its operator token."""

    client: TestClient
    operator: str
    tenants: dict[str, TenantTokens] = field(default_factory=dict)

    @property
    def app(self) -> Any:
        return self.client.server.app

    async def tenant(
        self, tenant_id: str, instructions: dict[str, Any] | None = None
    ) -> TenantTokens:
        """Create a tenant with admin, pbx and processor tokens (the operator mints the
        first admin, the admin the others, as API.md's break-glass rule asks); PUT
        ``instructions`` if given (otherwise the tenant keeps the all-off defaults)."""
        response = await self.client.post(
            "/v1/tenants",
            json={"id": tenant_id, "name": tenant_id.title()},
            headers=bearer(self.operator),
        )
        assert response.status == 201, await response.text()
        tokens: dict[str, str] = {}
        for role in ("admin", "pbx", "processor"):
            response = await self.client.post(
                f"/v1/tenants/{tenant_id}/tokens",
                json={"role": role},
                headers=bearer(tokens.get("admin", self.operator)),
            )
            assert response.status == 201, await response.text()
            tokens[role] = (await response.json())["token"]
        tenant = TenantTokens(tenant_id, **tokens)
        if instructions is not None:
            await self.instruct(tenant, instructions)
        self.tenants[tenant_id] = tenant
        return tenant

    async def instruct(self, tenant: TenantTokens, instructions: dict[str, Any]) -> dict[str, Any]:
        response = await self.client.put(
            f"/v1/tenants/{tenant.id}/instructions", json=instructions, headers=bearer(tenant.admin)
        )
        assert response.status == 200, await response.text()
        return dict(await response.json())

    async def announce(self, tenant: TenantTokens, **call: Any) -> dict[str, Any]:
        """Announce a call (defaults: Twilio, consent granted); asserts 201."""
        body = {
            "from": "+40711111111",
            "to": "+40722222222",
            "consent": "granted",
            "transport": "twilio",
        }
        body.update(call)
        response = await self.client.post(
            f"/v1/tenants/{tenant.id}/calls", json=body, headers=bearer(tenant.pbx)
        )
        assert response.status == 201, await response.text()
        return dict(await response.json())


async def start_gateway(client: TestClient) -> Gateway:
    """The operator token for an app already started by ``aiohttp_client``."""
    app = client.server.app
    operator = await ensure_operator_token(app[SERVICES].catalog, None, now=datetime.now(UTC))
    assert operator is not None
    return Gateway(client=client, operator=operator)


# --- audio -------------------------------------------------------------------------------


def tone(
    seconds: float, hz: float, *, rate: int = 8000, amplitude: int = 9000, seed: int = 0
) -> np.ndarray:
    """A tone with a little noise, so that no two calls' audio repeat each other."""
    t = np.arange(int(seconds * rate))
    noise = np.random.default_rng(seed).integers(-300, 300, size=t.size)
    return (np.sin(2 * np.pi * hz * t / rate) * amplitude + noise).astype(np.int16)


def frames(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


# --- Twilio Media Streams (https://www.twilio.com/docs/voice/media-streams/websocket-messages)


def twilio_connected() -> str:
    return json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})


def twilio_start(
    call_id: str | None,
    *,
    stream_sid: str = "MZ00000000000000000000000000000000",
    tracks: tuple[str, ...] = ("inbound", "outbound"),
    **custom: str,
) -> str:
    parameters = dict(custom)
    if call_id is not None:
        parameters["call_id"] = call_id
    return json.dumps(
        {
            "event": "start",
            "sequenceNumber": "1",
            "start": {
                "accountSid": "AC00000000000000000000000000000000",
                "streamSid": stream_sid,
                "callSid": "CA" + uuid.uuid4().hex,
                "tracks": list(tracks),
                "customParameters": parameters,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
            "streamSid": stream_sid,
        }
    )


def twilio_media(track: str, timestamp_ms: int, payload: bytes, *, sequence: int = 2) -> str:
    return json.dumps(
        {
            "event": "media",
            "sequenceNumber": str(sequence),
            "media": {
                "track": track,
                "chunk": str(sequence),
                "timestamp": str(timestamp_ms),
                "payload": base64.b64encode(payload).decode(),
            },
            "streamSid": "MZ00000000000000000000000000000000",
        }
    )


def twilio_stop() -> str:
    return json.dumps({"event": "stop", "sequenceNumber": "999", "stop": {}})


def twilio_call(
    inbound: bytes, outbound: bytes | None = None, *, frame: int = 160
) -> Iterator[str]:
    """µ-law audio as Twilio media messages, 20 ms per message, both tracks interleaved."""
    for index, chunk in enumerate(frames(inbound, frame)):
        yield twilio_media("inbound", index * 20, chunk, sequence=2 * index + 2)
        if outbound is not None:
            out = outbound[index * frame : (index + 1) * frame]
            if out:
                yield twilio_media("outbound", index * 20, out, sequence=2 * index + 3)


# --- AudioSocket (https://docs.asterisk.org/Configuration/Channel-Drivers/AudioSocket/)


def audiosocket_frame(kind: int, payload: bytes = b"") -> bytes:
    return bytes([kind]) + len(payload).to_bytes(2, "big") + payload


def audiosocket_uuid(audiosocket_id: str) -> bytes:
    """The opening frame: the id the call's announcement answered (never its call id)."""
    return audiosocket_frame(0x01, uuid.UUID(audiosocket_id).bytes)


def audiosocket_id(announced: dict[str, Any]) -> str:
    """The secret id an audiosocket call's announcement answered with."""
    return str(announced["ingest"]["audiosocket"]["id"])


def read_wav(data: bytes) -> tuple[int, int, np.ndarray]:
    """(channels, rate, int16 samples shaped (frames, channels)) of a PCM16 WAV."""
    import io
    import wave

    with wave.open(io.BytesIO(data)) as wav:
        channels, rate = wav.getnchannels(), wav.getframerate()
        assert wav.getsampwidth() == 2
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), "<i2")
    return channels, rate, pcm.reshape(-1, channels)


def data_files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield path


# --- control-API helpers (tests/functional/test_api_*.py) --------------------------------


async def stream_twilio(
    gateway: Gateway,
    tenant: TenantTokens,
    call_id: str,
    inbound: bytes,
    outbound: bytes | None = None,
) -> None:
    """Stream an announced call's µ-law audio over Twilio Media Streams and ``stop`` it;
    asserts that the gateway closes with 1000, i.e. the call has ended and is finalized."""
    from aiohttp import WSMsgType

    ws = await gateway.client.ws_connect("/v1/ingest/twilio", headers=bearer(tenant.pbx))
    try:
        await ws.send_str(twilio_connected())
        await ws.send_str(twilio_start(call_id))
        for message in twilio_call(inbound, outbound):
            await ws.send_str(message)
        await ws.send_str(twilio_stop())
        closing = await ws.receive()
    finally:
        await ws.close()
    assert closing.type is WSMsgType.CLOSE, closing
    assert closing.data == 1000, (closing.data, closing.extra)


@dataclass(frozen=True)
class StreamedCall:
    """A call announced and streamed to its end: the announcement and the µ-law sent."""

    announced: dict[str, Any]
    inbound: bytes
    outbound: bytes | None

    @property
    def call_id(self) -> str:
        return str(self.announced["call_id"])

    @property
    def recording_id(self) -> str:
        return str(self.announced["recording_id"])


async def record_call(
    gateway: Gateway,
    tenant: TenantTokens,
    *,
    seconds: float = 0.2,
    seed: int = 0,
    outbound: bool = True,
    **call: Any,
) -> StreamedCall:
    """Announce a call (``Gateway.announce`` defaults) and stream ``seconds`` of two
    different tones (only inbound when ``outbound`` is false) over Twilio to its end."""
    announced = await gateway.announce(tenant, **call)
    inbound = ULAW.encode(tone(seconds, 440, seed=seed))
    out = ULAW.encode(tone(seconds, 660, seed=seed + 1)) if outbound else None
    await stream_twilio(gateway, tenant, str(announced["call_id"]), inbound, out)
    return StreamedCall(announced=announced, inbound=inbound, outbound=out)


def metric_value(text: str, sample: str, **labels: str) -> float:
    """The value of one sample (``callvault_refusals_total``, by labels) in a ``/metrics``
    answer; 0.0 when the sample is absent (a labelled counter not yet incremented)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == sample and found.labels == labels:
                return float(found.value)
    return 0.0


class DownStore:
    """An object store (or spool) during an outage: every upload fails to open."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def open_upload(self, key: str) -> Any:
        from storage.errors import StorageUnavailable

        raise StorageUnavailable("the store is down", store_code="ServiceUnavailable")

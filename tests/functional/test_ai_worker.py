"""The AI worker through the app: jobs, results sealed, purge, retries, the API.

The model is a test double (``tests.ai.ScriptedTranscriber``) so that the bookkeeping is
tested exactly and fast; the real model runs in ``tests/integration/test_ai_pipeline.py``.
Calls are the shipped sample calls streamed over Twilio Media Streams; the worker runs on
the test's ``FakeClock``, so retries and leases are tested without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.ext.asyncio import create_async_engine

from ai.worker import AnalysisWorker
from crypto.errors import KeyUnavailable
from gateway.app import build_app
from gateway.settings import Settings, WebhookSettings
from gateway.state import SERVICES
from gateway.webhooks import WebhookSender, verify
from storage.media.codecs import codec
from tests.ai import (
    AI_BACKOFF_S,
    AI_ONLY,
    RECORDED,
    Killed,
    ScriptedTranscriber,
    audit_details,
    get,
    job_of,
    new_worker,
    push,
    sample_call,
)
from tests.gateway import (
    FakeClock,
    Gateway,
    GatewayServer,
    bearer,
    data_files,
    frames,
    metric_value,
    start_gateway,
)
from tests.scan import PlaintextScan


@pytest.fixture
def gateway_settings(gateway_settings: Settings) -> Settings:
    """The tier's settings, letting webhooks reach this file's plain-http receiver on
    loopback (a PUT refuses http:// and loopback addresses otherwise)."""
    webhooks = WebhookSettings(allow_private=True, allow_http=True)
    return gateway_settings.model_copy(update={"webhooks": webhooks})


async def test_an_ai_only_call_is_analysed_and_its_audio_purged(
    gw: Gateway, worker: AnalysisWorker, gateway_settings: Settings
) -> None:
    tenant = await gw.tenant("acme", AI_ONLY)
    call = sample_call("support")
    announced = await push(gw, tenant, call)
    recording_id = announced["recording_id"]
    catalog = gw.app[SERVICES].catalog
    store = gw.app[SERVICES].store
    audio = [o for o in await catalog.objects.list("acme", recording_id=recording_id)]
    assert {o.track for o in audio} == {"inbound", "outbound"}
    assert all(o.kind == "audio" and o.state == "committed" for o in audio)
    for stored in audio:  # before: the audio's DEKs and bytes exist
        await catalog.keys.get(stored.id, "acme")
        assert await store.exists(stored.store_key)

    started = time.time()
    assert await worker.run_once() is True

    status, view = await get(gw, f"/v1/recordings/{recording_id}", tenant.processor)
    assert (status, view["status"], view["audio_purged"]) == (200, "analyzed", True)
    after = await catalog.objects.list("acme", recording_id=recording_id)
    by_id = {o.id: o for o in after}
    for stored in audio:  # after: no DEK, no bytes, the rows say deleted
        assert by_id[stored.id].state == "deleted"
        with pytest.raises(KeyUnavailable):
            await catalog.keys.get(stored.id, "acme")
        assert not await store.exists(stored.store_key)
    results = sorted((o.kind, o.data_class, o.state) for o in after if o.kind != "audio")
    assert results == [
        ("analysis", "transcripts", "committed"),
        ("transcript", "transcripts", "committed"),
    ]
    keys = [key async for key in store.list_keys("acme/")]
    assert sorted(keys) == sorted(o.store_key for o in after if o.kind != "audio")
    status, _ = await get(gw, f"/v1/recordings/{recording_id}/audio", tenant.admin)
    assert status == 410
    # Nothing of the audio is left in the clear anywhere in the data dir (spool included).
    scan = PlaintextScan({"inbound": call.inbound, "outbound": call.outbound})
    for path in data_files(gateway_settings.data_dir):
        assert scan.first_leak(path.read_bytes()) is None, path
    assert not list((gateway_settings.data_dir / "spool").rglob("*.*"))
    # Nor in any file the job could have written to the system's temporary directory.
    for path in Path(tempfile.gettempdir()).rglob("*"):  # noqa: ASYNC240 - a test's scan
        with contextlib.suppress(OSError):
            if path.is_file() and path.stat().st_mtime >= started - 1:
                if path.stat().st_size < 64 << 20:
                    assert scan.first_leak(path.read_bytes()) is None, path
    purged = await audit_details(gw, "acme", "ai.purged")
    assert len(purged) == 1
    assert sorted(purged[0]["audio_objects_shredded"]) == sorted(o.id for o in audio)
    assert purged[0]["recording_kept"] is False
    assert purged[0]["working_copy_bytes"] > 0
    job = await job_of(gw, "acme", recording_id)
    assert (job.status, job.attempts) == ("done", 1)
    metrics = await (await gw.client.get("/metrics")).text()
    assert metric_value(metrics, "callvault_ai_jobs_total", outcome="analyzed") == 1


async def test_a_recorded_call_keeps_its_audio(gw: Gateway, worker: AnalysisWorker) -> None:
    tenant = await gw.tenant("acme", RECORDED)
    announced = await push(gw, tenant, sample_call("support"))
    recording_id = announced["recording_id"]
    status, before = await get(gw, f"/v1/recordings/{recording_id}/audio", tenant.admin)
    assert status == 200
    assert await worker.run_once() is True
    status, after = await get(gw, f"/v1/recordings/{recording_id}/audio", tenant.admin)
    assert (status, after) == (200, before)
    status, view = await get(gw, f"/v1/recordings/{recording_id}", tenant.admin)
    assert (view["status"], view["audio_purged"]) == ("analyzed", False)
    purged = await audit_details(gw, "acme", "ai.purged")
    assert purged == [
        {
            "working_copy_bytes": purged[0]["working_copy_bytes"],
            "audio_objects_shredded": [],
            "audio_bytes_shredded": 0,
            "recording_kept": True,
        }
    ]
    # Two tracks of 32.98 s at 16 kHz as float32 were wiped.
    assert purged[0]["working_copy_bytes"] == 2 * round(32.98 * 16000) * 4


async def test_results_are_served_sealed_and_audited(
    gw: Gateway, worker: AnalysisWorker, gateway_settings: Settings
) -> None:
    tenant = await gw.tenant("acme", AI_ONLY)
    recording_id = (await push(gw, tenant, sample_call("support")))["recording_id"]
    status, body = await get(gw, f"/v1/recordings/{recording_id}/transcript", tenant.processor)
    assert (status, body["error"]) == (409, "analysis_pending")
    await worker.run_once()
    status, transcript = await get(gw, f"/v1/recordings/{recording_id}/transcript", tenant.admin)
    assert status == 200
    assert transcript["model"] == "scripted"
    assert {s["track"] for s in transcript["segments"]} == {"inbound", "outbound"}
    starts = [s["start"] for s in transcript["segments"]]
    assert starts == sorted(starts)
    status, analysis = await get(gw, f"/v1/recordings/{recording_id}/analysis", tenant.processor)
    assert status == 200
    assert {"summary", "sentiment", "talk_listen", "topics"} <= set(analysis)
    # Sealed at rest: the transcript's words appear in no file of the data dir.
    marker = max((s["text"] for s in transcript["segments"]), key=len).encode()
    assert len(marker) > 10
    for path in data_files(gateway_settings.data_dir):
        assert marker not in path.read_bytes(), path
    assert len(await audit_details(gw, "acme", "transcript.read")) == 1
    assert len(await audit_details(gw, "acme", "analysis.read")) == 1


async def test_only_the_instructed_features_are_computed(
    gw: Gateway, worker: AnalysisWorker
) -> None:
    tenant = await gw.tenant(
        "acme", {"ai": {"talk_listen": True, "sentiment": True}, "recording": {"enabled": True}}
    )
    recording_id = (await push(gw, tenant, sample_call("support")))["recording_id"]
    await worker.run_once()
    status, analysis = await get(gw, f"/v1/recordings/{recording_id}/analysis", tenant.processor)
    assert status == 200
    assert set(analysis) == {"language", "model", "duration_s", "talk_listen", "sentiment"}
    status, body = await get(gw, f"/v1/recordings/{recording_id}/transcript", tenant.processor)
    assert (status, body["error"]) == (404, "not_instructed")
    kinds = {
        o.kind
        for o in await gw.app[SERVICES].catalog.objects.list("acme", recording_id=recording_id)
    }
    assert kinds == {"audio", "analysis"}  # no transcript object was even written

    other = await gw.tenant("beta", {"ai": {"transcript": True}, "recording": {"enabled": True}})
    beta_recording = (await push(gw, other, sample_call("support")))["recording_id"]
    await worker.run_once()
    status, body = await get(gw, f"/v1/recordings/{beta_recording}/analysis", other.processor)
    assert (status, body["error"]) == (404, "not_instructed")
    status, _ = await get(gw, f"/v1/recordings/{beta_recording}/transcript", other.processor)
    assert status == 200


async def test_results_are_the_tenants_own(gw: Gateway, worker: AnalysisWorker) -> None:
    tenant = await gw.tenant("acme", AI_ONLY)
    other = await gw.tenant("beta", AI_ONLY)
    recording_id = (await push(gw, tenant, sample_call("support")))["recording_id"]
    await worker.run_once()
    for kind in ("transcript", "analysis"):
        status, body = await get(gw, f"/v1/recordings/{recording_id}/{kind}", other.processor)
        assert (status, body["error"]) == (404, "not_found")
        status, _ = await get(gw, f"/v1/recordings/{recording_id}/{kind}", tenant.pbx)
        assert status == 403


async def test_a_failed_attempt_is_retried_after_its_backoff(
    gw: Gateway, worker: AnalysisWorker, transcriber: ScriptedTranscriber, clock: FakeClock
) -> None:
    transcriber.fail = 1
    tenant = await gw.tenant("acme", AI_ONLY)
    recording_id = (await push(gw, tenant, sample_call("support")))["recording_id"]
    assert await worker.run_once() is True
    job = await job_of(gw, "acme", recording_id)
    assert (job.status, job.attempts) == ("queued", 1)
    assert job.last_error is not None and "scripted failure" in job.last_error
    assert job.run_after == clock.now() + timedelta(seconds=AI_BACKOFF_S)
    assert await worker.run_once() is False  # not due yet
    clock.advance(AI_BACKOFF_S)
    assert await worker.run_once() is True
    job = await job_of(gw, "acme", recording_id)
    assert (job.status, job.attempts) == ("done", 2)
    status, view = await get(gw, f"/v1/recordings/{recording_id}", tenant.processor)
    assert view["status"] == "analyzed"
    results = [
        o
        for o in await gw.app[SERVICES].catalog.objects.list("acme", recording_id=recording_id)
        if o.kind == "transcript"
    ]
    assert [o.state for o in results] == ["committed"]


async def test_after_the_last_attempt_the_recording_fails_with_the_reason(
    gw: Gateway, worker: AnalysisWorker, transcriber: ScriptedTranscriber, clock: FakeClock
) -> None:
    transcriber.fail = 99
    tenant = await gw.tenant("acme", AI_ONLY)
    recording_id = (await push(gw, tenant, sample_call("support")))["recording_id"]
    for attempt in range(3):
        assert await worker.run_once() is True
        clock.advance(AI_BACKOFF_S * 2**attempt)
    assert await worker.run_once() is False
    job = await job_of(gw, "acme", recording_id)
    assert (job.status, job.attempts) == ("failed", 3)
    status, view = await get(gw, f"/v1/recordings/{recording_id}", tenant.admin)
    assert (view["status"], view["audio_purged"]) == ("failed", True)
    status, body = await get(gw, f"/v1/recordings/{recording_id}/transcript", tenant.processor)
    assert (status, body["error"]) == (409, "analysis_failed")
    assert "scripted failure" in body["message"]
    objects = await gw.app[SERVICES].catalog.objects.list("acme", recording_id=recording_id)
    assert {(o.kind, o.state) for o in objects} == {("audio", "deleted")}


async def take_over(
    gw: Gateway,
    settings: Settings,
    clock: FakeClock,
    recording_id: str,
    transcriber: ScriptedTranscriber,
) -> None:
    """The dead worker's job is taken over by another once its lease ran out."""
    job = await job_of(gw, "acme", recording_id)
    assert (job.status, job.attempts) == ("running", 1)
    other = new_worker(gw, settings, clock, transcriber)
    assert await other.run_once() is False  # the dead worker's lease still holds
    clock.advance(61)
    assert await other.run_once() is True
    await other.close()
    job = await job_of(gw, "acme", recording_id)
    assert (job.status, job.attempts, job.lease_owner) == ("done", 2, other.owner)


async def test_an_attempt_killed_after_storing_its_results_is_finished_not_redone(
    gw: Gateway,
    gateway_settings: Settings,
    worker: AnalysisWorker,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant = await gw.tenant("acme", AI_ONLY)
    recording_id = (await push(gw, tenant, sample_call("support")))["recording_id"]
    catalog = gw.app[SERVICES].catalog
    store_results = AnalysisWorker._store

    async def store_then_die(self: AnalysisWorker, *args: Any) -> None:
        await store_results(self, *args)
        raise Killed

    monkeypatch.setattr(AnalysisWorker, "_store", store_then_die)
    with pytest.raises(Killed):
        await worker.run_once()
    monkeypatch.undo()
    stored = await catalog.objects.list("acme", recording_id=recording_id)
    first_results = sorted(o.id for o in stored if o.kind != "audio")
    assert len(first_results) == 2
    # The audio is still there (the purge never ran); the recording still processing.
    assert {o.state for o in stored if o.kind == "audio"} == {"committed"}
    # The new worker's model would fail: the stored results are kept, not redone.
    await take_over(gw, gateway_settings, clock, recording_id, ScriptedTranscriber(fail=99))
    objects = await catalog.objects.list("acme", recording_id=recording_id)
    assert sorted(o.id for o in objects if o.kind != "audio" and o.state == "committed") == (
        first_results
    )
    assert {o.state for o in objects if o.kind == "audio"} == {"deleted"}
    status, view = await get(gw, f"/v1/recordings/{recording_id}", tenant.processor)
    assert (view["status"], view["audio_purged"]) == ("analyzed", True)
    purged = await audit_details(gw, "acme", "ai.purged")
    assert len(purged) == 1


async def test_an_attempt_killed_while_storing_its_results_is_redone_once(
    gw: Gateway,
    gateway_settings: Settings,
    worker: AnalysisWorker,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant = await gw.tenant("acme", RECORDED)
    recording_id = (await push(gw, tenant, sample_call("support")))["recording_id"]
    catalog = gw.app[SERVICES].catalog
    vault = gw.app[SERVICES].vault
    put_object = type(vault).put_object
    puts = 0

    async def put_then_die(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal puts
        puts += 1
        if puts == 2:  # the transcript is stored, the analysis is not
            raise Killed
        return await put_object(self, *args, **kwargs)

    monkeypatch.setattr(type(vault), "put_object", put_then_die)
    with pytest.raises(Killed):
        await worker.run_once()
    monkeypatch.undo()
    first = [o for o in await catalog.objects.list("acme", recording_id=recording_id)]
    partial = [o for o in first if o.kind != "audio"]
    assert [o.kind for o in partial] == ["transcript"]

    await take_over(gw, gateway_settings, clock, recording_id, ScriptedTranscriber())
    objects = await catalog.objects.list("acme", recording_id=recording_id)
    live = sorted(o.kind for o in objects if o.kind != "audio" and o.state == "committed")
    assert live == ["analysis", "transcript"]  # exactly one of each
    assert {o.state for o in objects if o.id == partial[0].id} == {"deleted"}
    status, _ = await get(gw, f"/v1/recordings/{recording_id}/transcript", tenant.processor)
    assert status == 200
    status, _ = await get(gw, f"/v1/recordings/{recording_id}/audio", tenant.admin)
    assert status == 200  # a recorded call keeps its audio through all of it


async def test_a_job_waits_for_audio_still_in_a_spool(
    gw: Gateway, worker: AnalysisWorker, gateway_settings: Settings, clock: FakeClock
) -> None:
    tenant = await gw.tenant("acme", AI_ONLY)
    recording_id = (await push(gw, tenant, sample_call("support")))["recording_id"]
    engine = create_async_engine(gateway_settings.catalog_url)

    async def set_audio_state(state: str) -> None:
        async with engine.begin() as conn:
            await conn.execute(
                sa.text(
                    "UPDATE objects SET state = :state "
                    "WHERE recording_id = :rid AND kind = 'audio' AND track = 'outbound'"
                ),
                {"state": state, "rid": recording_id},
            )

    try:
        await set_audio_state("writing")  # as if its commit failed and it waits in the spool
        assert await worker.run_once() is True
        job = await job_of(gw, "acme", recording_id)
        assert (job.status, job.attempts) == ("queued", 0)  # deferred, not counted
        assert job.last_error is not None and "spool" in job.last_error
        await set_audio_state("committed")  # the recovery pass published it
        assert await worker.run_once() is False
        clock.advance(30)
        assert await worker.run_once() is True
    finally:
        await engine.dispose()
    job = await job_of(gw, "acme", recording_id)
    assert (job.status, job.attempts) == ("done", 1)


async def test_calls_without_ai_queue_no_job(gw: Gateway, worker: AnalysisWorker) -> None:
    tenant = await gw.tenant("acme", {"recording": {"enabled": True}})
    recording_id = (await push(gw, tenant, sample_call("support")))["recording_id"]
    assert await worker.run_once() is False
    assert await gw.app[SERVICES].catalog.jobs.list("acme", recording_id=recording_id) == []
    status, view = await get(gw, f"/v1/recordings/{recording_id}", tenant.admin)
    assert view["status"] == "recorded"
    status, body = await get(gw, f"/v1/recordings/{recording_id}/transcript", tenant.admin)
    assert (status, body["error"]) == (404, "not_instructed")


@pytest.fixture
async def shared_catalog_gw(
    aiohttp_client: Callable, tmp_path: Path, clock: FakeClock, database_url: str
) -> tuple[Gateway, Settings]:
    settings = Settings(
        data_dir=tmp_path / "var",
        database_url=database_url,
        audiosocket={"port": 0},
        ai={"workers": 0},
    )
    client = await aiohttp_client(GatewayServer(build_app(settings, clock=clock)))
    return await start_gateway(client), settings


async def test_several_workers_take_each_job_exactly_once(
    shared_catalog_gw: tuple[Gateway, Settings], clock: FakeClock
) -> None:
    """On PostgreSQL workers pass each other with FOR UPDATE SKIP LOCKED; on SQLite claims
    are serialized. Either way every job runs once, on one worker."""
    gw, settings = shared_catalog_gw
    tenant = await gw.tenant("acme", AI_ONLY)
    call = sample_call("support")
    recordings = [(await push(gw, tenant, call))["recording_id"] for _ in range(6)]
    workers = [new_worker(gw, settings, clock, ScriptedTranscriber()) for _ in range(3)]

    async def drain(worker: AnalysisWorker) -> int:
        taken = 0
        while await worker.run_once():
            taken += 1
        return taken

    taken = await asyncio.gather(*(drain(worker) for worker in workers))
    for worker in workers:
        await worker.close()
    assert sum(taken) == len(recordings)
    catalog = gw.app[SERVICES].catalog
    owners = set()
    for recording_id in recordings:
        job = await job_of(gw, "acme", recording_id)
        assert (job.status, job.attempts) == ("done", 1)
        owners.add(job.lease_owner)
        objects = await catalog.objects.list("acme", recording_id=recording_id)
        assert sorted(o.kind for o in objects if o.state == "committed") == [
            "analysis",
            "transcript",
        ]
    assert owners <= {worker.owner for worker in workers}


async def test_a_fork_call_in_l16_at_16_khz_reaches_the_model_on_its_timeline(
    gw: Gateway, worker: AnalysisWorker
) -> None:
    """Not only µ-law: a mod_audio_fork call (L16, stereo, 16 kHz) decodes at its own rate,
    each channel its own track: the model hears the same speech at the same times as from
    the same call over Twilio (µ-law, 8 kHz)."""
    tenant = await gw.tenant("acme", {"recording": {"enabled": False}, "ai": {"talk_listen": True}})
    call = sample_call("support")
    ulaw = codec("pcmu")
    channels = [
        np.repeat(ulaw.decode(track), 2)  # 8 kHz -> 16 kHz, sample and hold
        for track in (call.inbound, call.outbound)
    ]
    stereo = np.stack(channels, axis=1).astype("<i2").tobytes()
    announced = await gw.announce(tenant, transport="fork", codec="l16", sample_rate=16000)
    ws = await gw.client.ws_connect("/v1/ingest/fork", headers=bearer(tenant.pbx))
    await ws.send_str(
        json.dumps({"call_id": announced["call_id"], "sampleRate": 16000, "mixType": "stereo"})
    )
    for chunk in frames(stereo, 640 * 4):
        await ws.send_bytes(chunk)
    await ws.send_str(json.dumps({"event": "stop"}))
    closing = await ws.receive()
    await ws.close()
    assert closing.data == 1000
    twilio = await push(gw, tenant, call)
    assert await worker.run_once() is True
    assert await worker.run_once() is True
    analyses = []
    for recording_id in (announced["recording_id"], twilio["recording_id"]):
        status, analysis = await get(
            gw, f"/v1/recordings/{recording_id}/analysis", tenant.processor
        )
        assert status == 200
        assert analysis["duration_s"] == pytest.approx(len(call.inbound) / 8000, abs=0.01)
        analyses.append(analysis["talk_listen"]["tracks"])
    fork, over_twilio = analyses
    for track in ("inbound", "outbound"):
        assert fork[track]["talk_s"] > 5
        assert fork[track]["talk_s"] == pytest.approx(over_twilio[track]["talk_s"], abs=0.1)


async def test_a_finished_analysis_is_announced_to_the_tenants_webhook(
    aiohttp_server: Callable, gw: Gateway, worker: AnalysisWorker, clock: FakeClock
) -> None:
    received: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    receiver = await aiohttp_server(app)
    secret = "whsec_" + "x" * 24
    tenant = await gw.tenant(
        "acme",
        {**AI_ONLY, "webhook": {"url": str(receiver.make_url("/hook")), "secret": secret}},
    )
    recording_id = (await push(gw, tenant, sample_call("support")))["recording_id"]
    assert await worker.run_once() is True
    sender = WebhookSender(
        gw.app[SERVICES].catalog,
        gw.app[SERVICES].keys,
        WebhookSettings(allow_private=True, allow_http=True),
        clock.now,
        owner="test-sender",
        registry=None,
    )
    try:
        assert await sender.deliver_once() is True
    finally:
        await sender.close()
    [(headers, body)] = received
    assert verify(secret, headers["Callvault-Signature"], body, now=int(clock.now().timestamp()))
    event = json.loads(body)
    assert (event["event"], event["tenant"]) == ("analysis.completed", "acme")
    assert event["data"]["recording_id"] == recording_id
    assert event["data"]["status"] == "analyzed"
    assert headers["Callvault-Event"] == "analysis.completed"
    assert secret not in body.decode()

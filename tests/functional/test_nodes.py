"""The node registry and dead nodes (``storage.catalog.nodes``, ``gateway.nodes``): nodes
register and heartbeat, exactly one node declares each dead one, a dead node's live calls
end with ``node_dead`` and its jobs waiting on its spool fail at once without purging
anything, and when it is back (stalled, or killed and restarted) it publishes its spool and
those jobs are reopened and analysed once. Real SQLite and PostgreSQL; time passed in."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from ai.pipeline import Analyzer
from crypto.keys import KEYRING_FILE, MASTER_KEY_FILE
from gateway.app import build_app
from gateway.calls import CallRegistry
from gateway.metrics import GatewayMetrics
from gateway.nodes import NODE_ID_FILE, NodeAddresses, NodeKeeper, node_id_of
from gateway.services import build_worker, open_services
from gateway.session import SessionLimits
from gateway.settings import Settings
from gateway.state import AI_METRICS, METRICS, NODE, SERVICES
from storage.catalog import NODE_DEAD, Catalog
from tests.ai import AI_ONLY, ScriptedTranscriber, new_worker, sample_call
from tests.functional.test_cli import start_serve
from tests.functional.test_crash import frames_taken, kill
from tests.functional.test_ingest_rtp import free_udp_range
from tests.gateway import (
    T0,
    FakeClock,
    Gateway,
    GatewayServer,
    bearer,
    free_port,
    metric_value,
    start_gateway,
    stream_twilio,
    twilio_call,
    twilio_start,
)
from tests.keyring import audit_keyring
from tests.leaks import WATCH

DEAD_AFTER = timedelta(seconds=30)
QUIET = "PT1H"
"""The heartbeat interval of in-process gateways: their background heartbeat and watch never
run during a test, which drives them with the time it chooses."""


# --- the registry ---------------------------------------------------------------------------


@pytest.fixture
async def catalogs(database_url: str, tmp_path: Path) -> AsyncIterator[tuple[Catalog, Catalog]]:
    """Two catalogs (two engines, as two nodes have) on one migrated database."""
    keys = audit_keyring(tmp_path / "keys")
    one = await Catalog.open(database_url, audit_keys=keys)
    two = await Catalog.open(database_url, audit_keys=keys)
    try:
        await one.migrate()
        yield one, two
    finally:
        await one.close()
        await two.close()


async def test_nodes_register_heartbeat_stop_and_are_declared_dead(
    catalogs: tuple[Catalog, Catalog],
) -> None:
    catalog, _ = catalogs
    addresses = {"http": "gw1:8080", "websocket": None, "audiosocket": None, "rtp": {}}
    node = await catalog.nodes.register("gw1", addresses, T0)
    assert (node.state, node.started_at, node.heartbeat_at, node.dead_at) == ("up", T0, T0, None)
    await catalog.nodes.register("gw2", addresses, T0)

    assert await catalog.nodes.heartbeat("gw1", T0 + timedelta(seconds=20)) is True
    # gw2's heartbeat is 40 s old, gw1's 20 s: only gw2 is dead (and never the declarer).
    at = T0 + timedelta(seconds=40)
    assert await catalog.nodes.declare_dead(at, DEAD_AFTER, by="gw2") == []
    declared = await catalog.nodes.declare_dead(at, DEAD_AFTER, by="gw1")
    assert [(n.id, n.state, n.dead_at) for n in declared] == [("gw2", "dead", at)]
    assert await catalog.nodes.declare_dead(at, DEAD_AFTER, by="gw1") == []  # once

    # A dead node's heartbeat tells it so; it registers again and is up.
    assert await catalog.nodes.heartbeat("gw2", at) is False
    back = await catalog.nodes.register("gw2", addresses, at)
    assert (back.state, back.dead_at, back.started_at) == ("up", None, at)
    assert await catalog.nodes.heartbeat("gw2", at) is True

    # A node that stopped cleanly is never declared dead.
    assert await catalog.nodes.stop("gw1", at) is True
    later = at + timedelta(hours=1)
    declared = await catalog.nodes.declare_dead(later, DEAD_AFTER, by="gw3")
    assert [n.id for n in declared] == ["gw2"]
    states = {n.id: n.state for n in await catalog.nodes.list()}
    assert states == {"gw1": "stopped", "gw2": "dead"}


async def test_two_concurrent_declarers_declare_each_dead_node_exactly_once(
    catalogs: tuple[Catalog, Catalog],
) -> None:
    one, two = catalogs
    for round_ in range(5):
        start = T0 + timedelta(hours=round_)
        ids = {f"gw{round_}-{n}" for n in range(12)}
        for node_id in ids:
            await one.nodes.register(node_id, {}, start)
        at = start + DEAD_AFTER + timedelta(seconds=1)
        by_one, by_two = await asyncio.gather(
            one.nodes.declare_dead(at, DEAD_AFTER, by="a"),
            two.nodes.declare_dead(at, DEAD_AFTER, by="b"),
        )
        first, second = {n.id for n in by_one}, {n.id for n in by_two}
        assert not first & second  # no node declared twice
        assert first | second == ids
        assert len(by_one) + len(by_two) == len(ids)


async def test_what_is_done_on_a_dead_nodes_account_waits_for_it_to_be_dead(
    catalogs: tuple[Catalog, Catalog],
) -> None:
    """Ending a dead node's call and failing its waiting job both check, under the node
    row's lock, that it is still away: a node that registered again meanwhile keeps them."""
    catalog, _ = catalogs
    await catalog.tenants.create("acme", "Acme", "eu", T0)
    document = {"recording": {"enabled": True}, "ai": {"transcript": True}}
    await catalog.instructions.add("acme", document, "adm", T0)
    await catalog.nodes.register("gw1", {}, T0)
    call, recording = await catalog.calls.announce(
        id="call-1",
        tenant_id="acme",
        from_number="+40211111111",
        to_number="+40722222222",
        direction="inbound",
        consent="granted",
        transport="twilio",
        codec="pcmu",
        sample_rate=8000,
        instructions_version=1,
        decision={"store_recording": True, "ai": ["transcript"]},
        refusal_code=None,
        started_at=T0,
        recording_id="rec-1",
        node_id="gw1",
    )
    assert recording is not None and call.node_id == "gw1"
    later = T0 + timedelta(minutes=1)
    assert await catalog.nodes.live_calls_of_dead() == []  # gw1 is up

    # While gw1 is up, nothing is finished on its account...
    kept = await catalog.recordings.finish(
        "acme", "rec-1", samples=0, now=later, job_id="job-1", while_node_dead="gw1"
    )
    assert kept.status == "recording"
    assert await catalog.jobs.list("acme") == []
    # ...once it is dead, it is.
    await catalog.nodes.declare_dead(later, DEAD_AFTER, by="gw2")
    assert [c.id for c in await catalog.nodes.live_calls_of_dead()] == ["call-1"]
    done = await catalog.recordings.finish(
        "acme", "rec-1", samples=0, now=later, job_id="job-1", while_node_dead="gw1"
    )
    assert done.status == "processing"
    assert await catalog.nodes.live_calls_of_dead() == []
    (job,) = await catalog.jobs.list("acme")

    # Its job waits on gw1's spool; gw1 comes back before it is failed: it stays queued.
    await catalog.objects.add(
        object_id="obj-1",
        tenant_id="acme",
        kind="audio",
        data_class="recordings",
        store_key="acme/objects/obj-1",
        now=T0,
        recording_id="rec-1",
        track="inbound",
        node_id="gw1",
    )
    assert [(j.id, n) for j, n in await catalog.nodes.jobs_of_dead()] == [("job-1", "gw1")]
    await catalog.nodes.register("gw1", {}, later)
    assert await catalog.nodes.jobs_of_dead() == []
    assert await catalog.nodes.fail_waiting(job, "gw1", later, dead_after=DEAD_AFTER) is None
    assert (await catalog.jobs.list("acme"))[0].status == "queued"
    # Silent again past dead_after: failed, uncounted; reopened exactly once.
    silent = later + DEAD_AFTER + timedelta(seconds=1)
    failed = await catalog.nodes.fail_waiting(job, "gw1", silent, dead_after=DEAD_AFTER)
    assert failed is not None and (failed.status, failed.attempts) == ("failed", 0)
    assert await catalog.nodes.failed_while_away("gw1") == []  # its audio is not published
    await catalog.objects.mark_committed("obj-1", size=10, now=silent)
    (waiting,) = await catalog.nodes.failed_while_away("gw1")
    assert await catalog.nodes.failed_while_away("gw2") == []
    reopened = await catalog.nodes.reopen(waiting, samples=800, now=silent)
    assert reopened is not None and reopened.status == "queued"
    assert await catalog.nodes.reopen(waiting, samples=800, now=silent) is None
    recording = await catalog.recordings.get("acme", "rec-1")
    assert (recording.status, recording.samples) == ("processing", 800)


# --- the announcement answers the node that takes the call ---------------------------------


async def test_the_announcement_answers_the_node_that_takes_the_call(
    aiohttp_client: Callable, tmp_path: Path
) -> None:
    rtp = free_udp_range(8)
    http_port, audiosocket_port = free_port(), free_port()
    settings = Settings(
        data_dir=tmp_path / "var",
        http={"port": http_port, "tls_offloaded": True},
        audiosocket={"port": audiosocket_port},
        rtp={"port_min": rtp, "port_max": rtp + 7},
        node={"public_host": "gw1.example.net", "heartbeat_interval": QUIET},
        ai={"workers": 0},
        retention={"sweep_interval": "PT0S"},
        audit={"checkpoint_interval": "PT0S"},
    )
    client = await aiohttp_client(GatewayServer(build_app(settings)))
    gw = await start_gateway(client)
    node_id = (settings.data_dir / NODE_ID_FILE).read_text().strip()
    assert gw.app[NODE].id == node_id
    tenant = await gw.tenant("acme", {"recording": {"enabled": True}})

    twilio = await gw.announce(tenant)
    assert twilio["node"] == node_id
    assert twilio["ingest"]["websocket"] == "/v1/ingest/twilio"  # kept for compatibility
    url = f"wss://gw1.example.net:{http_port}/v1/ingest/twilio"
    assert twilio["ingest"]["websocket_url"] == url
    fork = await gw.announce(tenant, transport="fork")
    assert fork["ingest"]["websocket_url"].endswith(f":{http_port}/v1/ingest/fork")
    audiosocket = await gw.announce(tenant, transport="audiosocket")
    assert audiosocket["ingest"]["audiosocket"]["address"] == f"gw1.example.net:{audiosocket_port}"
    assert "websocket_url" not in audiosocket["ingest"]
    rtp_call = await gw.announce(tenant, transport="rtp", codec="pcmu")
    assert rtp_call["ingest"]["rtp"]["host"] == "gw1.example.net"

    catalog = gw.app[SERVICES].catalog
    for announced in (twilio, fork, audiosocket, rtp_call):
        call = await catalog.calls.get("acme", announced["call_id"])
        assert call.node_id == node_id
    node = await catalog.nodes.get(node_id)
    assert node.state == "up"
    assert node.addresses["audiosocket"] == f"gw1.example.net:{audiosocket_port}"
    assert node.addresses["websocket"] == f"wss://gw1.example.net:{http_port}"
    metrics = await (await client.get("/metrics")).text()
    assert metric_value(metrics, "callvault_node_info", id=node_id) == 1.0

    await client.close()  # a clean shutdown: the node is stopped, nobody declares it dead
    check = await Catalog.open(settings.catalog_url, audit_keys=audit_keyring(tmp_path / "k"))
    try:
        assert (await check.nodes.get(node_id)).state == "stopped"
    finally:
        await check.close()
    assert node_id_of(settings) == node_id  # a restart is the same node


def test_without_a_public_host_the_addresses_are_the_listeners(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, http={"port": 8443}, audiosocket={"host": "::1", "port": 9092}
    )
    addresses = NodeAddresses.of(settings)
    assert addresses.websocket is None
    assert addresses.websocket_url("/v1/ingest/twilio") is None
    assert addresses.audiosocket == "[::1]:9092"
    assert addresses.rtp_host == "127.0.0.1"
    plain = Settings(data_dir=tmp_path, node={"public_host": "gw2"}, http={"port": 8080})
    assert NodeAddresses.of(plain).websocket_url("/x") == "ws://gw2:8080/x"


# --- a job waiting on a silent node's spool ------------------------------------------------


def quiet_settings(data_dir: Path, **extra: Any) -> Settings:
    return Settings(
        data_dir=data_dir,
        audiosocket={"port": 0},
        ai={"workers": 0, "retry_backoff": "PT10S", "lease": "PT60S"},
        retention={"sweep_interval": "PT0S"},
        audit={"checkpoint_interval": "PT0S"},
        node={"heartbeat_interval": QUIET, "dead_after": "PT30S"},
        **extra,
    )


async def set_audio_state(catalog_url: str, recording_id: str, state: str) -> None:
    """Put a recording's outbound audio object in ``state`` (as if its commit had failed
    and it waited in the spool, or as its publication left it)."""
    engine = create_async_engine(catalog_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                sa.text(
                    "UPDATE objects SET state = :state "
                    "WHERE recording_id = :rid AND kind = 'audio' AND track = 'outbound'"
                ),
                {"state": state, "rid": recording_id},
            )
    finally:
        await engine.dispose()


async def results(catalog: Catalog, tenant: str, recording_id: str) -> list[tuple[str, str]]:
    objects = await catalog.objects.list(tenant, recording_id=recording_id)
    return sorted((o.kind, o.state) for o in objects if o.kind != "audio")


async def test_a_job_waiting_on_a_silent_nodes_spool_fails_at_once_and_reopens_once(
    aiohttp_client: Callable, tmp_path: Path
) -> None:
    clock = FakeClock()
    settings = quiet_settings(tmp_path / "var")
    client = await aiohttp_client(GatewayServer(build_app(settings, clock=clock)))
    gw = await start_gateway(client)
    node = gw.app[NODE]
    catalog = gw.app[SERVICES].catalog
    worker = new_worker(gw, settings, clock, ScriptedTranscriber())
    tenant = await gw.tenant("acme", AI_ONLY)
    call = sample_call("support")
    announced = await gw.announce(tenant)
    await stream_twilio(gw, tenant, announced["call_id"], call.inbound, call.outbound)
    recording_id = announced["recording_id"]
    audio = [
        o
        for o in await catalog.objects.list("acme", recording_id=recording_id)
        if o.kind == "audio"
    ]
    assert audio and {o.node_id for o in audio} == {node.id}  # spooled on this node
    await set_audio_state(settings.catalog_url, recording_id, "writing")

    # The node is up: the job waits for its spool, uncounted.
    await node.watch(clock.now())
    assert await worker.run_once() is True
    job = (await catalog.jobs.list("acme", recording_id=recording_id))[0]
    assert (job.status, job.attempts) == ("queued", 0)

    # Its heartbeat is older than dead_after (nobody declared it yet): failed at once.
    clock.advance(31)
    assert await worker.run_once() is True
    job = (await catalog.jobs.list("acme", recording_id=recording_id))[0]
    assert (job.status, job.attempts) == ("failed", 0)
    assert job.last_error is not None and job.last_error.startswith(NODE_DEAD + ":")
    assert repr(node.id) in job.last_error
    recording = await catalog.recordings.get("acme", recording_id)
    assert (recording.status, recording.failure_reason) == ("failed", job.last_error)
    # Nothing purged: the audio (AI-only, so it would be shredded by a give-up) is all there.
    after = await catalog.objects.list("acme", recording_id=recording_id)
    assert sorted(o.state for o in after if o.kind == "audio") == ["committed", "writing"]
    assert not recording.audio_purged
    events = await catalog.audit.list("acme", limit=1000)
    assert "ai.purged" not in [e.action for e in events]
    assert await worker.run_once() is False  # a failed job is not handed out

    # Back, but its spool not yet published: nothing to reopen.
    assert await node.reopen(clock.now()) == 0
    await set_audio_state(settings.catalog_url, recording_id, "committed")
    # Its next heartbeat sees it was late (workers may have failed its jobs): its next
    # look reopens the job, once.
    await node.heartbeat(clock.now())
    await node.watch(clock.now())
    assert await node.reopen(clock.now()) == 0
    recording = await catalog.recordings.get("acme", recording_id)
    assert (recording.status, recording.failure_reason) == ("processing", None)
    assert recording.samples and recording.samples >= len(call.inbound)

    assert await worker.run_once() is True
    assert await worker.run_once() is False
    job = (await catalog.jobs.list("acme", recording_id=recording_id))[0]
    assert (job.status, job.attempts) == ("done", 1)
    assert (await catalog.recordings.get("acme", recording_id)).status == "analyzed"
    assert await results(catalog, "acme", recording_id) == [
        ("analysis", "committed"),
        ("transcript", "committed"),
    ]
    events = await catalog.audit.list("acme", limit=1000)
    assert [e.action for e in events].count("ai.purged") == 1
    await worker.close()


# --- a dead node's live call, on two in-process nodes -------------------------------------


async def stream_until_spooled(
    gw: Gateway, pbx: str, call_id: str, audio: bytes
) -> aiohttp.ClientWebSocketResponse:
    """Stream ``audio`` on both tracks without a stop; return the open WebSocket once the
    node has taken every frame (sending is not processing) and part of it is sealed into
    the node's spool (an audio object ``writing``)."""
    frames_in = gw.app[METRICS].frames_in.labels("twilio")
    taken = frames_in._value.get()
    ws = await gw.client.ws_connect("/v1/ingest/twilio", headers=bearer(pbx))
    await ws.send_str(twilio_start(call_id))
    for message in twilio_call(audio, audio):
        await ws.send_str(message)
        taken += 1
    catalog = gw.app[SERVICES].catalog
    async with asyncio.timeout(20):
        while frames_in._value.get() < taken:  # noqa: ASYNC110 - the state is another task's
            await asyncio.sleep(0.01)
        while True:
            writing = await catalog.objects.list("acme", state="writing")
            if len([o for o in writing if o.kind == "audio"]) == 2:
                return ws
            await asyncio.sleep(0.05)


async def test_a_dead_nodes_live_call_ends_and_its_job_reopens_when_the_node_is_back(
    aiohttp_client: Callable, tmp_path: Path, database_url: str
) -> None:
    clock = FakeClock()
    shared = {"database_url": database_url, "store": {"url": (tmp_path / "objects").as_uri()}}
    a_settings = quiet_settings(tmp_path / "a", ingest={"flush_bytes": 1024}, **shared)
    a = await start_gateway(await aiohttp_client(GatewayServer(build_app(a_settings, clock=clock))))
    tenant = await a.tenant("acme", {**AI_ONLY, "consent": {"required": False}})
    response = await a.client.patch(
        "/v1/tenants/acme", json={"limits": {"live_calls": 1}}, headers=bearer(a.operator)
    )
    assert response.status == 200, await response.text()
    announced = await a.announce(tenant)
    call_id, recording_id = announced["call_id"], announced["recording_id"]
    audio = sample_call("support").inbound[: 8000 * 3]
    ws = await stream_until_spooled(a, tenant.pbx, call_id, audio)

    # A second node on the same catalog, store and keys (the keyring as the fleet shares it).
    (tmp_path / "b").mkdir(mode=0o700)
    for name in (MASTER_KEY_FILE, KEYRING_FILE):
        shutil.copy2(tmp_path / "a" / name, tmp_path / "b" / name)
    b_settings = quiet_settings(tmp_path / "b", **shared)
    b_client = await aiohttp_client(GatewayServer(build_app(b_settings, clock=clock)))
    b = Gateway(client=b_client, operator=a.operator)
    catalog = b.app[SERVICES].catalog
    a_id, b_id = a.app[NODE].id, b.app[NODE].id
    assert a_id != b_id
    response = await b.client.post(
        "/v1/tenants/acme/calls",
        json={"from": "+40711111111", "to": "+40722222222", "transport": "twilio"},
        headers=bearer(tenant.pbx),
    )
    assert response.status == 429  # A's call is live: the tenant's one place is taken

    # A stops heartbeating (stalled); B looks after dead_after: declares it, ends its call.
    clock.advance(31)
    await b.app[NODE].watch(clock.now())
    assert (await catalog.nodes.get(a_id)).state == "dead"
    metrics = await (await b.client.get("/metrics")).text()
    assert metric_value(metrics, "callvault_nodes_declared_dead_total") == 1.0
    assert metric_value(metrics, "callvault_nodes", state="dead") == 1.0
    call = await catalog.calls.get("acme", call_id)
    assert call.ended_at == clock.now()
    ended = [e for e in await catalog.audit.list("acme", limit=1000) if e.action == "call.ended"]
    assert [e.detail["reason"] for e in ended] == ["node_dead"]
    # Its job was queued by the end and failed at once: its audio is in A's spool.
    (job,) = await catalog.jobs.list("acme", recording_id=recording_id)
    assert (job.status, job.attempts) == ("failed", 0)
    assert job.last_error is not None and job.last_error.startswith(NODE_DEAD + ":")
    assert repr(a_id) in job.last_error
    recording = await catalog.recordings.get("acme", recording_id)
    assert (recording.status, recording.samples) == ("failed", 0)
    # Nothing purged: both tracks' audio is still there, in A's spool or (A's own ticker
    # saw its stream's lease run out on the clock that jumped, and the call end) published
    # from it since.
    audio_objects = await catalog.objects.list("acme", recording_id=recording_id)
    assert sorted((o.kind, o.state != "deleted") for o in audio_objects) == [
        ("audio", True),
        ("audio", True),
    ]
    # The call no longer counts against live_calls: B takes a new one.
    again = await b.announce(tenant)
    assert again["node"] == b_id
    await b.app[NODE].watch(clock.now())  # settling again changes nothing
    assert len(await catalog.jobs.list("acme", recording_id=recording_id)) == 1

    # A is back: its heartbeat learns it was declared dead; it finalizes its session of the
    # ended call (publishing its spool) and reopens the job.
    await b.app[NODE].heartbeat(clock.now())
    await a.app[NODE].heartbeat(clock.now())
    assert (await catalog.nodes.get(a_id)).state == "up"
    assert await catalog.objects.list("acme", recording_id=recording_id, state="writing") == []
    await a.app[NODE].watch(clock.now())
    (job,) = await catalog.jobs.list("acme", recording_id=recording_id)
    assert (job.status, job.last_error) == ("queued", None)
    recording = await catalog.recordings.get("acme", recording_id)
    assert recording.status == "processing"
    assert recording.samples and recording.samples >= len(audio)
    await ws.close()

    worker = build_worker(
        a_settings,
        a.app[SERVICES],
        now=clock.now,
        metrics=a.app[AI_METRICS],
        analyzer=Analyzer(ScriptedTranscriber),
    )
    try:
        assert await worker.run_once() is True
        assert await worker.run_once() is False
    finally:
        await worker.close()
    (job,) = await catalog.jobs.list("acme", recording_id=recording_id)
    assert (job.status, job.attempts) == ("done", 1)
    assert await results(catalog, "acme", recording_id) == [
        ("analysis", "committed"),
        ("transcript", "committed"),
    ]
    verified = await (
        await b.client.get("/v1/tenants/acme/audit/verify", headers=bearer(tenant.admin))
    ).json()
    assert verified["ok"] is True, verified


# --- a killed node, restarted --------------------------------------------------------------


async def test_a_killed_node_is_declared_dead_and_reopens_its_jobs_when_restarted(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "a"
    operator = WATCH.remember_value("token", "a-long-operator-token-for-the-node-tests-0123")
    env = {
        "CALLVAULT_OPERATOR_TOKEN": operator,
        "CALLVAULT_INGEST__FLUSH_BYTES": "1024",
        "CALLVAULT_NODE__HEARTBEAT_INTERVAL": "PT0.5S",
    }
    process, base = start_serve(data_dir, **env)
    try:
        async with aiohttp.ClientSession(base_url=base) as session:
            gw = Gateway(client=session, operator=operator)  # type: ignore[arg-type]
            tenant = await gw.tenant("acme", {**AI_ONLY, "consent": {"required": False}})
            announced = await gw.announce(tenant)
            audio = sample_call("support").inbound[: 8000 * 3]
            ws = await session.ws_connect("/v1/ingest/twilio", headers=bearer(tenant.pbx))
            await ws.send_str(twilio_start(announced["call_id"]))
            for message in twilio_call(audio):
                await ws.send_str(message)
            await frames_taken(session, len(audio) // 160)
            kill(process)
            await ws.close()
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        if process.stdout:
            WATCH.watch_output(process.stdout.read(), "serve")
            process.stdout.close()
    node_id = (data_dir / NODE_ID_FILE).read_text().strip()
    recording_id = announced["recording_id"]

    # Another node (in this process, on the same catalog and keys) watches after dead_after.
    settings = Settings(data_dir=data_dir, ai={"workers": 0})
    async with open_services(settings) as services:
        catalog = services.catalog
        observer = NodeKeeper(
            node_id="observer",
            addresses=NodeAddresses.of(settings),
            settings=settings.node,
            catalog=catalog,
            calls=CallRegistry(
                catalog=catalog,
                vault=services.vault,
                limits=SessionLimits(),
                metrics=GatewayMetrics(None),
                node_id="observer",
            ),
            metrics=GatewayMetrics(None),
            spool=None,
        )
        await observer.watch(datetime.now(UTC) + timedelta(seconds=40))
        assert (await catalog.nodes.get(node_id)).state == "dead"
        call = await catalog.calls.get("acme", announced["call_id"])
        assert call.ended_at is not None
        (job,) = await catalog.jobs.list("acme", recording_id=recording_id)
        assert job.status == "failed" and repr(node_id) in (job.last_error or "")

        # Restarted: it publishes its spool and reopens the job before it serves.
        process, _ = start_serve(data_dir, **env)
        try:
            (job,) = await catalog.jobs.list("acme", recording_id=recording_id)
            assert job.status == "queued"
            node = await catalog.nodes.get(node_id)
            assert (node.state, node.dead_at) == ("up", None)
            recording = await catalog.recordings.get("acme", recording_id)
            assert recording.status == "processing"
            assert recording.samples and recording.samples >= len(audio) - 1024
            worker = build_worker(
                settings,
                services,
                now=lambda: datetime.now(UTC),
                analyzer=Analyzer(ScriptedTranscriber),
            )
            try:
                assert await worker.run_once() is True
                assert await worker.run_once() is False
            finally:
                await worker.close()
            (job,) = await catalog.jobs.list("acme", recording_id=recording_id)
            assert (job.status, job.attempts) == ("done", 1)
            assert await results(catalog, "acme", recording_id) == [
                ("analysis", "committed"),
                ("transcript", "committed"),
            ]
        finally:
            process.kill()
            process.wait(timeout=10)
            if process.stdout:
                WATCH.watch_output(process.stdout.read(), "serve")
                process.stdout.close()

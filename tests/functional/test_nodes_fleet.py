"""Dead nodes at fleet scale and under races (``storage.catalog.nodes``, ``gateway.nodes``):
a node back reopens every job failed on its account, however many and whatever sits at
the head of the list; a call another node took over is never ended as its dead node's; a
slow restart keeps its heartbeat; a node that stops with calls it could not finalize is
left to be declared dead, so that they are ended. Real SQLite and PostgreSQL (one test
needs PostgreSQL's table locks); time passed in."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.app import build_app
from gateway.calls import CallRegistry
from gateway.errors import StreamRefused
from gateway.metrics import GatewayMetrics
from gateway.nodes import REOPEN_PAGE, NodeAddresses, NodeKeeper
from gateway.services import Services, open_services
from gateway.session import SessionLimits
from gateway.settings import Settings
from gateway.state import NODE, SERVICES
from storage.catalog import NODE_DEAD, Catalog
from storage.catalog.records import Call
from storage.media.tracks import encode_record
from tests.functional.test_nodes import DEAD_AFTER, quiet_settings, stream_until_spooled
from tests.gateway import T0, FakeClock, GatewayServer, start_gateway
from tests.keyring import audit_keyring
from tests.postgres import pg_connect

RECORD_AI = {"recording": {"enabled": True}, "ai": {"transcript": True}}
AUDIO = bytes(range(256)) * 8
"""What a good recording's published audio holds: 2048 bytes of PCMU, 2048 samples."""


@pytest.fixture
async def services(database_url: str, tmp_path: Path) -> AsyncIterator[Services]:
    """A node's catalog, store and keyring (open_services, as serve opens them)."""
    settings = Settings(data_dir=tmp_path / "var", database_url=database_url)
    async with open_services(settings) as opened:
        await opened.catalog.tenants.create("acme", "Acme", "eu", T0)
        await opened.catalog.instructions.add("acme", RECORD_AI, "adm", T0)
        yield opened


def registry(services: Services, node_id: str) -> CallRegistry:
    return CallRegistry(
        catalog=services.catalog,
        vault=services.vault,
        limits=SessionLimits(),
        metrics=GatewayMetrics(None),
        node_id=node_id,
    )


def keeper(services: Services, node_id: str, calls: CallRegistry | None = None) -> NodeKeeper:
    settings = Settings(data_dir=Path("unused"), node={"dead_after": DEAD_AFTER})
    return NodeKeeper(
        node_id=node_id,
        addresses=NodeAddresses.of(settings),
        settings=settings.node,
        catalog=services.catalog,
        calls=calls or registry(services, node_id),
        metrics=GatewayMetrics(None),
        spool=None,
    )


async def announce(catalog: Catalog, call_id: str, node_id: str) -> Call:
    call, recording = await catalog.calls.announce(
        id=call_id,
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
        recording_id="rec-" + call_id,
        node_id=node_id,
    )
    assert recording is not None
    return call


async def set_audio_node(catalog_url: str, node_id: str) -> None:
    """Note every audio object as spooled on ``node_id`` (``put_object`` seals straight to
    the store; the objects of a live call are sealed into its node's spool)."""
    engine = create_async_engine(catalog_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                sa.text("UPDATE objects SET node_id = :node WHERE kind = 'audio'"),
                {"node": node_id},
            )
    finally:
        await engine.dispose()


# --- a node back reopens every job failed on its account ----------------------------------


async def test_a_node_back_reopens_every_job_failed_on_its_account(
    services: Services, database_url: str
) -> None:
    """More jobs than one page, behind a full page of jobs that can never be reopened
    (their recordings erased meanwhile): every reopenable one is reopened, in one pass, and
    one whose audio can never be read is handed to the workers rather than kept."""
    catalog, vault = services.catalog, services.vault
    await catalog.nodes.register("gw1", {}, T0)
    erased = [f"erased-{i:03}" for i in range(REOPEN_PAGE)]
    good = [f"good-{i:03}" for i in range(REOPEN_PAGE + 5)]
    lost = "lost-000"  # its published audio is gone from the store
    for n, call_id in enumerate(erased + good + [lost]):
        await announce(catalog, call_id, "gw1")
        created = T0 + timedelta(milliseconds=n)  # the jobs' order: the erased ones first
        if call_id in erased:
            await catalog.objects.add(
                object_id="obj-" + call_id,
                tenant_id="acme",
                kind="audio",
                data_class="recordings",
                store_key="acme/objects/obj-" + call_id,
                now=created,
                recording_id="rec-" + call_id,
                track="inbound",
                node_id="gw1",
            )
            await catalog.objects.mark_committed("obj-" + call_id, size=10, now=created)
        else:
            stored = await vault.put_object(
                encode_record(0, AUDIO),
                tenant="acme",
                kind="audio",
                data_class="recordings",
                now=created,
                recording_id="rec-" + call_id,
                track="inbound",
            )
            if call_id == lost:
                await services.store.delete_many([stored.store_key])
        await catalog.recordings.finish(
            "acme", "rec-" + call_id, samples=0, now=created, job_id="job-" + call_id
        )
    await set_audio_node(database_url, "gw1")
    away = T0 + timedelta(minutes=1)
    await catalog.nodes.declare_dead(away, DEAD_AFTER, by="gw2")
    for job in await catalog.jobs.list("acme"):
        failed = await catalog.nodes.fail_waiting(job, "gw1", away, dead_after=DEAD_AFTER)
        assert failed is not None and failed.status == "failed"
    for call_id in erased:
        await catalog.recordings.update_status("acme", "rec-" + call_id, "deleted", away)

    # The erased ones are not listed at all; the others in pages, after a cursor.
    first = await catalog.nodes.failed_while_away("gw1", limit=REOPEN_PAGE)
    assert [j.id for j in first] == ["job-" + c for c in good[:REOPEN_PAGE]]
    last = first[-1]
    rest = await catalog.nodes.failed_while_away("gw1", after=(last.created_at, last.id))
    assert [j.id for j in rest] == ["job-" + c for c in good[REOPEN_PAGE:] + [lost]]

    node = keeper(services, "gw1")
    back = away + timedelta(seconds=5)
    await node.join(back)
    assert await node.reopen(back) == len(good) + 1
    for job in await catalog.jobs.list("acme"):
        expected = "failed" if job.id.startswith("job-erased") else "queued"
        assert job.status == expected, job
        if expected == "failed":
            assert (job.last_error or "").startswith(NODE_DEAD + ":")
    for call_id in good:
        recording = await catalog.recordings.get("acme", "rec-" + call_id)
        assert (recording.status, recording.samples) == ("processing", len(AUDIO))
    # The lost audio's recording is reopened with the timeline it had: a worker fails it.
    recording = await catalog.recordings.get("acme", "rec-" + lost)
    assert (recording.status, recording.samples) == ("processing", 0)
    assert await catalog.nodes.failed_while_away("gw1") == []
    assert await node.reopen(back) == 0


# --- a call taken over is not ended as its dead node's -------------------------------------


async def test_a_call_taken_over_is_not_ended_for_its_dead_node(services: Services) -> None:
    """A settling node lists a dead node's live call; meanwhile the PBX reconnects through
    the load balancer and another node takes the call over. The settling node, working
    from its stale list, ends nothing; and one that ended the call first makes the
    takeover fail, so that the reconnecting stream is refused as for any ended call."""
    catalog = services.catalog
    for node_id in ("A", "B", "C"):
        await catalog.nodes.register(node_id, {}, T0)
    taken = await announce(catalog, "taken", "A")
    ended = await announce(catalog, "ended", "A")
    later = T0 + timedelta(minutes=1)
    for node_id in ("B", "C"):
        await catalog.nodes.heartbeat(node_id, later)
    assert [n.id for n in await catalog.nodes.declare_dead(later, DEAD_AFTER, by="C")] == ["A"]
    stale = {c.id: c for c in await catalog.nodes.live_calls_of_dead()}
    assert set(stale) == {"taken", "ended"}

    # B takes "taken" over; C's settling, from its stale list, leaves it alone.
    recording = await catalog.recordings.of_call("acme", "taken")
    assert recording is not None
    b = registry(services, "B")
    await b._restore(taken, recording, later, take_over=True)
    assert [s.call_id for s in b.live()] == ["taken"]
    c = registry(services, "C")
    assert await c.end_for_dead_node(stale["taken"], later) is False
    call = await catalog.calls.get("acme", "taken")
    assert (call.node_id, call.ended_at) == ("B", None)
    kept = await catalog.recordings.get("acme", "rec-taken")
    assert kept.status == "recording"
    assert await catalog.jobs.list("acme") == []
    # The same race within B: its watch (a task of its own) ends nothing B restored.
    assert await registry(services, "B").end_for_dead_node(stale["taken"], later) is False
    assert (await catalog.recordings.get("acme", "rec-taken")).status == "recording"
    await b.end("acme", "taken", now=later, reason="stop")

    # C ends "ended" first; B's restore, from rows read before, is refused: call_ended.
    recording = await catalog.recordings.of_call("acme", "ended")
    assert recording is not None
    assert await c.end_for_dead_node(stale["ended"], later) is True
    with pytest.raises(StreamRefused) as refused:
        await b._restore(ended, recording, later, take_over=True)
    assert refused.value.code == "call_ended"
    assert [s.call_id for s in b.live()] == []
    call = await catalog.calls.get("acme", "ended")
    assert call.node_id == "A" and call.ended_at == later


async def test_only_a_node_whose_stream_claimed_the_call_takes_it_over(
    services: Services,
) -> None:
    """Node B carries a call. Node A takes it up without carrying it: its spool recovery
    finds audio of the call (A carried it before), or an API request through A (a pause)
    needs its session. The call's row still names B, so that if B dies the call is ended
    for B, and never for A while B records it. Only a stream of A that claimed the call's
    lease makes A its node."""
    catalog = services.catalog
    for node_id in ("A", "B"):
        await catalog.nodes.register(node_id, {}, T0)
    await announce(catalog, "carried", "B")
    a = registry(services, "A")

    assert await a._take_up("acme", "rec-carried", T0) is True  # what recover() does
    assert (await catalog.calls.get("acme", "carried")).node_id == "B"
    a = registry(services, "A")
    await a.set_paused("acme", "carried", True, T0)
    assert (await catalog.calls.get("acme", "carried")).node_id == "B"

    a = registry(services, "A")
    holder = a.attachments.new_holder()
    lease = await catalog.calls.stream_lease("acme", "carried")
    assert lease.attached_by is None  # B's stream dropped; A's claim is taken
    await a.claim_stream("acme", "carried", peer=None, holder=holder, now=T0)
    await a.session("acme", "carried", T0, carry=True)
    assert (await catalog.calls.get("acme", "carried")).node_id == "A"


# --- a slow restart keeps its heartbeat ----------------------------------------------------


async def until(conn: asyncpg.Connection, query: str, value: object, *, within: float) -> None:
    """Wait until ``query`` answers ``value`` (what another task changes)."""
    async with asyncio.timeout(within):
        while await conn.fetchval(query) != value:  # noqa: ASYNC110 - another task's state
            await asyncio.sleep(0.02)


@pytest.mark.postgres
@pytest.mark.integration
async def test_a_slow_restart_heartbeats_before_it_serves(
    aiohttp_client: Callable[..., Any], tmp_path: Path, database_url_postgresql: str
) -> None:
    """The node's start-up (publishing its spool, taking its calls up, reopening its jobs)
    is held on a table lock for longer than ``dead_after``: its heartbeat runs all along,
    so no other node declares it dead; its watch starts only once start-up is done."""
    url = database_url_postgresql
    keys = audit_keyring(tmp_path / "keys")
    migrated = await Catalog.open(url, audit_keys=keys)
    try:
        await migrated.migrate()
    finally:
        await migrated.close()
    clock = FakeClock()
    settings = Settings(
        data_dir=tmp_path / "a",
        database_url=url,
        audiosocket={"port": 0},
        ai={"workers": 0},
        retention={"sweep_interval": "PT0S"},
        audit={"checkpoint_interval": "PT0S"},
        node={"heartbeat_interval": "PT0.05S", "dead_after": "PT30S"},
    )
    lock: asyncpg.Connection = await pg_connect(url.rsplit("/", 1)[1])
    transaction = lock.transaction()
    await transaction.start()
    await lock.execute("LOCK TABLE recordings IN ACCESS EXCLUSIVE MODE")
    starting = asyncio.create_task(aiohttp_client(GatewayServer(build_app(settings, clock=clock))))
    try:
        await until(lock, "SELECT count(*) FROM nodes", 1, within=30)  # registered
        for _ in range(3):  # 60 s of start-up in all, twice dead_after
            beat = clock.advance(DEAD_AFTER.total_seconds() * 2 / 3)
            await until(lock, "SELECT max(heartbeat_at) FROM nodes", beat, within=10)
        assert not starting.done()  # still held in its start-up
        observer = await Catalog.open(url, audit_keys=keys)
        try:
            assert await observer.nodes.declare_dead(clock.now(), DEAD_AFTER, by="x") == []
        finally:
            await observer.close()
    finally:
        await transaction.rollback()
        await lock.close()
        client = await starting
    gw = await start_gateway(client)
    node = await gw.app[SERVICES].catalog.nodes.get(gw.app[NODE].id)
    assert node.state == "up"


# --- a node that stops with calls it could not finalize ------------------------------------


async def refuse_recording_updates(catalog_url: str, refuse: bool) -> None:
    """A trigger that makes the catalog fail every change of a recording (a real database
    error, as a catalog failing mid-shutdown gives), or its removal."""
    engine = create_async_engine(catalog_url)
    postgres = catalog_url.startswith("postgresql")
    try:
        async with engine.begin() as conn:
            if not refuse:
                await conn.execute(sa.text("DROP TRIGGER refuse_updates ON recordings" if postgres
                                           else "DROP TRIGGER refuse_updates"))  # fmt: skip
            elif postgres:
                await conn.execute(sa.text(
                    "CREATE FUNCTION refuse_updates() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$"
                ))  # fmt: skip
                await conn.execute(sa.text(
                    "CREATE TRIGGER refuse_updates BEFORE UPDATE ON recordings "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_updates()"
                ))  # fmt: skip
            else:
                await conn.execute(sa.text(
                    "CREATE TRIGGER refuse_updates BEFORE UPDATE ON recordings "
                    "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
                ))  # fmt: skip
    finally:
        await engine.dispose()


async def test_a_node_stopping_with_unfinished_calls_is_declared_dead_and_they_end(
    aiohttp_client: Callable[..., Any], tmp_path: Path, database_url: str
) -> None:
    clock = FakeClock()
    settings = quiet_settings(
        tmp_path / "a", database_url=database_url, ingest={"flush_bytes": 1024}
    )
    client = await aiohttp_client(GatewayServer(build_app(settings, clock=clock)))
    gw = await start_gateway(client)
    node_id = gw.app[NODE].id
    tenant = await gw.tenant("acme", {"recording": {"enabled": True}})
    announced = await gw.announce(tenant)
    ws = await stream_until_spooled(gw, tenant.pbx, announced["call_id"], AUDIO * 4)
    await ws.close()
    await refuse_recording_updates(database_url, True)
    await client.close()  # its call cannot be finalized: the node is not marked stopped
    await refuse_recording_updates(database_url, False)

    async with open_services(settings) as services:
        catalog = services.catalog
        assert (await catalog.nodes.get(node_id)).state == "up"
        call = await catalog.calls.get("acme", announced["call_id"])
        assert call.ended_at is None
        observer = keeper(services, "observer")
        await observer.watch(clock.now() + DEAD_AFTER + timedelta(seconds=1))
        assert (await catalog.nodes.get(node_id)).state == "dead"
        call = await catalog.calls.get("acme", announced["call_id"])
        assert call.ended_at is not None
        recording = await catalog.recordings.of_call("acme", announced["call_id"])
        assert recording is not None and recording.status == "recorded"
        assert recording.samples and recording.samples > 0
        ended = [e for e in await catalog.audit.list("acme", limit=100) if e.action == "call.ended"]
        assert [e.detail["reason"] for e in ended] == ["node_dead"]

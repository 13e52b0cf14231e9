"""A fleet, tested as one (issue 16): two ``callvault serve`` (ingest only) and two
``callvault worker`` processes on loopback, each with its own data dir, on one PostgreSQL
database, one SeaweedFS bucket and one master key, with the tenants' keys kept by the fleet
(``tests/fleet.py`` starts and stops them).

Twenty calls stream in real time, spread over both gateways (Twilio, mod_audio_fork,
AudioSocket and SRTP on each), and one call of real speech is analysed by a worker that is
SIGKILLed mid-job; gateway ``b`` is SIGKILLed mid-call and restarted on its data dir. Then:

* every call is recorded once (one recording per call), and its audio, read through the
  gateway that did *not* record it, holds every frame that was sent: on the killed
  gateway, what it had sealed into its spool before the kill (published by it after its
  restart) and what its PBX sent after reconnecting;
* every recording is analysed exactly once (one job, done; one transcript and one
  analysis), the killed worker's job by the other worker after its lease ran out, and its
  transcript, read through the other gateway, is the call's speech;
* a token revoked on gateway ``a`` is refused on gateway ``b`` at once;
* retention sweeps run from both gateways at once delete each expired object once (one
  receipt naming it, its bytes gone from the bucket);
* the tenant's audit chain, written by every process, has no gap or fork and verifies
  through both gateways and ``callvault audit verify`` on both.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from tests.ai import sample_call, wer
from tests.conftest import S3Server
from tests.fleet import Fleet, FleetCatalog, Gateway, SharedParts, finish, fleet_on, poll
from tests.gateway import bearer, metric_value
from tests.integration.test_ai_pipeline import TINY_WER_BOUND, track_text
from tests.paced import RECONNECTS, PacedCall, Tenant, Transport, channel, export, taken, track_loss
from tests.served import push_call
from tests.vaultserver import BaoServer

T = TypeVar("T")

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.s3]

TENANT = "acme"
INSTRUCTIONS: dict[str, Any] = {
    "recording": {"enabled": True},
    "consent": {"required": False},
    "ai": {"transcript": True, "talk_listen": True},
}
EXPIRED = {
    **INSTRUCTIONS,
    "retention": {"recordings": "PT1S", "transcripts": "PT1S", "call_records": "P1D"},
}
"""Windows every call of the test has outlived by the time the sweeps run."""
MIX: tuple[tuple[Transport, bool], ...] = (
    *(("twilio", False),) * 3,
    *(("fork", False),) * 3,
    *(("audiosocket", False),) * 2,
    *(("rtp", True),) * 2,  # SRTP
)
"""The calls each gateway takes: 2 x 10 = 20."""
PACED_SECONDS = 7.0
KILL_AFTER_S = 3.0
"""When gateway ``b``'s calls stop sending (its PBX sees it die), into the calls."""
SETTLED_S = 2.5
"""Gateway ``b`` is killed once its sealed bytes have not grown for this long: it has
flushed what it took (five flush intervals; a loaded runner runs flushes late). What a
kill in the middle of a flush interval loses is bounded by tests/functional/test_crash.py;
here nothing that was sent may be lost."""
SPEECH = "support"
"""The sample call (33 s of eSpeak NG speech) whose job the killed worker held."""
INTO_THE_JOB_S = 0.3
ANALYSIS_TIMEOUT_S = 150.0
EXPORT_WAIT_S = 30.0
RESULT_KINDS = [("analysis", "committed"), ("transcript", "committed")]


@pytest.fixture(params=["catalog", "vault"])
def parts(
    request: pytest.FixtureRequest,
    database_url_postgresql: str,
    seaweedfs: S3Server,
    s3_bucket: str,
) -> Iterator[SharedParts]:
    """The shared parts, with the tenants' keys kept by the fleet: in the catalog (wrapped
    by the master key every process is given), or in OpenBao transit (``bao server -dev``,
    a key prefix of this test's own; the audit keys stay in the catalog keyring)."""
    custody = {"CALLVAULT_KEYS__PROVIDER": request.param}
    if request.param == "vault":
        bao: BaoServer = request.getfixturevalue("bao")
        custody.update(
            CALLVAULT_KEYS__VAULT_ADDR=bao.addr,
            CALLVAULT_KEYS__VAULT_TOKEN=bao.token,
            CALLVAULT_KEYS__VAULT_KEY_PREFIX=f"cvfleet{secrets.token_hex(4)}-",
        )
    yield SharedParts(
        database_url=database_url_postgresql,
        store={
            "CALLVAULT_STORE__URL": f"s3://{s3_bucket}",
            "CALLVAULT_STORE__ENDPOINT_URL": seaweedfs.endpoint_url,
            "CALLVAULT_STORE__ACCESS_KEY": seaweedfs.access_key,
            "CALLVAULT_STORE__SECRET_KEY": seaweedfs.secret_key,
            "CALLVAULT_STORE__REGION": seaweedfs.region,
        },
        custody=custody,
    )


@pytest.mark.timeout(360)
async def test_two_gateways_and_two_workers_work_as_one(
    tmp_path: Path, parts: SharedParts, seaweedfs: S3Server, s3_bucket: str
) -> None:
    began = time.monotonic()
    catalog = FleetCatalog(parts.database_url)
    with fleet_on(tmp_path, parts) as fleet:
        a, b = fleet.gateways["a"], fleet.gateways["b"]
        async with aiohttp.ClientSession() as http:
            await asyncio.to_thread(fleet.start)
            tokens = await make_tenant(http, a.base, parts.operator)
            started_s = time.monotonic() - began
            tenant = Tenant(TENANT, tokens["admin"], tokens["pbx"])

            # The speech call's job, taken by one worker, which is killed holding it.
            speech = sample_call(SPEECH)
            async with aiohttp.ClientSession(a.base) as on_a:
                analysed = await push_call(
                    on_a, TENANT, tokens["pbx"], speech.inbound, speech.outbound
                )
            # Twenty paced calls, ten on each gateway, through gateway b's death; the
            # worker holding the speech call's job is killed meanwhile.
            calls = {
                name: [
                    PacedCall(transport, tenant, PACED_SECONDS, seed=10 * i + n, srtp=srtp)
                    for n, (transport, srtp) in enumerate(MIX)
                ]
                for i, name in enumerate(fleet.gateways)
            }
            everyone = [call for group in calls.values() for call in group]
            async with tasks_of(kill_worker_mid_job(fleet, catalog, analysed)) as (worker_kill,):
                await calls_through_a_gateway_kill(http, fleet, calls, "b")
                killed_owner = await worker_kill

            recorded_on = {analysed: "a"}
            recorded_on.update((call.recording_id, name) for name, group in calls.items()
                               for call in group)  # fmt: skip
            await poll(
                lambda: all_analysed(catalog, set(recorded_on)),
                "analysis of every recording",
                fleet.logs,
                timeout_s=ANALYSIS_TIMEOUT_S,
            )
            calls_s = time.monotonic() - began

            await check_recorded_once(catalog, fleet, recorded_on)
            await check_one_kek(catalog, parts)
            await check_analysed_once(catalog, recorded_on, analysed, killed_owner)
            # Read through the gateway that did not record it, all at once: both gateways
            # append their reads' audit events to the tenant's one chain meanwhile.
            other = {"a": b.base, "b": a.base}
            admin, processor = tokens["admin"], tokens["processor"]
            results = await asyncio.gather(
                *(check_audio(http, other[name], admin, call, killed=name == "b")
                  for name, group in calls.items() for call in group),
                *(read_transcript(http, other[name], processor, recording_id)
                  for recording_id, name in recorded_on.items()),
            )  # fmt: skip
            by_recording = dict(zip(recorded_on, results[len(everyone) :], strict=True))
            heard = track_text(by_recording[analysed], "inbound")
            assert wer(speech.text["inbound"], heard) <= TINY_WER_BOUND, heard

            await check_revocation_across_nodes(http, a.base, b.base, tokens["admin"])
            swept = await check_sweeps_from_both_nodes(
                http, fleet, catalog, seaweedfs, s3_bucket, tokens["admin"]
            )
            events = await check_one_audit_chain(http, fleet, catalog, tokens["admin"])
        local_keys = await asyncio.to_thread(keys_in_data_dirs, tmp_path)
        assert local_keys == [], f"keys kept by one node, not by the fleet: {local_keys}"
    print(
        f"\nfleet ({parts.custody['CALLVAULT_KEYS__PROVIDER']}): started in {started_s:.1f} s, "
        f"calls analysed at {calls_s:.1f} s, done in {time.monotonic() - began:.1f} s; "
        f"objects deleted by the sweeps on a and b: {swept['a']} + {swept['b']}; "
        f"{events} audit events in one chain"
    )


@contextlib.asynccontextmanager
async def tasks_of(*coroutines: Coroutine[Any, Any, T]) -> AsyncIterator[list[asyncio.Task[T]]]:
    """The coroutines as tasks for the ``with`` block; any still running at its end (the
    block failed) is cancelled and awaited, so that nothing outlives the test."""
    tasks = [asyncio.create_task(coroutine) for coroutine in coroutines]
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def check_answered_by(gateway: Gateway, call: PacedCall) -> None:
    """The announcement answers the node that took it and that node's own listeners (so a
    load balancer may send announcements to any node)."""
    announced, ingest = call.announced, call.announced["ingest"]
    rtp = ingest.get("rtp") or {}
    # What the failure shows: never the AudioSocket id or the SRTP keys of the answer.
    where = (
        gateway.name,
        call.transport,
        announced["node"],
        ingest.get("websocket_url"),
        (ingest.get("audiosocket") or {}).get("address"),
        {track: rtp.get(track) for track in ("host", "inbound", "outbound")},
    )
    assert announced["node"] == gateway.node_id, where
    if call.transport in ("twilio", "fork"):
        assert ingest["websocket_url"] == f"ws://127.0.0.1:{gateway.http_port}" + (
            f"/v1/ingest/{call.transport}"
        ), where
    elif call.transport == "audiosocket":
        assert ingest["audiosocket"]["address"] == f"127.0.0.1:{gateway.audiosocket_port}", where
    else:
        low, high = gateway.rtp_ports
        assert rtp["host"] == "127.0.0.1", where
        assert all(low <= rtp[track] <= high for track in ("inbound", "outbound")), where


async def calls_through_a_gateway_kill(
    http: aiohttp.ClientSession, fleet: Fleet, calls: dict[str, list[PacedCall]], victim: str
) -> None:
    """Announce each gateway's calls on it and run them all in real time; ``KILL_AFTER_S``
    in, SIGKILL gateway ``victim`` once it has taken and sealed what its calls sent, and
    restart it on its data dir while the other gateway's calls go on."""
    for name, group in calls.items():
        for call in group:
            await call.announce(http, fleet.gateways[name].endpoint)
            check_answered_by(fleet.gateways[name], call)
    async with tasks_of(*(call.run(http) for group in calls.values() for call in group)) as runs:
        await asyncio.sleep(KILL_AFTER_S)  # into the calls: the fault's moment
        for call in calls[victim]:
            call.cut()
        await taken(http, fleet.gateways[victim].base, calls[victim])
        await sealed_settled(http, fleet.gateways[victim].base)
        fleet.kill_gateway(victim)
        endpoint = await asyncio.to_thread(fleet.restart_gateway, victim)  # off the loop
        for call in calls[victim]:
            call.back(endpoint)
        await asyncio.gather(*runs)


async def sealed_settled(http: aiohttp.ClientSession, base: str) -> None:
    """Wait until the gateway's ``callvault_bytes_sealed_total`` has not grown for
    ``SETTLED_S`` (within 30 s)."""
    deadline = time.monotonic() + 30
    last, since = -1.0, time.monotonic()
    while time.monotonic() - since < SETTLED_S:
        async with http.get(f"{base}/metrics") as r:
            sealed = metric_value(await r.text(), "callvault_bytes_sealed_total")
        if sealed != last:
            last, since = sealed, time.monotonic()
        assert time.monotonic() < deadline, f"{base} still sealing after 30 s"
        await asyncio.sleep(0.1)  # polling another process's progress


def keys_in_data_dirs(root: Path) -> list[str]:
    """A keyring or master-key file in any process's data dir (none: the fleet's keys)."""
    return sorted(
        str(path.relative_to(root))
        for name in ("keyring.json", "master.key")
        for path in root.glob(f"*/{name}")
    )


# --- the tenant ---------------------------------------------------------------------------


async def make_tenant(http: aiohttp.ClientSession, base: str, operator: str) -> dict[str, str]:
    """The tenant, its admin, pbx and processor tokens, and its instructions, through
    ``base`` (the operator mints the first admin, the admin the others)."""
    async with http.post(
        f"{base}/v1/tenants", json={"id": TENANT, "name": "Acme"}, headers=bearer(operator)
    ) as r:
        assert r.status == 201, await r.text()
    tokens: dict[str, str] = {}
    for role in ("admin", "pbx", "processor"):
        tokens[role] = (await mint(http, base, tokens.get("admin", operator), role))["token"]
    await instruct(http, base, tokens["admin"], INSTRUCTIONS)
    return tokens


async def mint(http: aiohttp.ClientSession, base: str, by: str, role: str) -> dict[str, Any]:
    async with http.post(
        f"{base}/v1/tenants/{TENANT}/tokens", json={"role": role}, headers=bearer(by)
    ) as r:
        assert r.status == 201, await r.text()
        return dict(await r.json())


async def instruct(
    http: aiohttp.ClientSession, base: str, admin: str, instructions: dict[str, Any]
) -> int:
    async with http.put(
        f"{base}/v1/tenants/{TENANT}/instructions", json=instructions, headers=bearer(admin)
    ) as r:
        assert r.status == 200, await r.text()
        return int((await r.json())["version"])


# --- the worker killed mid-job --------------------------------------------------------------


async def kill_worker_mid_job(fleet: Fleet, catalog: FleetCatalog, recording_id: str) -> str:
    """Wait until a worker holds the recording's job, SIGKILL that worker a moment into the
    job, and return its lease name. The job must still be running then, with no result."""
    job = await poll(
        lambda: running_job(catalog, recording_id),
        f"worker holding the job of {recording_id}",
        fleet.logs,
        timeout_s=60,
    )
    worker = fleet.worker_of(job.lease_owner)
    await asyncio.sleep(INTO_THE_JOB_S)  # into the transcription
    fleet.kill_worker(worker.name)
    after = (await catalog.jobs(TENANT))[recording_id]
    assert (after.status, after.attempts, after.lease_owner) == (
        "running",
        1,
        job.lease_owner,
    ), f"the job was not mid-way when worker {worker.name} was killed: {after}"
    results = [o for o in await catalog.objects(TENANT)
               if o.recording_id == recording_id and o.kind != "audio"]  # fmt: skip
    assert results == [], f"worker {worker.name} had stored results before its kill: {results}"
    return str(job.lease_owner)


async def running_job(catalog: FleetCatalog, recording_id: str) -> Any:
    job = (await catalog.jobs(TENANT)).get(recording_id)
    return job if job is not None and job.status == "running" else None


async def all_analysed(catalog: FleetCatalog, recordings: set[str]) -> bool:
    jobs = await catalog.jobs(TENANT)
    return set(jobs) >= recordings and all(jobs[r].status == "done" for r in recordings)


# --- what the checks look at -----------------------------------------------------------------


async def check_recorded_once(
    catalog: FleetCatalog, fleet: Fleet, recorded_on: dict[str, str]
) -> None:
    """Every call announced has one recording, and those are the test's recordings; each
    call is the node's that took it, and both nodes are up in the registry."""
    by_call = await catalog.recordings_by_call(TENANT)
    assert len(by_call) == len(recorded_on), f"{len(by_call)} calls: {by_call}"
    counts = {call: len(row.recordings) for call, row in by_call.items()}
    assert set(counts.values()) == {1}, f"a call without or with several recordings: {counts}"
    node_of = {row.recordings[0]: row.node_id for row in by_call.values()}
    assert set(node_of) == set(recorded_on)
    wrong = {
        recording_id: (node_of[recording_id], name)
        for recording_id, name in recorded_on.items()
        if node_of[recording_id] != fleet.gateways[name].node_id
    }
    assert wrong == {}, f"calls noted on another node than the one that took them: {wrong}"
    assert await catalog.nodes() == {g.node_id: "up" for g in fleet.gateways.values()}
    unfinished = [o for o in await catalog.objects(TENANT) if o.state != "committed"]
    assert unfinished == [], f"objects left unfinished: {unfinished}"


async def check_one_kek(catalog: FleetCatalog, parts: SharedParts) -> None:
    """Every object the four processes sealed has its DEK wrapped by the tenant's one KEK:
    with ``vault``, the tenant's transit key (``<prefix><tenant>.kek``)."""
    keks = await catalog.kek_ids(TENANT)
    prefix = parts.custody.get("CALLVAULT_KEYS__VAULT_KEY_PREFIX")
    if prefix is not None:
        assert keks == {f"{prefix}{TENANT}.kek"}, keks
    else:
        assert len(keks) == 1, f"the tenant's objects are wrapped by several KEKs: {keks}"


async def check_analysed_once(
    catalog: FleetCatalog, recorded_on: dict[str, str], analysed: str, killed_owner: str
) -> None:
    """One job per recording, done once: by its first worker, or (the killed worker's) by
    the other one at its second attempt; one transcript and one analysis each."""
    jobs = await catalog.jobs(TENANT)
    assert set(jobs) == set(recorded_on)
    for recording_id, job in jobs.items():
        if recording_id == analysed:
            assert (job.status, job.attempts) == ("done", 2), job
            assert job.lease_owner is not None and job.lease_owner != killed_owner, job
        else:
            assert (job.status, job.attempts) == ("done", 1), job
    results: dict[str, list[tuple[str, str]]] = {r: [] for r in recorded_on}
    for stored in await catalog.objects(TENANT):
        if stored.kind != "audio":
            assert stored.recording_id is not None, stored
            results[stored.recording_id].append((stored.kind, stored.state))
    wrong = {r: sorted(kinds) for r, kinds in results.items() if sorted(kinds) != RESULT_KINDS}
    assert wrong == {}, f"recordings without exactly one transcript and analysis: {wrong}"


async def check_audio(
    http: aiohttp.ClientSession, base: str, admin: str, call: PacedCall, *, killed: bool
) -> None:
    """The call's audio, exported through ``base`` (the other gateway), holds every frame
    that was sent, where it was sent: before the kill (``killed``: a call on gateway
    ``b``), and after its PBX reconnected to the restarted gateway."""
    pcm, meta = await export(http, base, admin, call.recording_id, wait_s=EXPORT_WAIT_S)
    assert meta["status"] == "analyzed", (call.transport, meta)
    ended = [part.ended_by for part in call.parts]
    if not killed:
        assert ended == ["stop"], (call.transport, call.parts)
    elif call.transport in RECONNECTS:  # reconnected to b after its restart, to the stop
        assert ended == ["cut", "stop"] and call.parts[1].count > 0, (call.transport, call.parts)
    else:  # AudioSocket hung up through the API, RTP ended by b after the grace
        assert ended == ["cut"], (call.transport, call.parts)
    assert call.parts[0].count > 0, (call.transport, call.parts)
    for track in call.pcm:
        lost = track_loss(pcm[:, channel(track)], call.sent(track))
        where = (call.transport, call.srtp, track, call.recording_id, call.parts, lost)
        assert lost == [0] * len(lost), where


async def read_transcript(
    http: aiohttp.ClientSession, base: str, processor: str, recording_id: str
) -> dict[str, Any]:
    async with http.get(
        f"{base}/v1/recordings/{recording_id}/transcript", headers=bearer(processor)
    ) as r:
        assert r.status == 200, (base, recording_id, await r.text())
        transcript = dict(await r.json())
    assert isinstance(transcript["segments"], list), transcript
    return transcript


async def check_revocation_across_nodes(
    http: aiohttp.ClientSession, base_a: str, base_b: str, admin: str
) -> None:
    """A processor token minted and revoked on gateway ``a`` is refused on gateway ``b``
    by the first request after the revocation answered (a cache on ``b`` that had just
    let it in does not keep it alive)."""
    minted = await mint(http, base_a, admin, "processor")
    listing = f"{base_b}/v1/tenants/{TENANT}/recordings?limit=1"
    async with http.get(listing, headers=bearer(minted["token"])) as r:
        assert r.status == 200, await r.text()  # known to b now
    async with http.delete(
        f"{base_a}/v1/tenants/{TENANT}/tokens/{minted['id']}", headers=bearer(admin)
    ) as r:
        assert r.status == 200, await r.text()
    async with http.get(listing, headers=bearer(minted["token"])) as r:
        assert r.status == 401, (r.status, await r.text())


async def check_sweeps_from_both_nodes(
    http: aiohttp.ClientSession,
    fleet: Fleet,
    catalog: FleetCatalog,
    seaweedfs: S3Server,
    bucket: str,
    admin: str,
) -> dict[str, str]:
    """Windows shortened (through gateway ``b``) so that every object has expired, then a
    ``callvault retention sweep`` as each gateway, both at once: together they delete each
    object once (one ``data.deleted`` receipt names it), and its bytes leave the bucket."""
    expiring = [o for o in await catalog.objects(TENANT) if o.state == "committed"]
    assert stored_keys(seaweedfs, bucket) >= {o.store_key for o in expiring}
    await instruct(http, fleet.gateways["b"].base, admin, EXPIRED)
    await asyncio.sleep(1.0)  # the windows (PT1S) run from the end of the call
    sweeps = {node: fleet.cli(node, "retention", "sweep") for node in fleet.gateways}
    reports = {}
    for node, process in sweeps.items():
        code, out, err = await asyncio.to_thread(finish, process, f"retention sweep on {node}")
        assert code == 0, (node, out, err)
        reports[node] = json.loads(out.strip().splitlines()[-1])
    deleted = sum(report["objects_deleted"] for report in reports.values())
    assert deleted == len(expiring), reports
    receipts = Counter(
        object_id
        for event in await catalog.audit(TENANT, "data.deleted")
        for object_id in event["detail"]["object_ids"]
    )
    assert receipts == Counter(o.id for o in expiring), receipts
    left = [o for o in await catalog.objects(TENANT) if o.state != "deleted"]
    assert left == [], left
    assert not stored_keys(seaweedfs, bucket) & {o.store_key for o in expiring}
    return {
        node: f"{report['objects_deleted']}" + (" (skipped: the other held the tenant's lease)"
                                                if report.get("skipped_tenants") else "")
        for node, report in reports.items()
    }  # fmt: skip


def stored_keys(seaweedfs: S3Server, bucket: str) -> set[str]:
    client = seaweedfs.client()
    try:
        return {
            item["Key"]
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for item in page.get("Contents", [])
        }
    finally:
        client.close()


async def check_one_audit_chain(
    http: aiohttp.ClientSession, fleet: Fleet, catalog: FleetCatalog, admin: str
) -> int:
    """One chain for the tenant, written by every process of the fleet: its sequence runs
    1..n with no gap (no fork: one event per number), and it verifies through both
    gateways' API and ``callvault audit verify`` as each gateway."""
    events = await catalog.audit(TENANT)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    for gateway in fleet.gateways.values():
        async with http.get(
            f"{gateway.base}/v1/tenants/{TENANT}/audit/verify", headers=bearer(admin)
        ) as r:
            check = await r.json()
        assert r.status == 200 and check["ok"], (gateway.name, check)
        assert check["events"] == len(events), (gateway.name, check)
    verifies = {n: fleet.cli(n, "audit", "verify", "--tenant", TENANT) for n in fleet.gateways}
    for node, process in verifies.items():
        code, out, err = await asyncio.to_thread(finish, process, f"audit verify on {node}")
        assert code == 0 and "audit log intact" in out, (node, out, err)
    return len(events)

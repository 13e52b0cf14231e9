"""The catalog's PostgreSQL restarted in the middle of paced calls (issue 15, item 5).

A private PostgreSQL server (``tests.postgres.PrivatePostgres``: ``initdb`` in a temporary
directory, a free port; never the machine's shared server, which other tests use) is the
catalog of a real ``callvault serve``. While calls of every transport stream in real time,
the server is stopped (fast shutdown: every connection of the pool is cut) and started
again. Meanwhile ``serve`` stays up: ``/healthz`` answers, ``/readyz`` says the catalog is
down, an announcement is a 503 naming the catalog (not a 500), the calls keep streaming
(their flushes go to the spool, which needs no catalog; a track whose first flush, which
registers its object in the catalog, falls in the outage keeps its audio buffered and
tries again), and a call that ends during the outage is finalized once the catalog is
back. Afterwards every call's export holds every
sample that was sent, and every object opens and verifies.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.functional.test_ingest_rtp import free_udp_range
from tests.gateway import Gateway, bearer, free_port
from tests.leaks import WATCH
from tests.paced import (
    PacedCall,
    Tenant,
    Transport,
    channel,
    check_objects,
    export,
    gateway_process,
    track_loss,
)
from tests.parts import require_part
from tests.postgres import PrivatePostgres, postgres_bin

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

OPERATOR = "a-long-operator-token-for-the-catalog-restart-0123456789"
RECORD_ANY_RTP = {
    "recording": {"enabled": True},
    "consent": {"required": False},
    "transport": {"allow_unencrypted_rtp": True},
}
OUTAGE_AT_S = 1.5
OUTAGE_S = 1.5
FLUSH_S = 1.0
CALLS: tuple[tuple[Transport, bool, float, float], ...] = (
    # (transport, SRTP, seconds, starts after): their objects registered before the outage
    ("twilio", False, 8.0, 0.0),
    ("fork", False, 8.0, 0.0),
    ("audiosocket", False, 8.0, 0.0),
    ("rtp", True, 8.0, 0.0),
    ("twilio", False, 2.5, 0.0),  # ends during the outage
    # their first flush, which registers each track's object, falls in the outage
    ("fork", False, 7.0, 1.0),
    ("audiosocket", False, 7.0, 1.0),
)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    bin_dir = postgres_bin()
    require_part(bin_dir is not None, "PostgreSQL's server binaries (initdb, pg_ctl) not found")
    assert bin_dir is not None
    server = PrivatePostgres(bin_dir, free_port())
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.remove()


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with http.get(url) as response:
        return response.status, await response.text()


async def test_postgresql_restarted_mid_run_loses_nothing(
    tmp_path: Path, private_postgres: PrivatePostgres
) -> None:
    rtp = free_udp_range(8)
    data_dir = tmp_path / "var"
    settings = {
        "CALLVAULT_OPERATOR_TOKEN": WATCH.remember_value("token", OPERATOR),
        "CALLVAULT_DATABASE_URL": private_postgres.url,
        "CALLVAULT_INGEST__FLUSH_INTERVAL": f"PT{FLUSH_S}S",
        "CALLVAULT_RTP__PORT_MIN": str(rtp),
        "CALLVAULT_RTP__PORT_MAX": str(rtp + 7),
        "CALLVAULT_RETENTION__SWEEP_INTERVAL": "PT0S",
        "CALLVAULT_AI__WORKERS": "0",
    }
    async with aiohttp.ClientSession() as http:
        with contextlib.ExitStack() as stack:
            process, endpoint = stack.enter_context(
                gateway_process(tmp_path, "serve", data_dir, **settings)
            )
            gateway = Gateway(
                client=aiohttp.ClientSession(base_url=endpoint.base),  # type: ignore[arg-type]
                operator=OPERATOR,
            )
            async with gateway.client:
                acme = await gateway.tenant("acme", RECORD_ANY_RTP)
            tenant = Tenant(acme.id, acme.admin, acme.pbx)
            calls = [
                PacedCall(transport, tenant, seconds, seed, srtp=srtp)
                for seed, (transport, srtp, seconds, _) in enumerate(CALLS)
            ]
            for call in calls:
                await call.announce(http, endpoint)

            async def run(call: PacedCall, after: float) -> None:
                await asyncio.sleep(after)
                await call.run(http)

            runs = [
                asyncio.create_task(run(call, after))
                for call, (*_, after) in zip(calls, CALLS, strict=True)
            ]

            await asyncio.sleep(OUTAGE_AT_S)
            await asyncio.to_thread(private_postgres.stop)
            assert await get(http, f"{endpoint.base}/healthz") == (200, '{"status": "ok"}')
            status, body = await get(http, f"{endpoint.base}/readyz")
            assert status == 503 and "catalog" in body, body
            async with http.post(
                f"{endpoint.base}/v1/tenants/acme/calls",
                json={"from": "+40711111111", "to": "+40722222222", "transport": "twilio"},
                headers=bearer(acme.pbx),
            ) as response:
                assert response.status == 503, await response.text()
                refused = await response.json()
            assert refused["error"] == "catalog_unavailable", refused
            await asyncio.sleep(OUTAGE_S)
            assert process.process.poll() is None, process.log()
            await asyncio.to_thread(private_postgres.start)
            # Ready again without a restart of serve.
            deadline = asyncio.get_running_loop().time() + 20
            while (await get(http, f"{endpoint.base}/readyz"))[0] != 200:
                assert asyncio.get_running_loop().time() < deadline, process.log()
                await asyncio.sleep(0.1)

            await asyncio.gather(*runs)
            exports = {
                call.recording_id: await export(
                    # The call that ended in the outage left its tracks in the spool: the
                    # publisher publishes them once the catalog is back (it retries from
                    # 2 s), well before this wait ends.
                    http,
                    endpoint.base,
                    acme.admin,
                    call.recording_id,
                    wait_s=10,
                )
                for call in calls
            }
            async with http.post(
                f"{endpoint.base}/v1/tenants/acme/calls",
                json={"from": "+40711111111", "to": "+40722222222", "transport": "twilio"},
                headers=bearer(acme.pbx),
            ) as response:
                assert response.status == 201, await response.text()
            assert process.process.poll() is None, process.log()
            process.process.terminate()
            assert process.process.wait(timeout=20) == 0, process.log()

    for call in calls:
        pcm, meta = exports[call.recording_id]
        assert meta["status"] == "recorded", meta
        assert [part.ended_by for part in call.parts] == ["stop"], (call.transport, call.parts)
        for track in call.pcm:
            lost = track_loss(pcm[:, channel(track)], call.sent(track))
            assert lost == [0], (call.transport, track, lost)
    states = await check_objects(data_dir, ["acme"], private_postgres.url)
    assert "writing" not in states, states
    assert not list((data_dir / "spool").rglob("*.sealed"))

"""Rights actions interrupted part way, and what a deleted tenant leaves behind: a crash or
an outage between two steps of a tenant deletion or an erasure never leaves erased data
readable, never turns a later export into an error, and is finished by a retry or the next
sweep. SQLite and PostgreSQL (the catalog's part in each); the file store."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from gateway.settings import Settings
from gateway.state import SERVICES, SWEEPER
from storage.catalog.schema import metadata
from storage.errors import StorageUnavailable
from tests.functional.test_api_rights import AGENT, CALLER, RECORDING_ON, api, place_hold
from tests.gateway import FakeClock, Gateway, bearer, free_port, record_call

EXCLUDED = "+40799999999"


@pytest.fixture(params=["sqlite", "postgresql"])
def gateway_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    extra: dict[str, Any] = {}
    if request.param == "postgresql":
        extra["database_url"] = request.getfixturevalue("database_url_postgresql")
    return Settings(
        data_dir=tmp_path / "var",
        audiosocket={"port": free_port()},
        ai={"workers": 0},
        retention={"sweep_interval": "PT0S"},
        **extra,
    )


async def export(gw: Gateway, token: str) -> zipfile.ZipFile:
    response = await gw.client.get(
        "/v1/tenants/acme/export", params={"number": CALLER}, headers=bearer(token)
    )
    assert response.status == 200, await response.text()
    archive = zipfile.ZipFile(io.BytesIO(await response.read()))
    assert archive.testzip() is None
    return archive


async def add_transcript(gw: Gateway, recording_id: str, clock: FakeClock) -> None:
    await gw.app[SERVICES].vault.put_object(
        b'{"segments": [{"track": "inbound", "text": "secret"}]}',
        tenant="acme",
        kind="transcript",
        data_class="transcripts",
        recording_id=recording_id,
        now=clock.now(),
    )


async def test_a_tenant_deletion_that_failed_at_its_keys_is_finished_by_a_retry(
    gw: Gateway, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = await gw.tenant("acme", RECORDING_ON)
    await record_call(gw, tenant)
    keys = gw.app[SERVICES].keys

    async def crash(tenant: str) -> None:
        raise StorageUnavailable("keyring file unwritable")

    monkeypatch.setattr(keys, "destroy_tenant", crash)
    response = await gw.client.delete("/v1/tenants/acme", headers=bearer(gw.operator))
    assert response.status == 503
    monkeypatch.undo()
    # The KEKs go first: the tenant is not marked deleted yet, so the operator can retry.
    response = await gw.client.delete("/v1/tenants/acme", headers=bearer(gw.operator))
    assert response.status == 200, await response.text()
    assert keys.current("acme") is None
    events = await gw.app[SERVICES].catalog.audit.list("acme", limit=1000)
    assert events[-1].action == "tenant.deleted"
    assert events[-1].detail["recordings"] == 1


async def test_an_erasure_interrupted_before_its_keys_went_is_not_exported(
    gw: Gateway, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = await gw.tenant("acme", RECORDING_ON)
    call = await record_call(gw, tenant, **{"from": CALLER, "to": AGENT})
    await add_transcript(gw, call.recording_id, clock)
    catalog = gw.app[SERVICES].catalog

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise StorageUnavailable("catalog write failed")

    monkeypatch.setattr(catalog.retention, "shred_keys", down)
    status, body = await api(gw, "DELETE", f"/v1/recordings/{call.recording_id}", tenant.admin)
    assert status == 503, body
    monkeypatch.undo()
    # The erasure was recorded: the recording reads as deleted everywhere, the export too.
    status, body = await api(gw, "GET", f"/v1/recordings/{call.recording_id}", tenant.admin)
    assert body["status"] == "deleted"
    status, _ = await api(gw, "GET", f"/v1/recordings/{call.recording_id}/transcript", tenant.admin)
    assert status == 410
    names = (await export(gw, tenant.admin)).namelist()
    assert f"recordings/{call.recording_id}/recording.json" in names
    assert not [name for name in names if name.endswith(("transcript.json", "audio.wav"))]
    # The next sweep finishes it.
    swept = await gw.app[SWEEPER].sweep(clock.now())
    assert swept.recordings_deleted == 1
    assert {o.state for o in await catalog.objects.list("acme")} == {"deleted"}


async def test_an_erasure_interrupted_after_its_keys_went_leaves_the_export_working(
    gw: Gateway, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = await gw.tenant("acme", RECORDING_ON)
    erased = await record_call(gw, tenant, **{"from": CALLER, "to": AGENT})
    kept = await record_call(gw, tenant, **{"from": CALLER, "to": AGENT}, seed=3)
    await add_transcript(gw, erased.recording_id, clock)
    services = gw.app[SERVICES]

    async def down(keys: Any) -> None:
        raise StorageUnavailable("store down")

    monkeypatch.setattr(services.store, "delete_many", down)
    status, body = await api(gw, "DELETE", f"/v1/recordings/{erased.recording_id}", tenant.admin)
    assert status == 503, body
    monkeypatch.undo()
    archive = await export(gw, tenant.admin)
    manifest = {
        item["recording_id"]: item
        for item in orjson.loads(archive.read("manifest.json"))["recordings"]
    }
    assert manifest[erased.recording_id]["audio"] == "recording_deleted"
    assert manifest[erased.recording_id]["transcript"] is False
    assert manifest[kept.recording_id]["audio"] is True
    assert f"recordings/{kept.recording_id}/audio.wav" in archive.namelist()


async def test_a_deleted_tenant_leaves_no_phone_number_in_the_catalog(
    gw: Gateway, clock: FakeClock
) -> None:
    tenant = await gw.tenant("acme", {**RECORDING_ON, "exclude_numbers": [EXCLUDED]})
    await record_call(gw, tenant, **{"from": CALLER, "to": AGENT})
    hold = await place_hold(gw, tenant, number=CALLER)
    status, _ = await api(gw, "DELETE", f"/v1/tenants/acme/legal-holds/{hold['id']}", tenant.admin)
    assert status == 200
    response = await gw.client.delete("/v1/tenants/acme", headers=bearer(gw.operator))
    assert response.status == 200
    catalog = gw.app[SERVICES].catalog
    found = {}
    async with catalog.core.engine.connect() as conn:
        for table in metadata.sorted_tables:
            rows = (await conn.execute(sa.select(table))).all()
            hits = [r for r in rows if any(n in repr(r) for n in (CALLER, AGENT, EXCLUDED))]
            if hits:
                found[table.name] = len(hits)
    assert found == {}
    # What stays: the tenant row and its audit log, which still verifies.
    assert (await catalog.audit.verify("acme")).ok

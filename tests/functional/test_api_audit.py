"""The audit log over HTTP and the CLI: paging through the chain, and the check that names
the first event altered, removed or moved (rows changed behind the API's back with raw SQL,
as someone with database access would)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.settings import Settings
from tests.gateway import Gateway, bearer


async def page(gateway: Gateway, token: str, **query: Any) -> tuple[int, Any]:
    response = await gateway.client.get(
        "/v1/tenants/acme/audit",
        params={k: str(v) for k, v in query.items()},
        headers=bearer(token),
    )
    return response.status, await response.json()


async def verify(gateway: Gateway, token: str) -> dict[str, Any]:
    response = await gateway.client.get("/v1/tenants/acme/audit/verify", headers=bearer(token))
    assert response.status == 200
    return dict(await response.json())


async def sql(settings: Settings, statement: str, **params: Any) -> None:
    engine = create_async_engine(settings.catalog_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text(statement), params)
    finally:
        await engine.dispose()


def cli_verify(settings: Settings) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "gateway.cli", "--data-dir", str(settings.data_dir), "audit",
         "verify", "--tenant", "acme"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


async def test_the_log_pages_through_one_unbroken_chain(gateway: Gateway) -> None:
    tenant = await gateway.tenant("acme", {"recording": {"enabled": True}})
    for version in range(3):  # more events: instruction versions
        await gateway.instruct(tenant, {"recording": {"enabled": version % 2 == 0}})
    events: list[dict[str, Any]] = []
    since = 0
    while True:
        status, body = await page(gateway, tenant.admin, since=since, limit=2)
        assert status == 200
        assert len(body["items"]) <= 2
        events += body["items"]
        if body["next_since"] is None:
            break
        since = body["next_since"]
        assert since == events[-1]["seq"]
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    assert len(events) >= 7  # three tokens, four instruction versions
    for before, event in zip(events, events[1:], strict=False):
        assert event["prev_hash"] == before["hash"]
    assert set(events[0]) == {"seq", "at", "actor", "action", "object", "detail", "prev_hash",
                              "hash"}  # fmt: skip
    actions = [event["action"] for event in events]
    assert actions.count("instructions.updated") == 4
    assert await verify(gateway, tenant.admin) == {"ok": True, "events": len(events)}
    status, body = await page(gateway, tenant.admin, since=len(events))
    assert (status, body) == (200, {"items": [], "next_since": None})
    for bad in ({"since": -1}, {"limit": 0}, {"limit": 1001}, {"since": "x"}):
        status, body = await page(gateway, tenant.admin, **bad)
        assert (status, body["error"]) == (400, "bad_query"), bad


async def test_an_altered_removed_or_moved_event_is_found(
    gateway: Gateway, gateway_settings: Settings
) -> None:
    tenant = await gateway.tenant("acme", {"recording": {"enabled": True}})
    await gateway.instruct(tenant, {"recording": {"enabled": False}})
    count = (await verify(gateway, tenant.admin))["events"]
    assert count >= 5
    clean = cli_verify(gateway_settings)
    assert clean.returncode == 0, clean.stderr
    assert f"audit log intact, {count} event(s) verified" in clean.stdout

    # Altered: one event's detail rewritten.
    await sql(
        gateway_settings,
        "UPDATE audit_events SET detail = :detail WHERE tenant_id = 'acme' AND seq = 3",
        detail='{"role": "operator"}',
    )
    assert await verify(gateway, tenant.admin) == {
        "ok": False,
        "events": count,
        "broken_at": 3,
        "reason": "chain",
    }
    broken = cli_verify(gateway_settings)
    assert broken.returncode == 1
    assert "BROKEN at event 3" in broken.stderr


async def test_a_removed_event_and_a_swap_are_found(
    gateway: Gateway, gateway_settings: Settings
) -> None:
    tenant = await gateway.tenant("acme", {"recording": {"enabled": True}})
    await gateway.instruct(tenant, {"recording": {"enabled": False}})
    count = (await verify(gateway, tenant.admin))["events"]
    # Two events swap places (their sequence numbers exchanged).
    await sql(
        gateway_settings, "UPDATE audit_events SET seq = -2 WHERE tenant_id = 'acme' AND seq = 2"
    )
    await sql(
        gateway_settings, "UPDATE audit_events SET seq = 2 WHERE tenant_id = 'acme' AND seq = 3"
    )
    await sql(
        gateway_settings, "UPDATE audit_events SET seq = 3 WHERE tenant_id = 'acme' AND seq = -2"
    )
    assert await verify(gateway, tenant.admin) == {
        "ok": False,
        "events": count,
        "broken_at": 2,
        "reason": "chain",
    }
    # Put back, then one removed.
    await sql(
        gateway_settings, "UPDATE audit_events SET seq = -2 WHERE tenant_id = 'acme' AND seq = 2"
    )
    await sql(
        gateway_settings, "UPDATE audit_events SET seq = 2 WHERE tenant_id = 'acme' AND seq = 3"
    )
    await sql(
        gateway_settings, "UPDATE audit_events SET seq = 3 WHERE tenant_id = 'acme' AND seq = -2"
    )
    assert (await verify(gateway, tenant.admin))["ok"] is True
    await sql(gateway_settings, "DELETE FROM audit_events WHERE tenant_id = 'acme' AND seq = 4")
    assert await verify(gateway, tenant.admin) == {
        "ok": False,
        "events": count - 1,
        "broken_at": 4,
        "reason": "chain",
    }


def test_the_cli_names_an_unknown_tenant(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "var")
    result = cli_verify(settings)
    assert result.returncode == 1
    assert "acme" in result.stderr and "Traceback" not in result.stderr

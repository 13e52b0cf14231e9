"""The audit log over HTTP and the CLI: paging through the chain, the check that names the
first event altered, removed, moved or cut off (rows changed behind the API's back with raw
SQL, as someone with database access would), the signed checkpoints (on demand, on serve's
interval, to the webhook) and the public key that checks them, and the re-keying of a chain
the old code wrote."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
import sqlalchemy as sa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from sqlalchemy.ext.asyncio import create_async_engine

from crypto.auditkeys import AuditKeyring
from crypto.errors import KeyUnavailable
from gateway.app import build_app
from gateway.clock import Clock
from gateway.services import open_keyring, open_services
from gateway.settings import AuditSettings, Settings, WebhookSettings
from gateway.state import SERVICES
from storage.catalog import Catalog
from storage.catalog.auditchain import legacy_event_hash
from tests.gateway import FakeClock, Gateway, GatewayServer, bearer, start_gateway

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


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


async def test_the_checkpoints_page_with_bounded_queries(
    clocked_gateway: Gateway, clock: FakeClock
) -> None:
    gateway = clocked_gateway
    tenant = await gateway.tenant("acme", {"recording": {"enabled": True}})
    url = "/v1/tenants/acme/audit/checkpoints"
    made = []
    for version in range(3):  # the head moves, then a checkpoint of it
        await gateway.instruct(tenant, {"recording": {"enabled": version % 2 == 0}})
        clock.advance(60)
        response = await gateway.client.post(url, headers=bearer(tenant.admin))
        assert response.status == 200
        made.append(await response.json())
    seen: list[dict[str, Any]] = []
    since = 0
    while since is not None:
        response = await gateway.client.get(
            url, params={"since": str(since), "limit": "2"}, headers=bearer(tenant.admin)
        )
        assert response.status == 200
        body = await response.json()
        assert len(body["items"]) <= 2
        seen += body["items"]
        since = body["next_since"]
    assert seen == made
    for bad in ({"since": "-1"}, {"limit": "0"}, {"limit": "1001"}, {"since": "x"}):
        response = await gateway.client.get(url, params=bad, headers=bearer(tenant.admin))
        assert (response.status, (await response.json())["error"]) == (400, "bad_query"), bad


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


# --- the keyed chain and its checkpoints ----------------------------------------------------


def checkpoint_message(tenant: str, checkpoint: dict[str, Any], key_id: str) -> bytes:
    """The signed bytes, written out from the API's documentation, not the product code."""
    body = {
        "at": checkpoint["at"],
        "hash": checkpoint["hash"],
        "key_id": key_id,
        "seq": checkpoint["seq"],
        "tenant": tenant,
    }
    return b"callvault-audit-checkpoint/v1\n" + json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


async def all_events(gateway: Gateway, token: str) -> list[dict[str, Any]]:
    status, body = await page(gateway, token, limit=1000)
    assert status == 200
    return list(body["items"])


async def test_serves_chain_is_keyed_by_the_audit_key_in_its_keyring(
    gateway: Gateway, gateway_settings: Settings
) -> None:
    tenant = await gateway.tenant("acme", {"recording": {"enabled": True}})
    events = await all_events(gateway, tenant.admin)
    # The key, read from the data dir's keyring with its master key, as an auditor would.
    found = await AuditKeyring(open_keyring(gateway_settings)).audit_key("acme")
    assert found is not None and found.active
    prev = "0" * 64
    for event in events:
        body = {k: event[k] for k in ("seq", "actor", "action", "object", "detail")}
        body["at"] = datetime.fromisoformat(event["at"]).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        message = bytes.fromhex(prev) + canonical.encode("utf-8")
        assert event["hash"] == hmac.new(found.key, message, hashlib.sha256).hexdigest()
        assert event["hash"] != hashlib.sha256(message).hexdigest()  # not the old formula
        prev = event["hash"]


async def test_a_checkpoint_is_signed_on_demand_and_verifies_with_the_served_public_key(
    clocked_gateway: Gateway, clock: FakeClock
) -> None:
    gateway = clocked_gateway
    tenant = await gateway.tenant("acme", {"recording": {"enabled": True}})
    other = await gateway.tenant("globex")
    url = "/v1/tenants/acme/audit/checkpoints"
    for token, status in (
        (tenant.processor, 403),
        (tenant.pbx, 403),
        (gateway.operator, 403),
        (other.admin, 404),
    ):
        for method in ("GET", "POST"):
            response = await gateway.client.request(method, url, headers=bearer(token))
            assert response.status == status, (method, status)

    clock.advance(60)
    response = await gateway.client.post(url, headers=bearer(tenant.admin))
    assert response.status == 200
    checkpoint = await response.json()
    count = len(await all_events(gateway, tenant.admin))
    assert (checkpoint["seq"], checkpoint["at"]) == (count, "2026-11-28T10:01:00.000000Z")
    assert checkpoint["hash"] == (await all_events(gateway, tenant.admin))[-1]["hash"]

    # The public key needs no token; the signature checks with cryptography alone.
    response = await gateway.client.get("/v1/audit/public-key")
    assert response.status == 200
    key = await response.json()
    assert key["algorithm"] == "Ed25519" and key["key_id"] == checkpoint["key_id"]
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(key["public_key"]))
    signature = base64.b64decode(checkpoint["signature"])
    public.verify(signature, checkpoint_message("acme", checkpoint, key["key_id"]))
    pem = load_pem_public_key(key["public_key_pem"].encode())
    assert isinstance(pem, Ed25519PublicKey)
    pem.verify(signature, checkpoint_message("acme", checkpoint, key["key_id"]))
    with pytest.raises(InvalidSignature):  # it covers the tenant
        public.verify(signature, checkpoint_message("globex", checkpoint, key["key_id"]))

    # The head did not move: asking again gives the same checkpoint, no new one.
    response = await gateway.client.post(url, headers=bearer(tenant.admin))
    assert await response.json() == checkpoint
    response = await gateway.client.get(url, headers=bearer(tenant.admin))
    assert await response.json() == {"items": [checkpoint], "next_since": None}
    assert await verify(gateway, tenant.admin) == {
        "ok": True,
        "events": count,
        "checkpoint": count,
    }


async def test_a_log_cut_back_behind_its_checkpoint_is_found_and_not_signed_again(
    gateway: Gateway, gateway_settings: Settings
) -> None:
    tenant = await gateway.tenant("acme", {"recording": {"enabled": True}})
    await gateway.instruct(tenant, {"recording": {"enabled": False}})
    url = "/v1/tenants/acme/audit/checkpoints"
    checkpoint = await (await gateway.client.post(url, headers=bearer(tenant.admin))).json()
    events = await all_events(gateway, tenant.admin)
    assert checkpoint["seq"] == len(events) >= 5
    # The database writer removes the last two events and moves the head back.
    keep = events[-3]
    await sql(
        gateway_settings,
        "DELETE FROM audit_events WHERE tenant_id = 'acme' AND seq > :s",
        s=keep["seq"],
    )
    await sql(
        gateway_settings,
        "UPDATE tenants SET audit_seq = :s, audit_head = :h WHERE id = 'acme'",
        s=keep["seq"],
        h=keep["hash"],
    )
    assert await verify(gateway, tenant.admin) == {
        "ok": False,
        "events": keep["seq"],
        "broken_at": keep["seq"] + 1,
        "reason": "behind_checkpoint",
        "checkpoint": checkpoint["seq"],
    }
    broken = cli_verify(gateway_settings)
    assert broken.returncode == 1
    assert f"BROKEN at event {keep['seq'] + 1}" in broken.stderr
    assert "cut back" in broken.stderr
    # More events move the head past the checkpoint again; nothing is signed over the gap.
    for version in range(3):
        await gateway.instruct(tenant, {"recording": {"enabled": version % 2 == 0}})
    response = await gateway.client.post(url, headers=bearer(tenant.admin))
    assert response.status == 409
    assert (await response.json())["error"] == "audit_broken"
    assert await (await gateway.client.get(url, headers=bearer(tenant.admin))).json() == {
        "items": [checkpoint],
        "next_since": None,
    }


async def test_a_checkpoint_row_the_gateway_did_not_sign_is_never_handed_out(
    gateway: Gateway, gateway_settings: Settings
) -> None:
    tenant = await gateway.tenant("acme", {"recording": {"enabled": True}})
    url = "/v1/tenants/acme/audit/checkpoints"
    signed = await (await gateway.client.post(url, headers=bearer(tenant.admin))).json()
    # The database writer replaces the latest checkpoint's signature; the head did not move.
    forged = base64.b64encode(bytes(64)).decode()
    await sql(gateway_settings, "UPDATE audit_checkpoints SET signature = :s", s=forged)
    response = await gateway.client.post(url, headers=bearer(tenant.admin))
    assert response.status == 409
    assert (await response.json())["error"] == "audit_broken"
    assert forged not in await response.text()
    assert signed["signature"] != forged


async def test_serve_checkpoints_moved_heads_on_its_interval_and_tells_the_webhook(
    aiohttp_client: Callable[..., Any], gateway_settings: Settings
) -> None:
    settings = gateway_settings.model_copy(
        update={
            "audit": AuditSettings(checkpoint_interval=timedelta(seconds=0.05)),
            # the receiver is plain http on loopback
            "webhooks": WebhookSettings(allow_private=True, allow_http=True),
        }
    )
    clock = FakeClock()
    app = build_app(settings, clock=cast(Clock, clock))
    gateway = await start_gateway(await aiohttp_client(GatewayServer(app)))
    webhook = {"url": "http://127.0.0.1:9/hook", "secret": "whsec_0123456789abcdef"}
    tenant = await gateway.tenant("acme", {"recording": {"enabled": True}, "webhook": webhook})
    url = "/v1/tenants/acme/audit/checkpoints"

    async def checkpoints() -> list[dict[str, Any]]:
        response = await gateway.client.get(url, headers=bearer(tenant.admin))
        return list((await response.json())["items"])

    async def until_head_signed() -> list[dict[str, Any]]:
        """The checkpoints once the loop has signed the head as it is now."""
        head = len(await all_events(gateway, tenant.admin))
        for _ in range(200):  # at most ~10 s for the loop to come round
            found = await checkpoints()
            if found and found[-1]["seq"] == head:
                return found
            await asyncio.sleep(0.05)
        return await checkpoints()

    first = await until_head_signed()
    assert first and first[-1]["seq"] == len(await all_events(gateway, tenant.admin))
    assert first[-1]["at"] == "2026-11-28T10:00:00.000000Z"  # the app's clock, not the wall's
    await asyncio.sleep(0.3)  # several rounds of the loop, not time for the data
    assert await checkpoints() == first  # the head did not move: nothing new

    clock.advance(300)
    await gateway.instruct(tenant, {"recording": {"enabled": False}, "webhook": webhook})
    second = await until_head_signed()
    assert second[: len(first)] == first and len(second) == len(first) + 1
    assert second[-1]["seq"] == len(await all_events(gateway, tenant.admin))
    assert second[-1]["at"] == "2026-11-28T10:05:00.000000Z"
    seqs = [checkpoint["seq"] for checkpoint in second]
    assert seqs == sorted(set(seqs))  # one per head, made only when it moved

    # Those made once the tenant had a webhook URL were queued for it, each once.
    jobs = await app[SERVICES].catalog.jobs.list("acme")
    sent = [job.payload for job in jobs if job.kind == "webhook" and job.payload is not None]
    assert sent and {p["event"] for p in sent} == {"audit.checkpoint"}
    assert [p["data"] for p in sent] == second[-len(sent) :]
    assert sent[-1]["data"] == second[-1]


def cli_audit(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """``callvault audit ARGS`` on the settings' data dir."""
    return subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "gateway.cli", "--data-dir", str(settings.data_dir), "audit",
         *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


async def test_the_cli_signs_the_moved_heads(gateway: Gateway, gateway_settings: Settings) -> None:
    tenant = await gateway.tenant("acme", {"recording": {"enabled": True}})
    count = len(await all_events(gateway, tenant.admin))
    made = cli_audit(gateway_settings, "checkpoint")
    assert made.returncode == 0, made.stderr
    assert f"tenant acme: checkpoint at event {count} signed" in made.stdout
    again = cli_audit(gateway_settings, "checkpoint")
    assert (again.returncode, again.stdout.strip()) == (
        0,
        "no audit log moved since its latest checkpoint",
    )
    assert (await verify(gateway, tenant.admin))["checkpoint"] == count


async def write_legacy_chain(settings: Settings, tenant: str) -> str:
    """What the old code left in the catalog: a tenant whose chain is SHA-256, and no audit
    key for it in the keyring. Returns the head."""
    catalog = await Catalog.open(
        settings.catalog_url, audit_keys=AuditKeyring(open_keyring(settings))
    )
    try:
        await catalog.migrate()
        await catalog.tenants.create(tenant, tenant, "eu", T0)  # no event: no key
    finally:
        await catalog.close()
    prev = "0" * 64
    for seq in (1, 2, 3):
        digest = legacy_event_hash(
            prev, seq=seq, at=T0, actor="cli", action="token.created", object=None,
            detail={"role": "admin"},
        )  # fmt: skip
        await sql(settings, "INSERT INTO audit_events (tenant_id, seq, at, actor, action,"
                  " object, detail, prev_hash, hash) VALUES (:t, :s, :at, 'cli',"
                  " 'token.created', NULL, :d, :p, :h)",
                  t=tenant, s=seq, at=T0.replace(tzinfo=None), d='{"role": "admin"}', p=prev,
                  h=digest)  # fmt: skip
        prev = digest
    await sql(settings, "UPDATE tenants SET audit_seq = 3, audit_head = :h WHERE id = :t",
              h=prev, t=tenant)  # fmt: skip
    return prev


async def test_legacy_chains_are_rekeyed_at_the_first_start_and_only_then(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path / "var")
    old_head = await write_legacy_chain(settings, "acme")
    clock = FakeClock(T0 + timedelta(days=1))
    async with open_services(settings, clock=cast(Clock, clock)) as services:
        check = await services.catalog.audit.verify("acme")
        assert (check.ok, check.count) == (True, 4)
        rekeyed = (await services.catalog.audit.list("acme"))[-1]
        assert (rekeyed.action, rekeyed.at) == ("audit.rekeyed", clock.now())
        assert rekeyed.detail["old_head"] == old_head

    # After the first start, an unkeyed chain is not vouched for on its own: one a database
    # writer made up (or an old node wrote during the upgrade) stays unkeyed...
    await write_legacy_chain(settings, "madeup")
    async with open_services(settings) as services:
        assert (await services.catalog.audit.verify("acme")).count == 4  # once
        check = await services.catalog.audit.verify("madeup")
        assert (check.ok, check.reason) == (False, "not_keyed")
        with pytest.raises(KeyUnavailable):  # nothing is appended to it either
            await services.catalog.audit.append("madeup", "x", "y", None, {}, T0)
    # ...until the operator re-keys it on purpose.
    result = cli_audit(settings, "rekey", "--tenant", "madeup")
    assert result.returncode == 0, result.stderr
    assert "re-keyed from its first event" in result.stdout
    async with open_services(settings) as services:
        check = await services.catalog.audit.verify("madeup")
        assert (check.ok, check.count) == (True, 4)


async def test_a_deleted_tenants_log_stays_keyed_after_its_keys_are_destroyed(
    gateway: Gateway, gateway_settings: Settings
) -> None:
    await gateway.tenant("acme", {"recording": {"enabled": True}})
    before = await AuditKeyring(open_keyring(gateway_settings)).audit_key("acme")
    response = await gateway.client.delete("/v1/tenants/acme", headers=bearer(gateway.operator))
    assert response.status == 200, await response.text()
    catalog = gateway.app[SERVICES].catalog
    actions = [event.action for event in await catalog.audit.list("acme", limit=1000)]
    assert "keys.destroyed" in actions and "tenant.deleted" in actions
    # The KEKs are gone; the audit key is not, and the log after the deletion verifies.
    after = await AuditKeyring(open_keyring(gateway_settings)).audit_key("acme")
    assert after is not None and after == before
    check = await catalog.audit.verify("acme")
    assert (check.ok, check.count) == (True, len(actions))
    made = await catalog.checkpoints.make("acme", T0)  # its log is still anchored
    assert made is not None and made.seq == len(actions)

"""Per-tenant limits: live calls, RTP calls and announces per minute, counted in the catalog.

Over a limit an announcement is 429 `limit_exceeded` naming the limit, and nothing is stored
but the refusal's call record and its audit event; a stream that describes an unannounced
call is closed 1013 the same way. The operator sets a tenant's limits on creation or by
PATCH (partial: the rest follow `CALLVAULT_LIMITS__*`), one tenant at its limit never
affects another, and two nodes sharing one catalog (SQLite or PostgreSQL) count together,
so concurrent announcements cannot take more places than the limit has.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.app import build_app
from gateway.settings import Settings
from gateway.state import SERVICES
from tests.gateway import (
    RECORD,
    FakeClock,
    Gateway,
    GatewayServer,
    TenantTokens,
    bearer,
    free_port,
    metric_value,
    start_gateway,
    twilio_start,
)

NO_CONSENT = {"recording": {"enabled": True}, "consent": {"required": False}}
CALL = {"from": "+40711111111", "to": "+40722222222", "consent": "granted"}


def limited_settings(tmp_path: Path, **limits: int) -> Settings:
    return Settings(
        data_dir=tmp_path / "var",
        audiosocket={"port": free_port()},
        ai={"workers": 0},
        retention={"sweep_interval": "PT0S"},
        audit={"checkpoint_interval": "PT0S"},
        limits=limits,
    )


@pytest.fixture
async def gateway(aiohttp_client: Callable, tmp_path: Path, clock: FakeClock) -> Gateway:
    """A gateway whose default limits are small (3 live, 1 RTP, 5 a minute), on a clock the
    test turns."""
    settings = limited_settings(tmp_path, live_calls=3, rtp_calls=1, announces_per_minute=5)
    client = await aiohttp_client(GatewayServer(build_app(settings, clock=clock)))
    return await start_gateway(client)


async def create_tenant(gateway: Gateway, tenant_id: str, **limits: Any) -> TenantTokens:
    """A tenant (with ``limits`` if given), recording instructed."""
    if limits:
        response = await gateway.client.post(
            "/v1/tenants",
            json={"id": tenant_id, "name": tenant_id.title(), "limits": limits},
            headers=bearer(gateway.operator),
        )
        assert response.status == 201, await response.text()
        tokens = {}
        for role in ("admin", "pbx", "processor"):
            response = await gateway.client.post(
                f"/v1/tenants/{tenant_id}/tokens",
                json={"role": role},
                headers=bearer(tokens.get("admin", gateway.operator)),
            )
            tokens[role] = (await response.json())["token"]
        tenant = TenantTokens(tenant_id, **tokens)
        await gateway.instruct(tenant, NO_CONSENT)
        return tenant
    return await gateway.tenant(tenant_id, NO_CONSENT)


async def announce(
    gateway: Gateway, tenant: TenantTokens, call_id: str, **call: Any
) -> tuple[int, dict[str, Any], Any]:
    response = await gateway.client.post(
        f"/v1/tenants/{tenant.id}/calls",
        json={**CALL, "transport": "twilio", "call_id": call_id, **call},
        headers=bearer(tenant.pbx),
    )
    return response.status, await response.json(), response.headers


async def end(gateway: Gateway, tenant: TenantTokens, call_id: str) -> None:
    response = await gateway.client.post(f"/v1/calls/{call_id}/end", headers=bearer(tenant.pbx))
    assert response.status == 200, await response.text()


async def assert_only_the_refusal_is_stored(
    gateway: Gateway, tenant: str, call_id: str, limit: str
) -> None:
    catalog = gateway.app[SERVICES].catalog
    call = await catalog.calls.get(tenant, call_id)
    assert call.refusal_code == "limit_exceeded"
    assert call.decision == {"store_recording": False, "ai": []}
    assert call.ended_at is not None
    assert await catalog.recordings.of_call(tenant, call_id) is None
    events = [e for e in await catalog.audit.list(tenant, limit=1000) if e.object == call_id]
    assert [(e.action, e.detail["code"], e.detail["limit"]) for e in events][-1] == (
        "call.refused",
        "limit_exceeded",
        limit,
    )


async def test_live_calls_over_the_limit_are_429_and_leave_only_the_refusal(
    gateway: Gateway,
) -> None:
    acme = await create_tenant(gateway, "acme")
    for n in range(3):
        assert (await announce(gateway, acme, f"live-{n}"))[0] == 201
    status, body, headers = await announce(gateway, acme, "live-3")
    assert status == 429, body
    assert body["error"] == "limit_exceeded"
    assert body["limit"] == "live_calls"
    assert "3" in body["message"]
    assert "Retry-After" not in headers  # when a call ends is not known
    await assert_only_the_refusal_is_stored(gateway, "acme", "live-3", "live_calls")
    assert await gateway.app[SERVICES].catalog.objects.list("acme") == []
    metrics = await (await gateway.client.get("/metrics")).text()
    assert metric_value(metrics, "callvault_refusals_total", code="limit_exceeded") == 1.0

    # A call ends: the PBX's retry of the same call id is accepted, and replaces the
    # refusal's record (the audit log keeps the refusal).
    await end(gateway, acme, "live-0")
    status, body, _ = await announce(gateway, acme, "live-3")
    assert status == 201, body
    call = await gateway.app[SERVICES].catalog.calls.get("acme", "live-3")
    assert call.refusal_code is None and call.ended_at is None
    # A call the policy refuses never takes a live place, and is refused for its reason.
    other = await gateway.tenant("other", None)
    assert (await announce(gateway, other, "no-instructions"))[0] == 403


async def test_rtp_calls_have_their_own_limit(gateway: Gateway) -> None:
    acme = await create_tenant(gateway, "acme")
    rtp = {"transport": "rtp", "codec": "pcmu"}
    assert (await announce(gateway, acme, "rtp-0", **rtp))[0] == 201
    status, body, _ = await announce(gateway, acme, "rtp-1", **rtp)
    assert (status, body["error"], body["limit"]) == (429, "limit_exceeded", "rtp_calls")
    await assert_only_the_refusal_is_stored(gateway, "acme", "rtp-1", "rtp_calls")
    # Other transports still have places under live_calls.
    assert (await announce(gateway, acme, "ws-0"))[0] == 201
    await end(gateway, acme, "rtp-0")
    assert (await announce(gateway, acme, "rtp-1", **rtp))[0] == 201


async def test_announces_per_minute_is_a_sliding_window_with_retry_after(
    gateway: Gateway, clock: FakeClock
) -> None:
    acme = await create_tenant(gateway, "acme", live_calls=100)
    for n in range(5):
        assert (await announce(gateway, acme, f"rate-{n}"))[0] == 201
        await end(gateway, acme, f"rate-{n}")
        clock.advance(10)  # the five at 0, 10, 20, 30, 40 s
    status, body, headers = await announce(gateway, acme, "rate-5")  # at 50 s
    assert (status, body["limit"]) == (429, "announces_per_minute"), body
    assert headers["Retry-After"] == "10"  # the one at 0 s leaves the window at 60 s
    await assert_only_the_refusal_is_stored(gateway, "acme", "rate-5", "announces_per_minute")
    clock.advance(5)  # a refused retry does not push the window out
    assert (await announce(gateway, acme, "rate-5"))[0] == 429
    clock.advance(6)  # 61 s: the first announcement has left the window
    assert (await announce(gateway, acme, "rate-5"))[0] == 201


async def test_one_tenant_at_its_limits_does_not_affect_another(gateway: Gateway) -> None:
    acme = await create_tenant(gateway, "acme")
    other = await create_tenant(gateway, "other")
    for n in range(3):
        assert (await announce(gateway, acme, f"a-{n}"))[0] == 201
    assert (await announce(gateway, acme, "a-3"))[0] == 429
    assert (await announce(gateway, acme, "a-rtp", transport="rtp", codec="pcmu"))[0] == 429
    for n in range(3):  # the same call ids: they are per tenant
        assert (await announce(gateway, other, f"a-{n}"))[0] == 201
    assert (await announce(gateway, other, "b-rtp", transport="rtp", codec="pcmu"))[0] == 429
    assert (await announce(gateway, acme, "a-4"))[0] == 429


async def test_the_defaults_come_from_the_settings_and_the_operator_overrides_them(
    gateway: Gateway,
) -> None:
    acme = await create_tenant(gateway, "acme", rtp_calls=0)
    response = await gateway.client.get("/v1/tenants/acme", headers=bearer(acme.admin))
    limits = (await response.json())["limits"]
    assert limits == {"live_calls": 3, "rtp_calls": 0, "announces_per_minute": 5}
    assert (await announce(gateway, acme, "r", transport="rtp", codec="pcmu"))[0] == 429

    # PATCH changes what it names; null goes back to the default; the rest stays.
    response = await gateway.client.patch(
        "/v1/tenants/acme",
        json={"limits": {"live_calls": 4, "rtp_calls": None}},
        headers=bearer(gateway.operator),
    )
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["limits"] == {"live_calls": 4, "rtp_calls": 1, "announces_per_minute": 5}
    assert body["name"] == "Acme"
    for n in range(4):
        assert (await announce(gateway, acme, f"p-{n}"))[0] == 201
    assert (await announce(gateway, acme, "p-4"))[0] == 429
    response = await gateway.client.patch(
        "/v1/tenants/acme", json={"name": "Acme SRL"}, headers=bearer(gateway.operator)
    )
    assert (await response.json())["limits"]["live_calls"] == 4  # unnamed: unchanged
    events = await gateway.app[SERVICES].catalog.audit.list("acme", limit=1000)
    updates = [e.detail for e in events if e.action == "tenant.updated"]
    assert updates == [{"limits": {"live_calls": 4, "rtp_calls": None}}, {"name": "Acme SRL"}]
    # Only the operator sets limits.
    response = await gateway.client.patch(
        "/v1/tenants/acme", json={"limits": {"live_calls": 1000}}, headers=bearer(acme.admin)
    )
    assert response.status == 403
    response = await gateway.client.get("/v1/tenants", headers=bearer(gateway.operator))
    (listed,) = (await response.json())["items"]
    assert listed["limits"]["live_calls"] == 4


@pytest.mark.parametrize(
    ("limits", "field"),
    [
        ({"live_calls": -1}, "limits.live_calls"),
        ({"rtp_calls": "5"}, "limits.rtp_calls"),
        ({"announces_per_minute": 1.5}, "limits.announces_per_minute"),
        ({"live_calls": True}, "limits.live_calls"),
        ({"live_calls": 10**7}, "limits.live_calls"),
        ({"calls": 5}, "limits.calls"),
        ([5], "limits"),
    ],
)
async def test_invalid_limits_are_400_naming_the_field(
    gateway: Gateway, limits: Any, field: str
) -> None:
    for method, path, body in (
        ("POST", "/v1/tenants", {"id": "newco", "name": "Newco", "limits": limits}),
        ("PATCH", "/v1/tenants/acme", {"limits": limits}),
    ):
        if method == "PATCH":
            await gateway.tenant("acme")
        response = await gateway.client.request(
            method, path, json=body, headers=bearer(gateway.operator)
        )
        answer = await response.json()
        assert response.status == 400, answer
        assert answer["error"] == "bad_request"
        assert answer["message"].startswith(f"{field}:"), answer
    response = await gateway.client.get("/v1/tenants", headers=bearer(gateway.operator))
    assert [t["id"] for t in (await response.json())["items"]] == ["acme"]
    response = await gateway.client.patch(
        "/v1/tenants/acme", json={"region": "us"}, headers=bearer(gateway.operator)
    )
    assert response.status == 400
    assert (await response.json())["message"].startswith("region:")


@pytest.mark.parametrize("body", [{}, {"limits": {}}, {"name": None}])
async def test_a_patch_that_names_nothing_is_400_and_audits_nothing(
    gateway: Gateway, body: dict[str, Any]
) -> None:
    await gateway.tenant("acme")
    catalog = gateway.app[SERVICES].catalog
    before = await catalog.audit.list("acme", limit=10_000)
    response = await gateway.client.patch(
        "/v1/tenants/acme", json=body, headers=bearer(gateway.operator)
    )
    answer = await response.json()
    assert (response.status, answer["error"]) == (400, "bad_request"), answer
    assert "nothing to change" in answer["message"]
    assert await catalog.audit.list("acme", limit=10_000) == before


async def test_an_unannounced_stream_over_a_limit_is_closed_1013(gateway: Gateway) -> None:
    acme = await create_tenant(gateway, "acme")
    for n in range(3):
        assert (await announce(gateway, acme, f"live-{n}"))[0] == 201
    ws = await gateway.client.ws_connect("/v1/ingest/twilio", headers=bearer(acme.pbx))
    await ws.send_str(twilio_start("unannounced", **CALL))
    message = await ws.receive(timeout=10)
    assert (ws.close_code, message.extra) == (1013, "limit_exceeded")
    await assert_only_the_refusal_is_stored(gateway, "acme", "unannounced", "live_calls")
    assert await gateway.app[SERVICES].catalog.objects.list("acme") == []


@pytest.mark.parametrize("concurrent", [12])
async def test_two_nodes_announcing_at_once_never_exceed_the_limit(
    aiohttp_client: Callable, tmp_path: Path, database_url: str, concurrent: int
) -> None:
    """Two gateways share one catalog; the tenant's announcements race on both: exactly
    the limit's number are accepted (each announcement counts and inserts in one
    transaction, serialized per tenant), the others are 429."""

    def node() -> Any:
        settings = limited_settings(tmp_path, live_calls=5)
        return build_app(settings.model_copy(update={"database_url": database_url}))

    first = await start_gateway(await aiohttp_client(GatewayServer(node())))
    second = Gateway(await aiohttp_client(GatewayServer(node())), first.operator)
    nodes = [first, second]
    acme = await nodes[0].tenant("acme", RECORD)
    answers = await asyncio.gather(
        *(announce(nodes[n % 2], acme, f"race-{n}", consent="granted") for n in range(concurrent))
    )
    statuses = sorted(status for status, _, _ in answers)
    assert statuses == [201] * 5 + [429] * (concurrent - 5), answers
    live = [c for c in await nodes[1].app[SERVICES].catalog.calls.of_number("acme", CALL["from"])]
    assert sum(1 for c in live if c.refusal_code is None) == 5

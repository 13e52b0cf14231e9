"""Revocable identities over the control API, against an in-process gateway on a FakeClock:
token expiry to the microsecond, the operator's own token routes, and break-glass minting
(refused without a reason, audited, sent to the tenant's webhook, short-lived).

API.md, "Exposure, limits and trust": any token can be revoked; a revoked or expired token is
401 at once; the operator may mint a tenant's first admin token, and once the tenant has an
admin an operator-minted admin or processor token needs ``break_glass``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from aiohttp import WSServerHandshakeError
from prometheus_client import CollectorRegistry

from gateway.settings import Settings, WebhookSettings
from gateway.state import SERVICES
from gateway.webhooks import WebhookSender, verify
from storage.catalog import Catalog
from tests.functional.test_ingest import NO_CONSENT, closed, objects_of
from tests.functional.test_webhooks import Receiver, receiver
from tests.gateway import T0, FakeClock, Gateway, TenantTokens, bearer, twilio_start

__all__ = ["receiver"]  # the fixture, shared with test_webhooks

HOUR = timedelta(hours=1)
MICROSECOND = timedelta(microseconds=1)
SECRET = "whsec_break-glass-0123456789"
RECORDINGS = "/v1/tenants/{tenant}/recordings"


def catalog_of(gateway: Gateway) -> Catalog:
    catalog: Catalog = gateway.app[SERVICES].catalog
    return catalog


async def mint(
    gateway: Gateway, tenant: str, by: str, *, status: int = 201, **body: Any
) -> dict[str, Any]:
    response = await gateway.client.post(
        f"/v1/tenants/{tenant}/tokens", json=body, headers=bearer(by)
    )
    answer: dict[str, Any] = await response.json()
    assert response.status == status, answer
    return answer


async def status_with(gateway: Gateway, secret: str, path: str = "/v1/tenants/acme") -> int:
    response = await gateway.client.get(path, headers=bearer(secret))
    await response.read()
    return response.status


async def new_tenant(gateway: Gateway, tenant: str = "acme") -> None:
    response = await gateway.client.post(
        "/v1/tenants", json={"id": tenant, "name": tenant.title()}, headers=bearer(gateway.operator)
    )
    assert response.status == 201, await response.text()


async def token_ids(gateway: Gateway, tenant: str) -> list[str]:
    return [token.id for token in await catalog_of(gateway).tokens.list(tenant)]


def iso(value: Any) -> str:
    return str(value.isoformat().replace("+00:00", "Z"))


# --- expiry ----------------------------------------------------------------------------------


async def test_a_token_works_until_one_microsecond_before_its_expiry_and_not_at_it(
    clocked_gateway: Gateway, clock: FakeClock
) -> None:
    gateway = clocked_gateway
    tenant = await gateway.tenant("acme")
    minted = await mint(gateway, "acme", tenant.admin, role="processor", expires_in="PT1H")
    expires_at = clock.now() + HOUR
    assert minted["expires_at"] == iso(expires_at)
    response = await gateway.client.get("/v1/tenants/acme/tokens", headers=bearer(tenant.admin))
    listed = {t["id"]: t for t in (await response.json())["items"]}
    assert listed[minted["id"]]["expires_at"] == iso(expires_at)
    assert listed[minted["id"]]["revoked_at"] is None

    path = RECORDINGS.format(tenant="acme")
    clock.current = expires_at - MICROSECOND
    assert await status_with(gateway, minted["token"], path) == 200
    clock.current = expires_at
    assert await status_with(gateway, minted["token"], path) == 401
    clock.current = expires_at + timedelta(days=400)
    assert await status_with(gateway, minted["token"], path) == 401
    # The tenant's other tokens, minted without expires_in, never expire.
    assert await status_with(gateway, tenant.processor, path) == 200


async def test_an_expired_operator_token_is_401_at_its_expiry(
    clocked_gateway: Gateway, clock: FakeClock
) -> None:
    gateway = clocked_gateway
    response = await gateway.client.post(
        "/v1/operator/tokens", json={"expires_in": "P30D"}, headers=bearer(gateway.operator)
    )
    assert response.status == 201
    minted = await response.json()
    expires_at = clock.now() + timedelta(days=30)
    assert (minted["role"], minted["tenant"], minted["expires_at"]) == (
        "operator",
        None,
        iso(expires_at),
    )
    clock.current = expires_at - MICROSECOND
    assert await status_with(gateway, minted["token"], "/v1/tenants") == 200
    clock.current = expires_at
    response = await gateway.client.get("/v1/tenants", headers=bearer(minted["token"]))
    assert response.status == 401
    assert (await response.json())["error"] == "unauthorized"


@pytest.mark.parametrize(
    ("expires_in", "says"),
    [
        ("P0D", "longer than zero"),
        ("PT0S", "longer than zero"),
        ("P", "not an ISO-8601 duration"),
        ("p1d", "not an ISO-8601 duration"),
        ("-PT1H", "not an ISO-8601 duration"),
        ("P1Y1D", "longer than P1Y"),
        ("P366D", "longer than P1Y"),  # T0 + P1Y is 365 days later
        ("P13M", "longer than P1Y"),
        ("PT0.0000001S", "shorter than a microsecond"),  # not zero, yet no time at all
        (3600, "must be a string"),
    ],
)
async def test_a_bad_expires_in_is_400_naming_it_and_mints_nothing(
    clocked_gateway: Gateway, expires_in: Any, says: str
) -> None:
    gateway = clocked_gateway
    tenant = await gateway.tenant("acme")
    before = await token_ids(gateway, "acme")
    answer = await mint(
        gateway, "acme", tenant.admin, status=400, role="pbx", expires_in=expires_in
    )
    assert answer["error"] == "bad_request"
    assert answer["message"].startswith("expires_in: "), answer
    assert says in answer["message"]
    response = await gateway.client.post(
        "/v1/operator/tokens", json={"expires_in": expires_in}, headers=bearer(gateway.operator)
    )
    assert response.status == 400
    assert (await response.json())["message"].startswith("expires_in: ")
    assert await token_ids(gateway, "acme") == before
    assert len(await catalog_of(gateway).tokens.list(None)) == 1


async def test_the_longest_expires_in_is_a_year(clocked_gateway: Gateway, clock: FakeClock) -> None:
    gateway = clocked_gateway
    tenant = await gateway.tenant("acme")
    year = await mint(gateway, "acme", tenant.admin, role="pbx", expires_in="P1Y")
    months = await mint(gateway, "acme", tenant.admin, role="pbx", expires_in="P12M")
    assert year["expires_at"] == months["expires_at"] == iso(clock.now().replace(year=2027))
    forever = await mint(gateway, "acme", tenant.admin, role="pbx", expires_in=None)
    assert forever["expires_at"] is None


# --- the operator's tokens -------------------------------------------------------------------


async def test_the_operator_lists_mints_and_revokes_operator_tokens(
    clocked_gateway: Gateway,
) -> None:
    gateway = clocked_gateway
    client, operator = gateway.client, bearer(gateway.operator)
    (own,) = await catalog_of(gateway).tokens.list(None)
    response = await client.post("/v1/operator/tokens", json={}, headers=operator)
    assert response.status == 201
    minted = await response.json()
    assert minted["token"].startswith("cv_")
    assert (minted["role"], minted["tenant"], minted["expires_at"]) == ("operator", None, None)
    assert await status_with(gateway, minted["token"], "/v1/tenants") == 200

    response = await client.get("/v1/operator/tokens", headers=operator)
    assert response.status == 200
    text = await response.text()
    items = json.loads(text)["items"]
    # The bootstrap token and this one.
    assert {item["id"] for item in items} == {own.id, minted["id"]}
    for secret in (minted["token"], gateway.operator):
        assert secret not in text
        assert hashlib.sha256(secret.encode()).hexdigest() not in text
    assert all(set(item) == set(minted) - {"token"} for item in items)

    response = await client.delete(f"/v1/operator/tokens/{minted['id']}", headers=operator)
    assert response.status == 200
    revoked = await response.json()
    assert revoked["id"] == minted["id"]
    assert revoked["revoked_at"] is not None
    assert "token" not in revoked
    assert await status_with(gateway, minted["token"], "/v1/tenants") == 401
    # Again: harmless, the first time kept.
    response = await client.delete(f"/v1/operator/tokens/{minted['id']}", headers=operator)
    assert (await response.json())["revoked_at"] == revoked["revoked_at"]
    response = await client.get("/v1/operator/tokens", headers=operator)
    listed = {item["id"]: item for item in (await response.json())["items"]}
    assert listed[minted["id"]]["revoked_at"] == revoked["revoked_at"]


async def test_operator_token_routes_are_the_operators_only(clocked_gateway: Gateway) -> None:
    gateway = clocked_gateway
    tenant = await gateway.tenant("acme")
    spare = (await catalog_of(gateway).tokens.list(None))[0].id
    for role in ("admin", "pbx", "processor"):
        headers = bearer(getattr(tenant, role))
        for method, path, body in (
            ("GET", "/v1/operator/tokens", None),
            ("POST", "/v1/operator/tokens", {}),
            ("DELETE", f"/v1/operator/tokens/{spare}", None),
            ("DELETE", "/v1/operator/tokens/tok_nobody", None),
        ):
            response = await gateway.client.request(method, path, json=body, headers=headers)
            assert response.status == 403, (role, method, path)
            assert (await response.json())["error"] == "forbidden"
    assert (await catalog_of(gateway).tokens.list(None))[0].revoked_at is None
    assert len(await catalog_of(gateway).tokens.list(None)) == 1


async def test_a_tenant_token_or_unknown_id_is_404_on_the_operator_route(
    clocked_gateway: Gateway,
) -> None:
    gateway = clocked_gateway
    tenant = await gateway.tenant("acme")
    (admin_id, *_) = await token_ids(gateway, "acme")
    for token_id in (admin_id, "tok_nobody"):
        response = await gateway.client.delete(
            f"/v1/operator/tokens/{token_id}", headers=bearer(gateway.operator)
        )
        assert response.status == 404
        assert (await response.json())["error"] == "not_found"
    assert await status_with(gateway, tenant.admin) == 200


async def test_the_operator_may_revoke_its_own_token(clocked_gateway: Gateway) -> None:
    gateway = clocked_gateway
    (own,) = await catalog_of(gateway).tokens.list(None)
    response = await gateway.client.delete(
        f"/v1/operator/tokens/{own.id}", headers=bearer(gateway.operator)
    )
    assert response.status == 200
    assert await status_with(gateway, gateway.operator, "/v1/tenants") == 401


async def test_an_operator_token_body_takes_only_expires_in(clocked_gateway: Gateway) -> None:
    gateway = clocked_gateway
    for body in ({"role": "admin"}, {"tenant": "acme"}, ["x"]):
        response = await gateway.client.post(
            "/v1/operator/tokens", json=body, headers=bearer(gateway.operator)
        )
        assert response.status == 400, body
    assert len(await catalog_of(gateway).tokens.list(None)) == 1


# --- break-glass -----------------------------------------------------------------------------


async def audit_of(gateway: Gateway, tenant: str) -> list[Any]:
    return await catalog_of(gateway).audit.list(tenant, limit=1000)


async def test_the_operator_mints_the_first_admin_freely_and_it_is_audited(
    clocked_gateway: Gateway,
) -> None:
    gateway = clocked_gateway
    await new_tenant(gateway)
    admin = await mint(gateway, "acme", gateway.operator, role="admin")
    assert admin["expires_at"] is None
    pbx = await mint(gateway, "acme", gateway.operator, role="pbx")  # pbx: never break-glass
    events = [e for e in await audit_of(gateway, "acme") if e.action.startswith("token.")]
    assert [(e.action, e.object, e.detail) for e in events] == [
        ("token.created", admin["id"], {"role": "admin", "expires_at": None}),
        ("token.created", pbx["id"], {"role": "pbx", "expires_at": None}),
    ]
    (own,) = await catalog_of(gateway).tokens.list(None)
    assert {e.actor for e in events} == {f"token:{own.id}"}


@pytest.mark.parametrize("role", ["admin", "processor"])
async def test_the_operators_token_for_a_tenant_with_an_admin_needs_break_glass(
    clocked_gateway: Gateway, role: str
) -> None:
    gateway = clocked_gateway
    tenant = await gateway.tenant("acme")
    before_tokens = await token_ids(gateway, "acme")
    before_events = await audit_of(gateway, "acme")
    answer = await mint(gateway, "acme", gateway.operator, status=403, role=role)
    assert answer["error"] == "break_glass_required"
    assert "break_glass" in answer["message"]
    # Nothing was minted, nothing audited, nothing queued.
    assert await token_ids(gateway, "acme") == before_tokens
    assert await audit_of(gateway, "acme") == before_events
    assert await catalog_of(gateway).jobs.list("acme", kind="webhook") == []
    # The tenant's own admin needs none, for any role; the operator none for a pbx token.
    await mint(gateway, "acme", tenant.admin, role=role)
    await mint(gateway, "acme", gateway.operator, role="pbx")


@pytest.fixture
def gateway_settings(gateway_settings: Settings) -> Settings:
    """The tier's settings, letting webhooks reach this file's plain-http receiver on
    loopback (a PUT refuses http:// and loopback addresses otherwise)."""
    webhooks = WebhookSettings(allow_private=True, allow_http=True)
    return gateway_settings.model_copy(update={"webhooks": webhooks})


async def webhooked_tenant(gateway: Gateway, url: str) -> TenantTokens:
    tenant = await gateway.tenant("acme")
    await gateway.instruct(tenant, {"webhook": {"url": url, "secret": SECRET}})
    return tenant


@pytest.fixture
async def sender(clocked_gateway: Gateway, clock: FakeClock) -> AsyncIterator[WebhookSender]:
    """The webhook sender of the gateway's catalog, allowed to reach the loopback receiver."""
    settings = WebhookSettings(allow_private=True, allow_http=True, timeout=timedelta(seconds=5))
    services = clocked_gateway.app[SERVICES]
    sender = WebhookSender(
        services.catalog, services.keys, settings, clock.now, "test-sender", CollectorRegistry()
    )
    yield sender
    await sender.close()


async def test_a_break_glass_token_is_audited_sent_to_the_tenant_and_lives_an_hour(
    clocked_gateway: Gateway, clock: FakeClock, receiver: Receiver, sender: WebhookSender
) -> None:
    gateway = clocked_gateway
    tenant = await webhooked_tenant(gateway, receiver.url)
    reason = "Incident 4711: the tenant's admin asked us to export a call"
    minted = await mint(
        gateway, "acme", gateway.operator, role="admin", break_glass={"reason": reason}
    )
    expires_at = clock.now() + HOUR
    assert (minted["role"], minted["expires_at"]) == ("admin", iso(expires_at))
    (own,) = await catalog_of(gateway).tokens.list(None)
    actor = f"token:{own.id}"

    events = await audit_of(gateway, "acme")
    assert [(e.action, e.object) for e in events[-2:]] == [
        ("token.created", minted["id"]),
        ("token.break_glass", minted["id"]),
    ]
    created, glass = events[-2:]
    assert created.detail == {"role": "admin", "expires_at": iso(expires_at), "break_glass": True}
    assert glass.actor == actor
    assert glass.detail == {"role": "admin", "expires_at": iso(expires_at), "reason": reason}
    assert (await catalog_of(gateway).audit.verify("acme")).ok
    digest = hashlib.sha256(minted["token"].encode()).hexdigest()
    assert minted["token"] not in repr(events) and digest not in repr(events)

    # The tenant's webhook gets it: queued with the token row, delivered and signed.
    (job,) = await catalog_of(gateway).jobs.list("acme", kind="webhook")
    assert job.payload is not None
    assert job.payload["event"] == "token.break_glass"
    data = {
        "token_id": minted["id"],
        "actor": actor,
        "role": "admin",
        "expires_at": iso(expires_at),
        "reason": reason,
    }
    assert job.payload["data"] == data
    assert await sender.deliver_once() is True
    (delivery,) = receiver.received
    assert delivery.headers["Callvault-Event"] == "token.break_glass"
    body = json.loads(delivery.body)
    assert (body["event"], body["tenant"], body["data"]) == ("token.break_glass", "acme", data)
    assert verify(
        SECRET,
        delivery.headers["Callvault-Signature"],
        delivery.body,
        now=int(clock.now().timestamp()),
    )
    assert minted["token"] not in delivery.body.decode()

    # It works for an hour, then never again.
    clock.current = expires_at - MICROSECOND
    assert await status_with(gateway, minted["token"], "/v1/tenants/acme/audit") == 200
    clock.current = expires_at
    assert await status_with(gateway, minted["token"], "/v1/tenants/acme/audit") == 401
    assert await status_with(gateway, tenant.admin, "/v1/tenants/acme/audit") == 200


async def test_a_break_glass_token_lives_at_most_an_hour(
    clocked_gateway: Gateway, clock: FakeClock
) -> None:
    gateway = clocked_gateway
    await gateway.tenant("acme")
    glass = {"reason": "support case 12"}
    shorter = await mint(
        gateway, "acme", gateway.operator, role="processor", break_glass=glass, expires_in="PT30M"
    )
    assert shorter["expires_at"] == iso(clock.now() + timedelta(minutes=30))
    before = await token_ids(gateway, "acme")
    for too_long in ("PT1H0M1S", "PT2H", "P1D"):
        answer = await mint(
            gateway,
            "acme",
            gateway.operator,
            status=400,
            role="admin",
            break_glass=glass,
            expires_in=too_long,
        )
        assert answer["message"].startswith("expires_in: "), answer
        assert "PT1H" in answer["message"]
    assert await token_ids(gateway, "acme") == before
    exactly = await mint(
        gateway, "acme", gateway.operator, role="admin", break_glass=glass, expires_in="PT1H"
    )
    assert exactly["expires_at"] == iso(clock.now() + HOUR)


@pytest.mark.parametrize(
    ("break_glass", "field"),
    [
        ({}, "break_glass.reason"),
        ({"reason": ""}, "break_glass.reason"),
        ({"reason": "   "}, "break_glass.reason"),
        ({"reason": "x" * 501}, "break_glass.reason"),
        ({"reason": 7}, "break_glass.reason"),
        ({"reason": "ok", "ticket": "1"}, "break_glass.ticket"),
        ("because", "break_glass"),
    ],
)
async def test_a_break_glass_without_a_proper_reason_is_400_and_mints_nothing(
    clocked_gateway: Gateway, break_glass: Any, field: str
) -> None:
    gateway = clocked_gateway
    await gateway.tenant("acme")
    before = await token_ids(gateway, "acme")
    answer = await mint(
        gateway, "acme", gateway.operator, status=400, role="admin", break_glass=break_glass
    )
    assert answer["error"] == "bad_request"
    assert answer["message"].startswith(f"{field}: "), answer
    assert await token_ids(gateway, "acme") == before


async def test_a_reason_of_500_characters_is_kept_whole(clocked_gateway: Gateway) -> None:
    gateway = clocked_gateway
    await gateway.tenant("acme")
    reason = "r" * 500
    minted = await mint(
        gateway, "acme", gateway.operator, role="admin", break_glass={"reason": reason}
    )
    (glass,) = [e for e in await audit_of(gateway, "acme") if e.action == "token.break_glass"]
    assert (glass.object, glass.detail["reason"]) == (minted["id"], reason)


async def test_a_tenant_admin_cannot_claim_break_glass(clocked_gateway: Gateway) -> None:
    gateway = clocked_gateway
    tenant = await gateway.tenant("acme")
    answer = await mint(
        gateway, "acme", tenant.admin, status=400, role="admin", break_glass={"reason": "x"}
    )
    assert answer["message"].startswith("break_glass: ")
    assert not [e for e in await audit_of(gateway, "acme") if e.action == "token.break_glass"]


async def test_without_a_webhook_break_glass_is_audited_and_nothing_is_queued(
    clocked_gateway: Gateway,
) -> None:
    gateway = clocked_gateway
    await gateway.tenant("acme")
    minted = await mint(
        gateway, "acme", gateway.operator, role="processor", break_glass={"reason": "case 9"}
    )
    (glass,) = [e for e in await audit_of(gateway, "acme") if e.action == "token.break_glass"]
    assert glass.object == minted["id"]
    assert await catalog_of(gateway).jobs.list("acme", kind="webhook") == []


async def test_once_the_tenant_had_an_admin_the_operator_needs_break_glass_for_good(
    clocked_gateway: Gateway, clock: FakeClock
) -> None:
    # "The operator may mint a tenant's *first* admin token": not the first *active* one,
    # else the operator revokes the tenant's admins and mints itself one nobody hears of.
    gateway = clocked_gateway
    await new_tenant(gateway)
    first = await mint(gateway, "acme", gateway.operator, role="admin", expires_in="PT10M")
    second = await mint(gateway, "acme", first["token"], role="admin")
    await mint(gateway, "acme", gateway.operator, status=403, role="admin")
    # One revoked by its tenant, the other by the operator, the first one expired as well.
    for token, by in ((second, first["token"]), (first, gateway.operator)):
        response = await gateway.client.delete(
            f"/v1/tenants/acme/tokens/{token['id']}", headers=bearer(by)
        )
        assert response.status == 200
    clock.current = clock.now() + timedelta(minutes=10)
    assert not [t for t in await catalog_of(gateway).tokens.list("acme") if t.active(clock.now())]
    before_tokens = await token_ids(gateway, "acme")
    before_events = await audit_of(gateway, "acme")
    for role in ("admin", "processor"):
        answer = await mint(gateway, "acme", gateway.operator, status=403, role=role)
        assert answer["error"] == "break_glass_required"
    assert await token_ids(gateway, "acme") == before_tokens
    assert await audit_of(gateway, "acme") == before_events
    # The way in is break-glass: audited as such, an hour at most.
    glass = await mint(
        gateway, "acme", gateway.operator, role="admin", break_glass={"reason": "lost admin"}
    )
    assert glass["expires_at"] == iso(clock.now() + HOUR)
    assert (await audit_of(gateway, "acme"))[-1].action == "token.break_glass"


async def test_a_break_glass_token_mints_no_token(
    clocked_gateway: Gateway, clock: FakeClock
) -> None:
    # Else its hour buys a permanent admin that the tenant's webhook never hears of.
    gateway = clocked_gateway
    tenant = await gateway.tenant("acme")
    glass = await mint(
        gateway, "acme", gateway.operator, role="admin", break_glass={"reason": "support"}
    )
    before_tokens = await token_ids(gateway, "acme")
    before_events = await audit_of(gateway, "acme")
    for body in ({"role": "admin"}, {"role": "pbx"}, {"role": "processor", "expires_in": "PT1M"}):
        answer = await mint(gateway, "acme", glass["token"], status=403, **body)
        assert answer["error"] == "forbidden", answer
        assert answer["message"].startswith("A break-glass token may not mint tokens"), answer
    assert await token_ids(gateway, "acme") == before_tokens
    assert await audit_of(gateway, "acme") == before_events
    # Its other admin powers stay for its hour; the catalog and the list say what it is.
    assert await status_with(gateway, glass["token"], "/v1/tenants/acme/tokens") == 200
    response = await gateway.client.get("/v1/tenants/acme/tokens", headers=bearer(tenant.admin))
    listed = {t["id"]: t["break_glass"] for t in (await response.json())["items"]}
    assert listed.pop(glass["id"]) is True
    assert set(listed.values()) == {False}
    assert glass["break_glass"] is True
    # The tenant's own admin still mints; its tokens are not break-glass.
    assert (await mint(gateway, "acme", tenant.admin, role="admin"))["break_glass"] is False
    clock.current = clock.now() + HOUR
    assert await status_with(gateway, glass["token"], "/v1/tenants/acme/tokens") == 401


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"role": "pbx", "expiresIn": "PT1H"}, "expiresIn"),
        ({"role": "pbx", "expires": "PT1H"}, "expires"),
        ({"role": "admin", "breakGlass": {"reason": "x"}}, "breakGlass"),
        ({"role": "pbx", "id": "tok_chosen"}, "id"),
    ],
)
async def test_a_token_body_with_an_unknown_field_is_400_naming_it(
    clocked_gateway: Gateway, body: dict[str, Any], field: str
) -> None:
    # A misspelt expires_in would otherwise mint a token that never expires.
    gateway = clocked_gateway
    tenant = await gateway.tenant("acme")
    before = await token_ids(gateway, "acme")
    for by in (tenant.admin, gateway.operator):
        answer = await mint(gateway, "acme", by, status=400, **body)
        assert answer["error"] == "bad_request"
        assert answer["message"].startswith(f"{field}: "), answer
    assert await token_ids(gateway, "acme") == before


# --- revocation, audited -----------------------------------------------------------------


async def test_the_operators_revocation_of_a_tenant_token_is_audited_once(
    clocked_gateway: Gateway,
) -> None:
    gateway = clocked_gateway
    tenant = await gateway.tenant("acme")
    minted = await mint(gateway, "acme", tenant.admin, role="pbx", expires_in="P7D")
    for _ in range(2):
        response = await gateway.client.delete(
            f"/v1/tenants/acme/tokens/{minted['id']}", headers=bearer(gateway.operator)
        )
        assert response.status == 200
    assert await status_with(gateway, minted["token"], "/v1/tenants/acme/calls/c") == 401
    revoked = [e for e in await audit_of(gateway, "acme") if e.action == "token.revoked"]
    (own,) = await catalog_of(gateway).tokens.list(None)
    assert [(e.actor, e.object, e.detail) for e in revoked] == [
        (f"token:{own.id}", minted["id"], {"role": "pbx", "expires_at": minted["expires_at"]})
    ]
    assert minted["expires_at"] == iso(T0 + timedelta(days=7))


# --- ingest ----------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["header", "query", "start"])
async def test_a_revoked_or_expired_pbx_token_is_refused_at_ingest(
    clocked_gateway: Gateway, clock: FakeClock, where: str
) -> None:
    gateway = clocked_gateway
    tenant = await gateway.tenant("acme", NO_CONSENT)
    call_id = (await gateway.announce(tenant))["call_id"]
    revoked = await mint(gateway, "acme", tenant.admin, role="pbx")
    response = await gateway.client.delete(
        f"/v1/tenants/acme/tokens/{revoked['id']}", headers=bearer(tenant.admin)
    )
    assert response.status == 200
    expiring = await mint(gateway, "acme", tenant.admin, role="pbx", expires_in="PT1M")
    clock.current += timedelta(minutes=1)
    for token in (revoked["token"], expiring["token"]):
        if where == "header":
            # Checked before the upgrade: an HTTP 401, and no WebSocket.
            with pytest.raises(WSServerHandshakeError) as refused:
                await gateway.client.ws_connect("/v1/ingest/twilio", headers=bearer(token))
            assert refused.value.status == 401, where
            continue
        if where == "query":
            ws = await gateway.client.ws_connect(f"/v1/ingest/twilio?token={token}")
            await ws.send_str(twilio_start(call_id))
        else:
            ws = await gateway.client.ws_connect("/v1/ingest/twilio")
            await ws.send_str(twilio_start(call_id, token=token))
        assert await closed(ws) == (1008, "unauthorized"), where
    assert await objects_of(gateway, "acme") == []

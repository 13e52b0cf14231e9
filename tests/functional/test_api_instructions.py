"""The tenant's documented instructions over HTTP: versions, whole-document PUT, history,
validation (422 naming the field, nothing stored), the audit trail of every change, and the
write-only webhook secret (never in a response, an audit event or a log line).

The instructions are what makes a call's handling lawful, so the API must never lose a
version, never half-apply a bad document, and always say who set which version.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from typing import Any

import pytest

from crypto.errors import KeyUnavailable
from gateway.app import build_app
from gateway.settings import AudioSocketSettings, Settings, WebhookSettings
from gateway.state import SERVICES
from storage.instructions import SealedSecret
from storage.webhooksecret import open_secret
from tests.gateway import Gateway, GatewayServer, TenantTokens, bearer, start_gateway
from tests.unit.test_instructions import DEFAULT_DOCUMENT

DEFAULTS = DEFAULT_DOCUMENT  # the API serves the documented defaults
SECRET = "whsec_s3cr3t-Value-0123456789"
HOOK = "https://hooks.example.com/callvault"


def document(**changes: Any) -> dict[str, Any]:
    """The defaults with whole sections replaced (``recording={"enabled": True}``)."""
    return {**DEFAULTS, **changes}


def without_meta(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("version", "created_at", "created_by")}


async def put(gateway: Gateway, tenant: TenantTokens, body: Any) -> tuple[int, dict[str, Any]]:
    response = await gateway.client.put(
        f"/v1/tenants/{tenant.id}/instructions", json=body, headers=bearer(tenant.admin)
    )
    return response.status, dict(await response.json())


async def history(gateway: Gateway, tenant: TenantTokens) -> list[dict[str, Any]]:
    response = await gateway.client.get(
        f"/v1/tenants/{tenant.id}/instructions/history", headers=bearer(tenant.admin)
    )
    assert response.status == 200
    return list((await response.json())["items"])


async def admin_token_id(gateway: Gateway, tenant: TenantTokens) -> str:
    response = await gateway.client.get(
        f"/v1/tenants/{tenant.id}/tokens", headers=bearer(tenant.admin)
    )
    admins = [t["id"] for t in (await response.json())["items"] if t["role"] == "admin"]
    assert len(admins) == 1
    return str(admins[0])


async def test_before_any_put_the_instructions_are_version_0_all_off(gateway: Gateway) -> None:
    tenant = await gateway.tenant("acme")
    for token in (tenant.admin, gateway.operator):
        response = await gateway.client.get("/v1/tenants/acme/instructions", headers=bearer(token))
        assert response.status == 200
        assert await response.json() == {
            "version": 0,
            "created_at": None,
            "created_by": None,
            **DEFAULTS,
        }
    assert await history(gateway, tenant) == []


async def test_each_put_stores_a_new_version_and_get_returns_the_latest(
    clocked_gateway: Gateway,
) -> None:
    gateway = clocked_gateway
    tenant = await gateway.tenant("acme")
    first = document(recording={"enabled": True})
    status, body = await put(gateway, tenant, first)
    assert status == 200
    assert body["version"] == 1
    assert body["created_at"] == "2026-11-28T10:00:00Z"  # the gateway's (fake) clock
    assert without_meta(body) == first

    second = document(
        recording={"enabled": True},
        ai={**DEFAULTS["ai"], "summary": True, "language": "ro"},
        retention={"recordings": "PT30S", "transcripts": "P1Y2M10DT2H30M", "call_records": "P3Y"},
        exclude_numbers=["+40712345678"],
    )
    status, body = await put(gateway, tenant, second)
    assert (status, body["version"]) == (200, 2)
    assert without_meta(body) == second

    response = await gateway.client.get(
        "/v1/tenants/acme/instructions", headers=bearer(tenant.admin)
    )
    assert await response.json() == body


async def test_put_replaces_the_whole_document(gateway: Gateway) -> None:
    tenant = await gateway.tenant("acme")
    status, _ = await put(
        gateway,
        tenant,
        {
            "recording": {"enabled": True},
            "consent": {"required": False},
            "ai": {"summary": True, "topics": True},
            "retention": {"recordings": "P30D"},
            "exclude_numbers": ["+40 712-345-678"],
        },
    )
    assert status == 200
    # The second PUT names only recording: everything it omits is back at its default,
    # not kept from version 1 (consent required again, no AI, default retention, no list).
    status, body = await put(gateway, tenant, {"recording": {"enabled": True}})
    assert status == 200
    assert body["version"] == 2
    assert without_meta(body) == document(recording={"enabled": True})
    # Within a section too: naming one AI feature resets the others.
    status, body = await put(gateway, tenant, {"ai": {"transcript": True}})
    assert body["ai"] == {**DEFAULTS["ai"], "transcript": True}
    assert body["recording"] == {"enabled": False}


async def test_numbers_are_stored_normalized_and_deduplicated(gateway: Gateway) -> None:
    tenant = await gateway.tenant("acme")
    status, body = await put(
        gateway,
        tenant,
        {"exclude_numbers": ["+40 712-345-678", "+40 (712) 345.678", "+4021 000 0000"]},
    )
    assert status == 200
    assert body["exclude_numbers"] == ["+40712345678", "+40210000000"]


async def test_a_document_echoed_back_from_get_is_accepted(gateway: Gateway) -> None:
    # Clients GET, change a field, PUT: the server-set fields they send back are ignored.
    tenant = await gateway.tenant("acme")
    _, first = await put(gateway, tenant, {"recording": {"enabled": True}})
    echoed = {**first, "consent": {"required": False}, "version": 99, "created_by": "me"}
    status, body = await put(gateway, tenant, echoed)
    assert status == 200
    assert body["version"] == 2
    assert body["created_by"] != "me"
    assert body["consent"] == {"required": False}


async def test_history_lists_every_version_oldest_first_with_its_author(
    gateway: Gateway,
) -> None:
    tenant = await gateway.tenant("acme")
    admin_id = await admin_token_id(gateway, tenant)
    other = await gateway.client.post(
        "/v1/tenants/acme/tokens", json={"role": "admin"}, headers=bearer(tenant.admin)
    )
    other_admin = await other.json()
    bodies = []
    for enabled, token in (
        (True, tenant.admin),
        (False, other_admin["token"]),
        (True, tenant.admin),
    ):
        response = await gateway.client.put(
            "/v1/tenants/acme/instructions",
            json={"recording": {"enabled": enabled}, "ai": {"transcript": not enabled}},
            headers=bearer(token),
        )
        assert response.status == 200
        bodies.append(await response.json())

    items = await history(gateway, tenant)
    assert items == bodies
    assert [item["version"] for item in items] == [1, 2, 3]
    assert [item["created_by"] for item in items] == [admin_id, other_admin["id"], admin_id]
    assert [item["recording"]["enabled"] for item in items] == [True, False, True]
    # The operator may read the history too.
    response = await gateway.client.get(
        "/v1/tenants/acme/instructions/history", headers=bearer(gateway.operator)
    )
    assert (await response.json())["items"] == items


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"recording": {"enabled": True}, "colour": "red"}, "colour"),
        ({"recording": {"enabled": True, "format": "mp3"}}, "recording.format"),
        ({"ai": {"transcript": True, "emotion": True}}, "ai.emotion"),
        ({"recording": {"enabled": "yes"}}, "recording.enabled"),
        ({"recording": {"enabled": 1}}, "recording.enabled"),
        ({"consent": {"required": None}}, "consent.required"),
        ({"recording": True}, "recording"),
        ({"ai": {"language": "english"}}, "ai.language"),
        ({"retention": {"recordings": "90 days"}}, "retention.recordings"),
        ({"retention": {"transcripts": "P0D"}}, "retention.transcripts"),
        ({"retention": {"call_records": "-P1Y"}}, "retention.call_records"),
        ({"retention": {"recordings": "P200Y"}}, "retention.recordings"),
        ({"retention": {"recordings": 90}}, "retention.recordings"),
        ({"exclude_numbers": "+40712345678"}, "exclude_numbers"),
        ({"exclude_numbers": ["+40712345678", "0712 345 678"]}, "exclude_numbers.1"),
        ({"exclude_numbers": [40712345678]}, "exclude_numbers.0"),
        (["recording"], "(body)"),
        ({"ai": {"categories": {"Billing": ["invoice"]}}}, "ai.categories"),
        ({"ai": {"categories": {"billing": ["  "]}}}, "ai.categories.billing.0"),
        ({"ai": {"categories": {"billing": []}}}, "ai.categories.billing"),
        ({"webhook": {"url": HOOK}}, "webhook.secret"),
        ({"webhook": {"url": "ftp://example.com", "secret": SECRET}}, "webhook.url"),
        ({"webhook": {"url": HOOK, "secret": "short"}}, "webhook.secret"),
        ({"webhook": {"url": HOOK, "secret": "<redacted>"}}, "webhook.secret"),
        ({"webhook": {"url": HOOK, "secret": SECRET, "events": []}}, "webhook.events"),
    ],
    ids=[
        "unknown-top-field",
        "unknown-recording-field",
        "unknown-ai-feature",
        "string-bool",
        "int-bool",
        "null-bool",
        "bool-for-section",
        "bad-language",
        "prose-duration",
        "zero-duration",
        "negative-duration",
        "absurd-duration",
        "number-duration",
        "string-for-list",
        "national-number",
        "number-not-string",
        "not-an-object",
        "bad-category-name",
        "blank-phrase",
        "no-phrases",
        "url-without-secret",
        "ftp-url",
        "short-secret",
        "redacted-without-secret",
        "unknown-webhook-field",
    ],
)
async def test_an_invalid_document_is_422_naming_the_field_and_stores_nothing(
    gateway: Gateway, body: Any, field: str
) -> None:
    tenant = await gateway.tenant("acme")
    status, good = await put(gateway, tenant, {"recording": {"enabled": True}})
    assert status == 200
    status, answer = await put(gateway, tenant, body)
    assert status == 422, answer
    assert answer["error"] == "invalid_instructions"
    assert answer["field"] == field
    assert answer["message"]
    assert await history(gateway, tenant) == [good]
    response = await gateway.client.get(
        "/v1/tenants/acme/instructions", headers=bearer(tenant.admin)
    )
    assert await response.json() == good
    actions = [e.action for e in await gateway.app[SERVICES].catalog.audit.list("acme")]
    assert actions.count("instructions.updated") == 1


async def test_a_body_that_is_not_json_is_400_and_stores_nothing(gateway: Gateway) -> None:
    tenant = await gateway.tenant("acme")
    response = await gateway.client.put(
        "/v1/tenants/acme/instructions", data=b'{"recording": ', headers=bearer(tenant.admin)
    )
    assert response.status == 400
    assert (await response.json())["error"] == "bad_json"
    assert await history(gateway, tenant) == []


async def test_every_put_leaves_an_audit_event(gateway: Gateway) -> None:
    tenant = await gateway.tenant("acme")
    admin_id = await admin_token_id(gateway, tenant)
    for enabled in (True, False, True):
        status, _ = await put(gateway, tenant, {"recording": {"enabled": enabled}})
        assert status == 200
    await put(gateway, tenant, {"bogus": True})  # refused: no event
    events = [
        e
        for e in await gateway.app[SERVICES].catalog.audit.list("acme")
        if e.action == "instructions.updated"
    ]
    assert [e.object for e in events] == ["instructions:1", "instructions:2", "instructions:3"]
    assert [e.detail["version"] for e in events] == [1, 2, 3]
    assert {e.actor for e in events} == {f"token:{admin_id}"}
    assert (await gateway.app[SERVICES].catalog.audit.verify("acme")).ok


@pytest.mark.parametrize("role", ["operator", "pbx", "processor"])
async def test_only_an_admin_may_put_instructions(gateway: Gateway, role: str) -> None:
    tenant = await gateway.tenant("acme")
    token = gateway.operator if role == "operator" else getattr(tenant, role)
    response = await gateway.client.put(
        "/v1/tenants/acme/instructions",
        json={"recording": {"enabled": True}},
        headers=bearer(token),
    )
    assert response.status == 403
    assert await history(gateway, tenant) == []


# --- ai.categories and the webhook --------------------------------------------------------


async def test_categories_round_trip_as_written(gateway: Gateway) -> None:
    tenant = await gateway.tenant("acme")
    categories = {"cancellation": ["cancel", " terminate ", "cancel"], "billing": ["Invoice"]}
    status, body = await put(gateway, tenant, {"ai": {"topics": True, "categories": categories}})
    assert status == 200, body
    stored = {"cancellation": ["cancel", "terminate"], "billing": ["Invoice"]}
    assert body["ai"]["categories"] == stored
    response = await gateway.client.get(
        "/v1/tenants/acme/instructions", headers=bearer(tenant.admin)
    )
    assert (await response.json())["ai"]["categories"] == stored
    row = await gateway.app[SERVICES].catalog.instructions.latest("acme")
    assert row is not None
    assert row.document["ai"]["categories"] == stored


async def _responses_and_records(gateway: Gateway, tenant: TenantTokens) -> str:
    """Every place the instructions can be read back, as one text: GET (admin, operator),
    history, and the audit events."""
    texts = []
    for path in ("/v1/tenants/acme/instructions", "/v1/tenants/acme/instructions/history"):
        for token in (tenant.admin, gateway.operator):
            response = await gateway.client.get(path, headers=bearer(token))
            assert response.status == 200
            texts.append(await response.text())
    events = await gateway.app[SERVICES].catalog.audit.list("acme", limit=1000)
    texts += [json.dumps(dataclasses.asdict(e), default=str) for e in events]
    return "\n".join(texts)


async def stored_secret(gateway: Gateway, document: dict[str, Any]) -> str:
    """The secret a stored document holds, opened with the tenant's keys."""
    services = gateway.app[SERVICES]
    sealed = SealedSecret.model_validate(document["webhook"]["secret"])
    return await open_secret(services.catalog, services.keys, "acme", sealed)


async def test_the_webhook_secret_is_write_only(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    # The gateway's own loggers at DEBUG, the rest at the INFO that gateway.logs configures
    # (aiosqlite's DEBUG lines carry every SQL parameter, stored documents included).
    caplog.set_level(logging.INFO)
    for name in ("gateway", "callvault", "storage"):
        caplog.set_level(logging.DEBUG, logger=name)
    tenant = await gateway.tenant("acme")
    status, body = await put(gateway, tenant, {"webhook": {"url": HOOK, "secret": SECRET}})
    assert status == 200, body
    assert body["webhook"] == {"url": HOOK, "secret": "<redacted>"}
    response = await gateway.client.get(
        "/v1/tenants/acme/instructions", headers=bearer(tenant.admin)
    )
    assert (await response.json())["webhook"] == {"url": HOOK, "secret": "<redacted>"}
    assert [item["webhook"] for item in await history(gateway, tenant)] == [
        {"url": HOOK, "secret": "<redacted>"}
    ]
    # Stored sealed, for the sender to open and sign with ...
    services = gateway.app[SERVICES]
    row = await services.catalog.instructions.latest("acme")
    assert row is not None
    assert await stored_secret(gateway, row.document) == SECRET
    assert SECRET not in json.dumps(row.document)
    # ... and shown nowhere: no response, no audit event, no log line.
    texts = await _responses_and_records(gateway, tenant)
    assert "instructions.updated" in texts
    assert SECRET not in texts
    assert SECRET not in caplog.text
    # A PUT with the secret refused for another field: the 422 does not echo it either.
    status, answer = await put(
        gateway, tenant, {"webhook": {"url": HOOK, "secret": SECRET}, "bogus": 1}
    )
    assert status == 422
    assert SECRET not in json.dumps(answer)


async def test_a_secret_of_a_later_version_is_redacted_but_null_stays_null(
    gateway: Gateway,
) -> None:
    tenant = await gateway.tenant("acme")
    await put(gateway, tenant, {"webhook": {"url": HOOK, "secret": SECRET}})
    status, body = await put(gateway, tenant, {"recording": {"enabled": True}})
    assert status == 200
    # PUT replaces the whole document: no webhook section means no webhook any more.
    assert body["webhook"] == {"url": None, "secret": None}
    items = await history(gateway, tenant)
    assert [item["webhook"]["secret"] for item in items] == ["<redacted>", None]


async def test_put_back_of_get_keeps_the_secret(gateway: Gateway) -> None:
    tenant = await gateway.tenant("acme")
    await put(gateway, tenant, {"webhook": {"url": HOOK, "secret": SECRET}})
    response = await gateway.client.get(
        "/v1/tenants/acme/instructions", headers=bearer(tenant.admin)
    )
    echoed = {**(await response.json()), "recording": {"enabled": True}}
    assert echoed["webhook"]["secret"] == "<redacted>"
    status, body = await put(gateway, tenant, echoed)
    assert status == 200, body
    assert body["version"] == 2
    assert body["webhook"] == {"url": HOOK, "secret": "<redacted>"}
    catalog = gateway.app[SERVICES].catalog
    versions = await catalog.instructions.history("acme")
    # The very same sealed secret, not a copy: one key row for the one secret.
    assert versions[0].document["webhook"] == versions[1].document["webhook"]
    assert await stored_secret(gateway, versions[1].document) == SECRET
    assert versions[1].document["recording"] == {"enabled": True}

    # A new URL with the redacted secret keeps the secret too; a new secret replaces it.
    other = "https://other.example.com/in"
    status, _ = await put(gateway, tenant, {"webhook": {"url": other, "secret": "<redacted>"}})
    assert status == 200
    rotated = "whsec_rotated-0123456789"
    status, _ = await put(gateway, tenant, {"webhook": {"url": other, "secret": rotated}})
    assert status == 200
    versions = await catalog.instructions.history("acme")
    assert [v.document["webhook"]["url"] for v in versions[2:]] == [other, other]
    assert versions[2].document["webhook"]["secret"] == versions[0].document["webhook"]["secret"]
    assert await stored_secret(gateway, versions[3].document) == rotated
    # The replaced secret is shredded: no version's copy of it can be opened any more.
    with pytest.raises(KeyUnavailable):
        await stored_secret(gateway, versions[0].document)


async def test_redacted_without_a_current_secret_is_422(gateway: Gateway) -> None:
    tenant = await gateway.tenant("acme")
    redacted = {"webhook": {"url": HOOK, "secret": "<redacted>"}}
    status, answer = await put(gateway, tenant, redacted)  # never any instructions
    assert (status, answer["error"], answer["field"]) == (
        422,
        "invalid_instructions",
        "webhook.secret",
    )
    assert "<redacted>" in answer["message"]
    await put(gateway, tenant, {"webhook": {"url": HOOK, "secret": SECRET}})
    await put(gateway, tenant, {"webhook": {"url": None, "secret": None}})  # secret removed
    status, answer = await put(gateway, tenant, redacted)
    assert (status, answer["field"]) == (422, "webhook.secret")
    assert len(await history(gateway, tenant)) == 2


async def test_the_secret_of_another_tenant_is_never_carried_over(gateway: Gateway) -> None:
    acme = await gateway.tenant("acme")
    other = await gateway.tenant("other")
    await put(gateway, acme, {"webhook": {"url": HOOK, "secret": SECRET}})
    status, answer = await put(gateway, other, {"webhook": {"url": HOOK, "secret": "<redacted>"}})
    assert (status, answer["field"]) == (422, "webhook.secret")


# --- where a webhook may go -----------------------------------------------------------------


async def gateway_with(
    aiohttp_client: Callable[..., Any], settings: Settings, **webhooks: bool
) -> Gateway:
    """A second gateway, in a data dir of its own, with these webhook settings."""
    changed = settings.model_copy(
        update={
            "data_dir": settings.data_dir.with_name("allowing"),
            "webhooks": WebhookSettings(**webhooks),
            "audiosocket": AudioSocketSettings(port=0),  # ``gateway`` may hold the port
        }
    )
    return await start_gateway(await aiohttp_client(GatewayServer(build_app(changed))))


async def test_an_http_webhook_is_422_unless_the_operator_allows_http(
    gateway: Gateway, aiohttp_client: Callable[..., Any], gateway_settings: Settings
) -> None:
    tenant = await gateway.tenant("acme")
    plain = {"webhook": {"url": "http://hooks.example.com/callvault", "secret": SECRET}}
    status, answer = await put(gateway, tenant, plain)
    assert (status, answer["error"], answer["field"]) == (
        422,
        "invalid_instructions",
        "webhook.url",
    )
    assert "https://" in answer["message"]
    assert "hooks.example.com" not in answer["message"]  # the URL is never quoted
    assert await history(gateway, tenant) == []
    # Nothing was sealed either: no key row for a secret that was never stored.
    catalog = gateway.app[SERVICES].catalog
    assert [row async for row in catalog.keys.list("acme")] == []

    allowing = await gateway_with(aiohttp_client, gateway_settings, allow_http=True)
    other = await allowing.tenant("other")
    status, answer = await put(allowing, other, plain)
    assert status == 200, answer
    assert answer["webhook"] == {"url": plain["webhook"]["url"], "secret": "<redacted>"}


PRIVATE_URLS = [
    pytest.param("https://[2002:7f00:1::1]/hook", "6to4", id="6to4"),
    pytest.param("https://[64:ff9b::a9fe:a9fe]/hook", "NAT64", id="nat64"),
    pytest.param("https://[64:ff9b:1::a00:1]/hook", "NAT64 local-use", id="nat64-local"),
    pytest.param("https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", "Teredo", id="teredo"),
    pytest.param("https://[::a00:1]/hook", "IPv4-compatible", id="ipv4-compatible"),
    pytest.param("https://[fe80::1%25eth0]/hook", "zone-scoped", id="zone-id"),
    pytest.param("https://[::ffff:7f00:1]/hook", "loopback", id="ipv4-mapped"),
    pytest.param("https://169.254.169.254/latest", "private", id="metadata"),
    pytest.param("https://0x7f.1/hook", "loopback", id="hex-ipv4"),
    pytest.param("https://100.64.0.1/hook", "not public", id="shared"),
]


@pytest.mark.parametrize(("url", "reason"), PRIVATE_URLS)
async def test_a_webhook_to_a_non_public_address_is_422(
    gateway: Gateway, url: str, reason: str
) -> None:
    tenant = await gateway.tenant("acme")
    status, answer = await put(gateway, tenant, {"webhook": {"url": url, "secret": SECRET}})
    assert (status, answer["error"], answer["field"]) == (
        422,
        "invalid_instructions",
        "webhook.url",
    )
    assert (
        answer["message"] == f"webhook.url: names a {reason} address, which webhooks may not reach"
    )
    assert await history(gateway, tenant) == []


@pytest.mark.parametrize("host", ["a..b", f"{'a' * 64}.example"])
async def test_a_webhook_host_that_is_no_dns_name_is_422(
    aiohttp_client: Callable[..., Any], gateway_settings: Settings, host: str
) -> None:
    # It could never be looked up: refused whatever the operator allows, nothing stored.
    allowing = await gateway_with(
        aiohttp_client, gateway_settings, allow_private=True, allow_http=True
    )
    tenant = await allowing.tenant("acme")
    hook = {"webhook": {"url": f"https://{host}/hook", "secret": SECRET}}
    status, answer = await put(allowing, tenant, hook)
    assert (status, answer["error"], answer["field"]) == (
        422,
        "invalid_instructions",
        "webhook.url",
    )
    assert "not a valid DNS name" in answer["message"] and host not in answer["message"]
    assert await history(allowing, tenant) == []
    catalog = allowing.app[SERVICES].catalog
    assert [row async for row in catalog.keys.list("acme")] == []


async def test_allow_private_lets_a_put_name_a_private_address(
    aiohttp_client: Callable[..., Any], gateway_settings: Settings
) -> None:
    allowing = await gateway_with(aiohttp_client, gateway_settings, allow_private=True)
    tenant = await allowing.tenant("acme")
    for url in ("https://[2002:7f00:1::1]/hook", "https://10.0.0.5/hook"):
        status, answer = await put(allowing, tenant, {"webhook": {"url": url, "secret": SECRET}})
        assert status == 200, answer
    # allow_private is not allow_http.
    plain = {"webhook": {"url": "http://10.0.0.5/hook", "secret": SECRET}}
    status, answer = await put(allowing, tenant, plain)
    assert (status, answer["field"]) == (422, "webhook.url")

"""The tenant's documented instructions over HTTP: versions, whole-document PUT, history,
validation (422 naming the field, nothing stored) and the audit trail of every change.

The instructions are what makes a call's handling lawful, so the API must never lose a
version, never half-apply a bad document, and always say who set which version.
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway.state import SERVICES
from tests.gateway import Gateway, TenantTokens, bearer

DEFAULTS: dict[str, Any] = {
    "recording": {"enabled": False},
    "consent": {"required": True},
    "ai": {
        "transcript": False,
        "summary": False,
        "sentiment": False,
        "talk_listen": False,
        "topics": False,
        "language": "auto",
    },
    "retention": {"recordings": "P90D", "transcripts": "P365D", "call_records": "P3Y"},
    "transport": {"allow_unencrypted_rtp": False},
    "exclude_numbers": [],
}


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
    actions = [e.action for e in await gateway.app[SERVICES].catalog.list_audit("acme")]
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
        for e in await gateway.app[SERVICES].catalog.list_audit("acme")
        if e.action == "instructions.updated"
    ]
    assert [e.object for e in events] == ["instructions:1", "instructions:2", "instructions:3"]
    assert [e.detail["version"] for e in events] == [1, 2, 3]
    assert {e.actor for e in events} == {f"token:{admin_id}"}
    assert (await gateway.app[SERVICES].catalog.verify_audit("acme")).ok


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

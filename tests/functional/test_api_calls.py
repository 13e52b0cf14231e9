"""Announcing calls and controlling them over HTTP: the policy's refusals as the PBX sees
them, what a refusal leaves behind (a call record and an audit event, never audio), the
accepted call's answer, malformed announcements, and pause/resume/end.

A refusal is the gateway's most important answer: the tenant did not instruct it to handle
the call, so nothing but the fact of the refusal may be kept.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from gateway.settings import Settings
from gateway.state import SERVICES
from storage.errors import CatalogUnavailable
from tests.gateway import (
    ALL_AI,
    RECORD,
    Gateway,
    TenantTokens,
    bearer,
    data_files,
    metric_value,
    record_call,
)

CALL = {"from": "+40711111111", "to": "+40722222222", "consent": "granted", "transport": "twilio"}
MISSING = object()
"""A field left out of the announcement."""


async def announce(
    gateway: Gateway, tenant: TenantTokens, **changes: Any
) -> tuple[int, dict[str, Any]]:
    response = await gateway.client.post(
        f"/v1/tenants/{tenant.id}/calls", json={**CALL, **changes}, headers=bearer(tenant.pbx)
    )
    return response.status, dict(await response.json())


async def call_record(gateway: Gateway, tenant: TenantTokens, call_id: str) -> dict[str, Any]:
    response = await gateway.client.get(
        f"/v1/tenants/{tenant.id}/calls/{call_id}", headers=bearer(tenant.admin)
    )
    assert response.status == 200, await response.text()
    return dict(await response.json())


def stored_files(settings: Settings) -> list[Path]:
    return list(data_files(settings.data_dir / "objects"))


async def refusals_metric(gateway: Gateway, code: str) -> float:
    response = await gateway.client.get("/metrics")
    return metric_value(await response.text(), "callvault_refusals_total", code=code)


# --- refusals ------------------------------------------------------------------------------

REFUSALS = [
    pytest.param(None, {"consent": "granted"}, "recording_not_instructed", id="defaults"),
    pytest.param(
        {"recording": {"enabled": False}, "ai": {"transcript": False}},
        {"consent": "granted"},
        "recording_not_instructed",
        id="all-off-put",
    ),
    pytest.param(RECORD, {"consent": "not_asked"}, "consent_missing", id="consent-not-asked"),
    pytest.param(RECORD, {"consent": "denied"}, "consent_missing", id="consent-denied"),
    pytest.param(
        {"ai": {"summary": True}}, {"consent": "denied"}, "consent_missing", id="ai-only-denied"
    ),
    pytest.param(
        {**RECORD, "consent": {"required": False}, "exclude_numbers": ["+40 712-345-678"]},
        {"from": "+40712345678"},
        "number_excluded",
        id="excluded-caller",
    ),
    pytest.param(
        {**RECORD, "exclude_numbers": ["+40712345678"]},
        {"to": "+40 (712) 345.678"},
        "number_excluded",
        id="excluded-callee-formatted",
    ),
    pytest.param(
        {"exclude_numbers": ["+40712345678"]},
        {"to": "+40-712-345-678", "consent": "denied"},
        "number_excluded",
        id="excluded-first-whatever-else",
    ),
]


@pytest.mark.parametrize(("instructions", "call", "code"), REFUSALS)
async def test_a_refused_call_is_403_and_leaves_only_its_call_record(
    gateway: Gateway,
    gateway_settings: Settings,
    instructions: dict[str, Any] | None,
    call: dict[str, Any],
    code: str,
) -> None:
    tenant = await gateway.tenant("acme", instructions)
    catalog = gateway.app[SERVICES].catalog
    call_id = f"refused-{uuid.uuid4()}"
    status, body = await announce(gateway, tenant, call_id=call_id, **call)
    assert status == 403, body
    assert body["error"] == code
    assert body["message"]
    assert "+40712345678" not in body["message"]  # refusals never echo a number

    record = await call_record(gateway, tenant, call_id)
    assert record["refusal"] == code
    assert record["decision"] == {"store_recording": False, "ai": []}
    assert record["instructions_version"] == (None if instructions is None else 1)
    assert record["from"] == call.get("from", CALL["from"])
    # Nothing else: no recording, no object, no file.
    assert await catalog.recordings.of_call("acme", call_id) is None
    assert await catalog.objects.list("acme") == []
    assert stored_files(gateway_settings) == []
    response = await gateway.client.get("/v1/tenants/acme/recordings", headers=bearer(tenant.admin))
    assert (await response.json())["items"] == []
    events = await catalog.audit.list("acme", limit=1000)
    refused = [e for e in events if e.action == "call.refused"]
    assert len(refused) == 1
    assert refused[0].object == call_id
    assert refused[0].detail["code"] == code
    assert "recording.created" not in {e.action for e in events}
    assert await refusals_metric(gateway, code) == 1.0


async def test_refusals_are_counted_by_code(gateway: Gateway) -> None:
    tenant = await gateway.tenant("acme")
    for _ in range(2):
        status, _body = await announce(gateway, tenant)
        assert status == 403
    await gateway.instruct(tenant, {**RECORD, "exclude_numbers": ["+40799999999"]})
    for consent in ("denied", "not_asked", "granted"):
        status, _body = await announce(gateway, tenant, consent=consent)
    assert status == 201
    status, _body = await announce(gateway, tenant, to="+40 799 999 999")
    assert status == 403
    assert await refusals_metric(gateway, "recording_not_instructed") == 2.0
    assert await refusals_metric(gateway, "consent_missing") == 2.0
    assert await refusals_metric(gateway, "number_excluded") == 1.0


async def test_a_refused_call_cannot_be_paused_and_ending_it_changes_nothing(
    gateway: Gateway,
) -> None:
    tenant = await gateway.tenant("acme")
    status, _ = await announce(gateway, tenant, call_id="refused-1")
    assert status == 403
    response = await gateway.client.post("/v1/calls/refused-1/pause", headers=bearer(tenant.pbx))
    assert response.status == 409
    response = await gateway.client.post("/v1/calls/refused-1/end", headers=bearer(tenant.pbx))
    assert response.status == 200
    assert (await response.json())["refusal"] == "recording_not_instructed"


# --- accepted calls ------------------------------------------------------------------------


async def test_an_accepted_call_answers_its_decision_and_where_to_stream(
    gateway: Gateway,
) -> None:
    tenant = await gateway.tenant("acme", RECORD)
    status, body = await announce(gateway, tenant, call_id="call-1", direction="outbound")
    assert status == 201, body
    assert body["call_id"] == "call-1"
    assert body["recording_id"]
    assert body["instructions_version"] == 1
    assert body["decision"] == {"store_recording": True, "ai": []}
    # Only an audiosocket call is answered where AudioSocket listens (with its id).
    assert body["ingest"] == {"websocket": "/v1/ingest/twilio"}
    record = await call_record(gateway, tenant, "call-1")
    assert record["refusal"] is None
    assert record["decision"] == body["decision"]
    assert (record["direction"], record["transport"], record["codec"]) == (
        "outbound",
        "twilio",
        "pcmu",
    )
    assert record["sample_rate"] == 8000
    assert record["ended_at"] is None
    response = await gateway.client.get(
        f"/v1/recordings/{body['recording_id']}", headers=bearer(tenant.admin)
    )
    assert (await response.json())["status"] == "recording"
    events = await gateway.app[SERVICES].catalog.audit.list("acme")
    created = [e for e in events if e.action == "recording.created"]
    assert [e.object for e in created] == [body["recording_id"]]


async def test_a_call_without_an_id_gets_a_uuid_and_fork_its_websocket(gateway: Gateway) -> None:
    tenant = await gateway.tenant("acme", RECORD)
    status, body = await announce(gateway, tenant, transport="fork", sample_rate=16000)
    assert status == 201, body
    assert str(uuid.UUID(body["call_id"])) == body["call_id"]
    assert body["ingest"]["websocket"] == "/v1/ingest/fork"
    record = await call_record(gateway, tenant, body["call_id"])
    assert (record["codec"], record["sample_rate"]) == ("l16", 16000)
    status, other = await announce(gateway, tenant)
    assert other["call_id"] != body["call_id"]
    assert other["recording_id"] != body["recording_id"]


async def test_recording_off_with_ai_on_is_accepted_for_ai_only(gateway: Gateway) -> None:
    tenant = await gateway.tenant(
        "acme", {"ai": {"transcript": True, "sentiment": True}, "consent": {"required": False}}
    )
    status, body = await announce(gateway, tenant, consent="not_asked")
    assert status == 201, body
    assert body["decision"] == {"store_recording": False, "ai": ["transcript", "sentiment"]}
    await gateway.instruct(tenant, {**RECORD, "ai": ALL_AI})
    status, body = await announce(gateway, tenant)
    assert body["instructions_version"] == 2
    assert body["decision"] == {
        "store_recording": True,
        "ai": ["transcript", "summary", "sentiment", "talk_listen", "topics"],
    }


async def test_an_audiosocket_call_keeps_the_pbxs_id_and_is_answered_a_fresh_secret_id(
    gateway: Gateway, gateway_settings: Settings
) -> None:
    """Any call id the pattern allows (no longer a UUID), kept as given; the answer mints a
    random UUID per call, the only thing a stream may name the call by."""
    tenant = await gateway.tenant("acme", RECORD)
    given = str(uuid.uuid4()).upper()
    ids = []
    for call_id in ("1732788000.42", given):
        status, body = await announce(gateway, tenant, transport="audiosocket", call_id=call_id)
        assert status == 201, body
        assert body["call_id"] == call_id
        offer = body["ingest"]["audiosocket"]
        assert body["ingest"] == {"websocket": None, "audiosocket": offer}
        assert offer["address"] == f"127.0.0.1:{gateway_settings.audiosocket.port}"
        assert uuid.UUID(offer["id"]).version == 4
        assert str(uuid.UUID(offer["id"])) == offer["id"]
        assert offer["id"] != call_id.lower()  # minted, not the PBX's UUID
        ids.append(offer["id"])
    assert len(set(ids)) == 2


@pytest.mark.parametrize(
    ("changes", "code", "field"),
    [
        ({"colour": "red"}, "invalid_call", "colour"),
        ({"transport": "sip"}, "invalid_call", "transport"),
        ({"transport": MISSING}, "invalid_call", "transport"),
        ({"from": MISSING}, "invalid_call", "from"),
        ({"from": ""}, "invalid_call", "from"),
        ({"consent": "yes"}, "invalid_call", "consent"),
        ({"direction": "sideways"}, "invalid_call", "direction"),
        ({"call_id": "has spaces"}, "invalid_call", "call_id"),
        ({"transport": "rtp", "codec": "l16"}, "unsupported_codec", "codec"),
        (
            {"transport": "rtp", "codec": "opus", "sample_rate": 8000},
            "unsupported_codec",
            "sample_rate",
        ),
        ({"transport": "rtp", "payload_types": {"opus": 8}}, "invalid_call", "payload_types"),
        (
            {"transport": "rtp", "codec": "opus", "payload_types": {"opus": 101}},
            "invalid_call",
            "payload_types",
        ),
        ({"srtp": True}, "invalid_call", "srtp"),
        ({"payload_types": {}}, "invalid_call", "payload_types"),
        ({"codec": "l16"}, "unsupported_codec", "codec"),
        ({"codec": "mp3"}, "invalid_call", "codec"),
        ({"transport": "fork", "codec": "pcmu"}, "unsupported_codec", "codec"),
        ({"sample_rate": 16000}, "unsupported_codec", "sample_rate"),
    ],
    ids=[
        "unknown-field",
        "unknown-transport",
        "no-transport",
        "no-from",
        "empty-from",
        "bad-consent",
        "bad-direction",
        "bad-call-id",
        "rtp-l16",
        "rtp-opus-8k",
        "rtp-static-opus-pt",
        "rtp-opus-pt-is-the-events-pt",
        "twilio-srtp",
        "twilio-payload-types",
        "twilio-l16",
        "unknown-codec",
        "fork-pcmu",
        "twilio-16k",
    ],
)
async def test_a_bad_announcement_is_400_naming_the_field_and_stores_nothing(
    gateway: Gateway, changes: dict[str, Any], code: str, field: str
) -> None:
    tenant = await gateway.tenant("acme", RECORD)
    body = {**CALL, "call_id": "call-1", **changes}
    body = {name: value for name, value in body.items() if value is not MISSING}
    response = await gateway.client.post(
        "/v1/tenants/acme/calls", json=body, headers=bearer(tenant.pbx)
    )
    assert response.status == 400, await response.text()
    answer = await response.json()
    assert answer["error"] == code
    assert answer["message"].startswith(f"{field}"), answer["message"]
    actions = {e.action for e in await gateway.app[SERVICES].catalog.audit.list("acme")}
    assert not actions & {"call.refused", "recording.created"}


@pytest.mark.parametrize(
    "data", [b"not json", b"[1, 2]", b'"call"'], ids=["not-json", "array", "string"]
)
async def test_an_announcement_that_is_not_an_object_is_400(gateway: Gateway, data: bytes) -> None:
    tenant = await gateway.tenant("acme", RECORD)
    response = await gateway.client.post(
        "/v1/tenants/acme/calls", data=data, headers=bearer(tenant.pbx)
    )
    assert response.status == 400
    assert (await response.json())["error"] in ("bad_json", "invalid_call")


async def test_a_call_id_is_announced_once(gateway: Gateway) -> None:
    tenant = await gateway.tenant("acme", RECORD)
    status, first = await announce(gateway, tenant, call_id="call-1")
    assert status == 201
    status, body = await announce(gateway, tenant, call_id="call-1", from_="x")
    assert status == 400  # the misspelt field is refused before the id is looked at
    status, body = await announce(gateway, tenant, call_id="call-1", to="+40733333333")
    assert status == 409, body
    assert body["error"] == "conflict"
    # The first announcement is untouched.
    record = await call_record(gateway, tenant, "call-1")
    assert record["to"] == CALL["to"]
    catalog = gateway.app[SERVICES].catalog
    recording = await catalog.recordings.of_call("acme", "call-1")
    assert recording is not None and recording.id == first["recording_id"]
    # Another tenant may use the same call id: ids are per tenant.
    other = await gateway.tenant("other", RECORD)
    status, _ = await announce(gateway, other, call_id="call-1")
    assert status == 201


# --- pause, resume, end --------------------------------------------------------------------


async def control(gateway: Gateway, tenant: TenantTokens, call_id: str, action: str) -> Any:
    return await gateway.client.post(f"/v1/calls/{call_id}/{action}", headers=bearer(tenant.pbx))


async def test_pause_resume_and_end_a_live_call(gateway: Gateway) -> None:
    tenant = await gateway.tenant("acme", RECORD)
    status, body = await announce(gateway, tenant, call_id="call-1")
    assert status == 201
    for action, paused in (("pause", True), ("pause", True), ("resume", False), ("resume", False)):
        response = await control(gateway, tenant, "call-1", action)
        assert response.status == 200, action
        assert await response.json() == {"call_id": "call-1", "paused": paused}

    response = await control(gateway, tenant, "call-1", "end")
    assert response.status == 200
    ended = await response.json()
    assert ended["call_id"] == "call-1"
    assert ended["ended_at"] is not None
    # Idempotent: the second end answers the same record.
    response = await control(gateway, tenant, "call-1", "end")
    assert response.status == 200
    assert await response.json() == ended
    # The recording is finalized.
    response = await gateway.client.get(
        f"/v1/recordings/{body['recording_id']}", headers=bearer(tenant.admin)
    )
    recording = await response.json()
    assert recording["status"] == "recorded"
    assert recording["ended_at"] == ended["ended_at"]
    # An ended call is no longer live.
    for action in ("pause", "resume"):
        response = await control(gateway, tenant, "call-1", action)
        assert response.status == 409, action
        assert (await response.json())["error"] == "conflict"


async def test_end_is_200_when_the_transport_already_ended_the_call(gateway: Gateway) -> None:
    tenant = await gateway.tenant("acme", RECORD)
    streamed = await record_call(gateway, tenant)
    before = await call_record(gateway, tenant, streamed.call_id)
    assert before["ended_at"] is not None
    response = await control(gateway, tenant, streamed.call_id, "end")
    assert response.status == 200
    assert (await response.json())["ended_at"] == before["ended_at"]
    response = await control(gateway, tenant, streamed.call_id, "pause")
    assert response.status == 409


@pytest.mark.parametrize("action", ["pause", "resume", "end"])
async def test_an_unknown_or_another_tenants_call_is_404(gateway: Gateway, action: str) -> None:
    tenant = await gateway.tenant("acme", RECORD)
    other = await gateway.tenant("other", RECORD)
    status, _ = await announce(gateway, other, call_id="theirs")
    assert status == 201
    for call_id in ("nobody", "theirs"):
        response = await control(gateway, tenant, call_id, action)
        assert response.status == 404, call_id
        assert (await response.json())["error"] == "not_found"
    # Their call is still live.
    response = await control(gateway, other, "theirs", "pause")
    assert response.status == 200
    assert (await call_record(gateway, other, "theirs"))["ended_at"] is None


# --- the decision and its audit event commit together ----------------------------------------


@pytest.mark.parametrize("instructions", [None, RECORD], ids=["refused", "accepted"])
async def test_a_call_whose_audit_event_fails_leaves_no_call_record(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch, instructions: dict[str, Any] | None
) -> None:
    tenant = await gateway.tenant("acme", instructions)
    catalog = gateway.app[SERVICES].catalog

    async def audit_down(*args: Any, **kwargs: Any) -> None:
        raise CatalogUnavailable("the audit insert failed")

    monkeypatch.setattr("storage.catalog.calls.append_entries", audit_down)
    status, body = await announce(gateway, tenant, call_id="c-1")
    assert status == 503, body
    response = await gateway.client.get("/v1/tenants/acme/calls/c-1", headers=bearer(tenant.admin))
    assert response.status == 404
    assert await catalog.recordings.of_call("acme", "c-1") is None
    events = await catalog.audit.list("acme", limit=1000)
    assert {"call.refused", "recording.created"} & {e.action for e in events} == set()
    monkeypatch.undo()
    # Nothing half-done is in the way: the same announcement goes through now.
    status, body = await announce(gateway, tenant, call_id="c-1")
    assert status == (403 if instructions is None else 201), body

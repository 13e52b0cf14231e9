"""Legal holds, erasure, export and retention, through the gateway's API.

The promises of ../shared/API.md "Rights, holds, audit" checked from the outside: a hold
keeps what it covers through retention sweeps, erasures and the tenant's deletion, until it
is released; an erasure leaves no key, no byte and no readable recording behind, with its
receipts in the audit log; an export holds exactly what the API would serve for the number,
and nothing of anybody else's.

Time never passes by sleeping: the gateway runs on a ``FakeClock`` the tests turn, and a
sweep is run by calling the app's sweeper with the clock's time. The retention and erasure
tests run once more on PostgreSQL and SeaweedFS S3 (``TestOnPostgresAndS3``). The CLI's
``retention sweep`` and the ``serve`` loop are the two places where real time is used:
there the data is seeded with a clock a day in the past, or the clock is put far ahead.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import zipfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import WSMsgType

from ai.worker import AnalysisWorker
from crypto.errors import KeyUnavailable
from gateway.app import build_app
from gateway.cli import main
from gateway.clock import Clock
from gateway.settings import RetentionSettings, Settings
from gateway.state import METRICS, SERVICES, SWEEPER
from storage.catalog import AuditEvent, StoredObject
from storage.errors import NotFound
from storage.retention import SweepReport
from tests.ai import AI_BACKOFF_S, AI_LEASE_S
from tests.conftest import S3Server
from tests.gateway import (
    RECORD,
    T0,
    ULAW,
    FakeClock,
    Gateway,
    GatewayServer,
    TenantTokens,
    bearer,
    free_port,
    record_call,
    start_gateway,
    tone,
    twilio_call,
    twilio_connected,
    twilio_media,
    twilio_start,
)

RECORDING_ON = {**RECORD, "consent": {"required": False}}
SHORT = {"recordings": "PT60S", "transcripts": "PT120S", "call_records": "PT300S"}
WITH_AI = {**RECORDING_ON, "ai": {"transcript": True, "sentiment": True}}
CALLER = "+40711111111"
AGENT = "+40722222222"
OTHER = "+40733333333"
STRANGER = "+40744444444"
HOOK = {"url": "https://hooks.example.com/callvault", "secret": "s" * 32}
HOLD_FIELDS = {
    "id",
    "tenant",
    "number",
    "call_ids",
    "reason",
    "active",
    "created_at",
    "created_by",
    "released_at",
    "released_by",
}
RECEIPT_FIELDS = {
    "id",
    "tenant",
    "scope",
    "requested_at",
    "completed_at",
    "recordings",
    "already_deleted",
    "recordings_erased",
    "objects_shredded",
    "bytes_deleted",
    "call_records",
}


def between(caller: str, called: str = AGENT) -> dict[str, Any]:
    """The parties of a call, as ``record_call``'s keyword arguments."""
    return {"from": caller, "to": called}


def as_clock(clock: FakeClock) -> Clock:
    """The fake clock where the app takes its clock (the same ``now()``)."""
    return cast(Clock, clock)


def iso(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


async def api(gw: Gateway, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
    """(status, JSON body) of a request."""
    response = await gw.client.request(method, path, json=body, headers=bearer(token))
    return response.status, await response.json()


async def place_hold(gw: Gateway, tenant: TenantTokens, **body: Any) -> dict[str, Any]:
    status, hold = await api(
        gw, "POST", f"/v1/tenants/{tenant.id}/legal-holds", tenant.admin, {"reason": "case", **body}
    )
    assert status == 201, hold
    return dict(hold)


async def release_hold(gw: Gateway, tenant: TenantTokens, hold_id: str) -> dict[str, Any]:
    status, hold = await api(
        gw, "DELETE", f"/v1/tenants/{tenant.id}/legal-holds/{hold_id}", tenant.admin
    )
    assert status == 200, hold
    return dict(hold)


async def recording(gw: Gateway, tenant: TenantTokens, recording_id: str) -> tuple[int, Any]:
    return await api(gw, "GET", f"/v1/recordings/{recording_id}", tenant.admin)


async def audio(gw: Gateway, tenant: TenantTokens, recording_id: str) -> tuple[int, bytes]:
    response = await gw.client.get(
        f"/v1/recordings/{recording_id}/audio", headers=bearer(tenant.admin)
    )
    return response.status, await response.read()


async def error_of(gw: Gateway, tenant: TenantTokens, path: str) -> tuple[int, str]:
    status, body = await api(gw, "GET", path, tenant.admin)
    return status, body["error"]


async def sweep(gw: Gateway, clock: FakeClock, seconds: float = 0) -> SweepReport:
    """Turn the clock ``seconds`` on, then run one sweep at that time."""
    clock.advance(seconds)
    report: SweepReport = await gw.app[SWEEPER].sweep(clock.now())
    return report


async def events(gw: Gateway, tenant_id: str) -> list[AuditEvent]:
    return list(await gw.app[SERVICES].catalog.audit.list(tenant_id, limit=1000))


async def audit_ok(gw: Gateway, tenant: TenantTokens) -> None:
    status, body = await api(gw, "GET", f"/v1/tenants/{tenant.id}/audit/verify", tenant.admin)
    assert status == 200
    assert body["ok"] is True, body


async def objects_of(gw: Gateway, tenant_id: str, recording_id: str) -> list[StoredObject]:
    return list(await gw.app[SERVICES].catalog.objects.list(tenant_id, recording_id=recording_id))


async def assert_erased(gw: Gateway, stored: list[StoredObject], *, rows: bool = True) -> None:
    """No object of ``stored`` has a key row or bytes left; every row says deleted, or,
    when not ``rows`` (the call record's window ended too), the rows are gone."""
    services = gw.app[SERVICES]
    assert stored
    for item in stored:
        with pytest.raises(KeyUnavailable):
            await services.catalog.keys.get(item.id, item.tenant_id)
        assert not await services.store.exists(item.store_key), item.store_key
        if rows:
            assert (await services.catalog.objects.get(item.id, item.tenant_id)).state == "deleted"
        else:
            with pytest.raises(NotFound):
                await services.catalog.objects.get(item.id, item.tenant_id)


async def assert_kept(gw: Gateway, stored: list[StoredObject]) -> None:
    services = gw.app[SERVICES]
    assert stored
    for item in stored:
        await services.catalog.keys.get(item.id, item.tenant_id)
        assert await services.store.exists(item.store_key), item.store_key
        assert (await services.catalog.objects.get(item.id, item.tenant_id)).state == "committed"


async def frames_taken(gw: Gateway, count: int) -> None:
    """Wait (polling, 10 s at most) until the gateway has taken ``count`` Twilio frames
    (sending is not processing)."""
    frames_in = gw.app[METRICS].frames_in.labels("twilio")
    async with asyncio.timeout(10):
        while frames_in._value.get() < count:  # noqa: ASYNC110 - the state is another task's
            await asyncio.sleep(0.01)


async def analyse_all(worker: AnalysisWorker) -> int:
    done = 0
    while await worker.run_once():
        done += 1
    return done


# --- 1. the holds API ------------------------------------------------------------------------


async def test_holds_are_placed_listed_read_and_released(gw: Gateway, clock: FakeClock) -> None:
    tenant = await gw.tenant("acme", RECORDING_ON)
    call = await record_call(gw, tenant, **between(CALLER, AGENT))
    base = "/v1/tenants/acme/legal-holds"

    status, by_number = await api(
        gw, "POST", base, tenant.admin, {"number": "+40 (711) 111-111", "reason": "case 42"}
    )
    assert status == 201, by_number
    assert set(by_number) == HOLD_FIELDS
    assert by_number["id"].startswith("hold_")
    assert by_number["tenant"] == "acme"
    assert by_number["number"] == CALLER  # stored normalized
    assert by_number["call_ids"] is None
    assert by_number["reason"] == "case 42"
    assert by_number["active"] is True
    assert by_number["created_at"] == iso(0)
    assert by_number["created_by"].startswith("token:tok_")
    assert by_number["released_at"] is None
    assert by_number["released_by"] is None

    clock.advance(1)
    status, by_calls = await api(
        gw,
        "POST",
        base,
        tenant.admin,
        {"call_ids": [call.call_id, call.call_id], "reason": "  audit 7  "},
    )
    assert status == 201, by_calls
    assert by_calls["number"] is None
    assert by_calls["call_ids"] == [call.call_id]  # duplicates dropped
    assert by_calls["reason"] == "audit 7"  # trimmed
    assert by_calls["id"] != by_number["id"]
    assert by_calls["created_at"] == iso(1)

    status, listed = await api(gw, "GET", base, tenant.admin)
    assert status == 200
    assert listed == {"items": [by_number, by_calls]}  # oldest first
    status, one = await api(gw, "GET", f"{base}/{by_calls['id']}", tenant.admin)
    assert (status, one) == (200, by_calls)

    status, released = await api(gw, "DELETE", f"{base}/{by_number['id']}", tenant.admin)
    assert status == 200, released
    assert released["active"] is False
    assert released["released_at"] == iso(1)
    assert released["released_by"] == by_number["created_by"]
    assert {k: v for k, v in released.items() if not k.startswith(("released", "active"))} == {
        k: v for k, v in by_number.items() if not k.startswith(("released", "active"))
    }
    status, listed = await api(gw, "GET", f"{base}?active=true", tenant.admin)
    assert listed["items"] == [by_calls]
    status, listed = await api(gw, "GET", base, tenant.admin)
    assert listed["items"] == [released, by_calls]
    status, one = await api(gw, "GET", f"{base}/{by_number['id']}", tenant.admin)
    assert one == released

    status, again = await api(gw, "DELETE", f"{base}/{by_number['id']}", tenant.admin)
    assert (status, again["error"]) == (409, "hold_released")
    for method in ("GET", "DELETE"):
        status, body = await api(gw, method, f"{base}/hold_nothing", tenant.admin)
        assert (status, body["error"]) == (404, "not_found"), method

    # The audit log names the holds, never the number they cover.
    trail = await events(gw, "acme")
    placed = [e for e in trail if e.action == "hold.placed"]
    assert [(e.object, e.detail) for e in placed] == [
        (by_number["id"], {"scope": "number", "calls": None}),
        (by_calls["id"], {"scope": "call_ids", "calls": 1}),
    ]
    assert [e.object for e in trail if e.action == "hold.released"] == [by_number["id"]]
    status, page = await api(gw, "GET", "/v1/tenants/acme/audit?limit=1000", tenant.admin)
    assert status == 200
    holds_json = [json.dumps(item) for item in page["items"] if item["action"].startswith("hold.")]
    assert len(holds_json) == 3
    for text in holds_json:
        assert CALLER not in text and "711111111" not in text, text
    await audit_ok(gw, tenant)


@pytest.mark.parametrize(
    "body",
    [
        {"number": CALLER, "call_ids": ["c"], "reason": "r"},
        {"reason": "r"},
        {"number": CALLER},
        {"number": CALLER, "reason": "   "},
        {"number": CALLER, "reason": "x" * 501},
        {"number": CALLER, "reason": 5},
        {"number": "call me", "reason": "r"},
        {"number": 40711111111, "reason": "r"},
        {"number": CALLER, "reason": "r", "until": "2027-01-01"},
        {"call_ids": [], "reason": "r"},
        {"call_ids": "call-1", "reason": "r"},
        {"call_ids": [""], "reason": "r"},
        {"call_ids": [7], "reason": "r"},
        ["not", "an", "object"],
        {"call_ids": None, "number": CALLER, "reason": "r"},
        {"number": None, "call_ids": ["call-1"], "reason": "r"},
        {"number": CALLER, "reason": "\u001f \u001c"},
    ],
    ids=[
        "both",
        "neither",
        "no-reason",
        "blank-reason",
        "long-reason",
        "reason-not-a-string",
        "bad-number",
        "number-not-a-string",
        "unknown-field",
        "no-call-ids",
        "call-ids-not-a-list",
        "empty-call-id",
        "call-id-not-a-string",
        "not-an-object",
        "null-call-ids-beside-a-number",
        "null-number-beside-call-ids",
        "reason-of-separators-only",
    ],
)
async def test_a_bad_hold_is_400_and_not_placed(gw: Gateway, body: Any) -> None:
    tenant = await gw.tenant("acme", RECORDING_ON)
    status, answer = await api(gw, "POST", "/v1/tenants/acme/legal-holds", tenant.admin, body)
    assert (status, answer["error"]) == (400, "bad_request"), answer
    status, listed = await api(gw, "GET", "/v1/tenants/acme/legal-holds", tenant.admin)
    assert listed == {"items": []}
    assert [e for e in await events(gw, "acme") if e.action == "hold.placed"] == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"number": "abc", "reason": "r"}, "number: is not a phone number."),
        ({"call_ids": [], "reason": "r"}, "call_ids: must have at least 1 entry."),
        ({"call_ids": [""], "reason": "r"}, "call_ids.0: String should have at least 1 character."),
        ({"number": None, "reason": "r"}, "number: must not be null; leave the field out instead."),
    ],
)
async def test_a_bad_hold_names_the_field_as_the_client_wrote_it(
    gw: Gateway, body: Any, message: str
) -> None:
    tenant = await gw.tenant("acme", RECORDING_ON)
    status, answer = await api(gw, "POST", "/v1/tenants/acme/legal-holds", tenant.admin, body)
    assert (status, answer["message"]) == (400, message)


async def test_a_hold_on_an_unknown_or_foreign_call_is_404(gw: Gateway) -> None:
    tenant = await gw.tenant("acme", RECORDING_ON)
    other = await gw.tenant("other", RECORDING_ON)
    ours = await gw.announce(tenant)
    theirs = await gw.announce(other)
    for missing in ("no-such-call", theirs["call_id"]):
        status, body = await api(
            gw,
            "POST",
            "/v1/tenants/acme/legal-holds",
            tenant.admin,
            {"call_ids": [ours["call_id"], missing], "reason": "r"},
        )
        assert (status, body["error"]) == (404, "not_found")
        assert missing in body["message"]
    status, listed = await api(gw, "GET", "/v1/tenants/acme/legal-holds", tenant.admin)
    assert listed == {"items": []}


# --- 2. retention and 3. erasure (run again on PostgreSQL + S3 below) -----------------------


class TestRetentionAndErasure:
    """On the gateway's embedded defaults: SQLite and the file store in the data dir."""

    async def test_retention_deletes_audio_then_the_recording_then_the_call_record(
        self, gw: Gateway, worker: AnalysisWorker, clock: FakeClock
    ) -> None:
        tenant = await gw.tenant("acme", {**WITH_AI, "retention": SHORT})
        call = await record_call(gw, tenant, seconds=1.0)
        assert await analyse_all(worker) == 1
        stored = await objects_of(gw, "acme", call.recording_id)
        audio_objects = [o for o in stored if o.kind == "audio"]
        results = [o for o in stored if o.kind != "audio"]
        assert (len(audio_objects), sorted(o.kind for o in results)) == (
            2,
            ["analysis", "transcript"],
        )
        status, view = await recording(gw, tenant, call.recording_id)
        assert status == 200
        assert view["expires"] == {
            "recordings": iso(60),
            "transcripts": iso(120),
            "call_records": iso(300),
        }
        assert view["expires_at"] == iso(120)  # the last content of the call
        assert (view["legal_hold"], view["legal_holds"]) == (False, [])
        assert (await audio(gw, tenant, call.recording_id))[0] == 200

        report = await sweep(gw, clock, 59)
        assert report.objects_deleted == 0
        assert (await audio(gw, tenant, call.recording_id))[0] == 200

        report = await sweep(gw, clock, 2)  # 61 s after the end: the audio goes
        assert (report.objects_deleted, report.recordings_deleted) == (2, 0)
        assert report.bytes_deleted == sum(o.size or 0 for o in audio_objects) > 0
        await assert_erased(gw, audio_objects)
        await assert_kept(gw, results)
        path = f"/v1/recordings/{call.recording_id}"
        assert await error_of(gw, tenant, f"{path}/audio") == (410, "audio_deleted")
        status, view = await recording(gw, tenant, call.recording_id)
        assert (status, view["status"]) == (200, "analyzed")
        for part in ("/transcript", "/analysis"):
            assert (await api(gw, "GET", path + part, tenant.admin))[0] == 200, part

        report = await sweep(gw, clock, 60)  # 121 s: the transcript and analysis go
        assert (report.objects_deleted, report.recordings_deleted) == (2, 1)
        await assert_erased(gw, results)
        status, view = await recording(gw, tenant, call.recording_id)
        assert status == 200
        assert (view["status"], view["delete_reason"]) == ("deleted", "retention")
        assert view["deleted_at"] == iso(121)
        assert view["expires_at"] is None
        assert view["expires"]["call_records"] == iso(300)
        for part in ("/audio", "/transcript", "/analysis"):
            assert await error_of(gw, tenant, path + part) == (410, "recording_deleted"), part

        report = await sweep(gw, clock, 178)  # 299 s: the call record stays
        assert report.call_records_deleted == 0
        assert (await recording(gw, tenant, call.recording_id))[0] == 200
        report = await sweep(gw, clock, 2)  # 301 s
        assert report.call_records_deleted == 1
        status, body = await recording(gw, tenant, call.recording_id)
        assert (status, body["error"]) == (404, "not_found")
        status, body = await api(gw, "GET", f"/v1/tenants/acme/calls/{call.call_id}", tenant.admin)
        assert (status, body["error"]) == (404, "not_found")
        await assert_erased(gw, stored, rows=False)

        trail = await events(gw, "acme")
        receipts = [
            (e.action, e.object, e.detail.get("reason"))
            for e in trail
            if e.action in ("data.deleted", "recording.deleted", "call_record.deleted")
        ]
        assert receipts == [
            ("data.deleted", call.recording_id, "retention"),
            ("data.deleted", call.recording_id, "retention"),
            ("recording.deleted", call.recording_id, "retention"),
            ("call_record.deleted", call.call_id, "retention"),
        ]
        classes = [e.detail["data_classes"] for e in trail if e.action == "data.deleted"]
        assert classes == [["recordings"], ["transcripts"]]
        await audit_ok(gw, tenant)

    async def test_a_recording_without_ai_goes_when_its_audio_goes(
        self, gw: Gateway, clock: FakeClock
    ) -> None:
        tenant = await gw.tenant("acme", {**RECORDING_ON, "retention": SHORT})
        call = await record_call(gw, tenant)
        stored = await objects_of(gw, "acme", call.recording_id)
        status, view = await recording(gw, tenant, call.recording_id)
        # Nothing of the transcripts class was ever stored: the audio is its last content.
        assert view["expires_at"] == view["expires"]["recordings"] == iso(60)
        report = await sweep(gw, clock, 61)
        assert (report.objects_deleted, report.recordings_deleted) == (2, 1)
        await assert_erased(gw, stored)
        status, view = await recording(gw, tenant, call.recording_id)
        assert (view["status"], view["delete_reason"]) == ("deleted", "retention")
        path = f"/v1/recordings/{call.recording_id}/audio"
        assert await error_of(gw, tenant, path) == (410, "recording_deleted")

    @pytest.mark.parametrize("scope", ["call_ids", "from", "to"])
    async def test_a_hold_keeps_everything_until_it_is_released(
        self, gw: Gateway, clock: FakeClock, scope: str
    ) -> None:
        tenant = await gw.tenant("acme", {**RECORDING_ON, "retention": SHORT})
        call = await record_call(gw, tenant, **between(CALLER, AGENT))
        free = await record_call(gw, tenant, seed=4, **between(OTHER, STRANGER))
        stored = await objects_of(gw, "acme", call.recording_id)
        _, wav = await audio(gw, tenant, call.recording_id)
        target: dict[str, Any] = {"call_ids": [call.call_id]}
        if scope != "call_ids":
            target = {"number": CALLER if scope == "from" else AGENT}
        hold = await place_hold(gw, tenant, **target)
        status, view = await recording(gw, tenant, call.recording_id)
        assert (view["legal_hold"], view["legal_holds"]) == (True, [hold["id"]])
        assert view["expires_at"] is None
        # The windows still say when each class would go.
        assert view["expires"]["recordings"] == iso(60)

        report = await sweep(gw, clock, 1000)  # every window of the call has ended
        assert report.held >= 1
        assert report.recordings_deleted == 1  # only the call no hold covers
        assert report.call_records_deleted == 1
        assert (await recording(gw, tenant, free.recording_id))[0] == 404
        await assert_kept(gw, stored)
        status, view = await recording(gw, tenant, call.recording_id)
        assert (status, view["status"], view["legal_hold"]) == (200, "recorded", True)
        assert await audio(gw, tenant, call.recording_id) == (200, wav)

        released = await release_hold(gw, tenant, hold["id"])
        assert released["active"] is False
        status, view = await recording(gw, tenant, call.recording_id)
        assert (view["legal_hold"], view["legal_holds"]) == (False, [])
        assert view["expires_at"] == iso(60)
        report = await sweep(gw, clock)  # the next sweep, no time passing
        assert (report.objects_deleted, report.recordings_deleted) == (2, 1)
        assert (report.call_records_deleted, report.held) == (1, 0)
        await assert_erased(gw, stored, rows=False)
        assert (await recording(gw, tenant, call.recording_id))[0] == 404

    async def test_erasing_a_recording_leaves_no_key_no_byte_and_a_receipt(
        self, gw: Gateway, worker: AnalysisWorker, clock: FakeClock
    ) -> None:
        tenant = await gw.tenant("acme", WITH_AI)
        call = await record_call(gw, tenant, seconds=1.0)
        assert await analyse_all(worker) == 1
        path = f"/v1/recordings/{call.recording_id}"
        for suffix in ("/audio", "/transcript", "/analysis"):
            response = await gw.client.get(path + suffix, headers=bearer(tenant.admin))
            assert response.status == 200, suffix
            await response.read()
        stored = await objects_of(gw, "acme", call.recording_id)
        assert sorted(o.kind for o in stored) == ["analysis", "audio", "audio", "transcript"]
        await assert_kept(gw, stored)
        clock.advance(5)

        status, receipt = await api(gw, "DELETE", path, tenant.admin)
        assert status == 200, receipt
        assert set(receipt) == RECEIPT_FIELDS
        assert receipt["id"].startswith("erasure_")
        assert (receipt["tenant"], receipt["scope"]) == ("acme", "recording")
        assert receipt["requested_at"] == receipt["completed_at"] == iso(5)
        assert receipt["recordings"] == [call.recording_id]
        assert receipt["already_deleted"] == []
        assert (receipt["recordings_erased"], receipt["objects_shredded"]) == (1, 4)
        assert receipt["bytes_deleted"] == sum(o.size or 0 for o in stored) > 0
        assert "call_records" in receipt["call_records"]

        await assert_erased(gw, stored)
        keys = [key async for key in gw.app[SERVICES].store.list_keys("acme/")]
        assert set(keys).isdisjoint(o.store_key for o in stored)
        for suffix in ("/audio", "/transcript", "/analysis"):
            assert await error_of(gw, tenant, path + suffix) == (410, "recording_deleted")
        status, view = await recording(gw, tenant, call.recording_id)
        assert (view["status"], view["delete_reason"]) == ("deleted", "erasure")
        assert view["deleted_at"] == iso(5)
        # The call record stays, content-free, until its own window ends.
        status, _ = await api(gw, "GET", f"/v1/tenants/acme/calls/{call.call_id}", tenant.admin)
        assert status == 200

        trail = await events(gw, "acme")
        requested = [e for e in trail if e.action == "erasure.requested"]
        assert [(e.object, e.detail) for e in requested] == [
            (receipt["id"], {"scope": "recording", "recordings": 1})
        ]
        assert requested[0].actor.startswith("token:tok_")
        deleted = [e for e in trail if e.action == "data.deleted"]
        assert [(e.object, e.detail["reason"]) for e in deleted] == [(call.recording_id, "erasure")]
        assert deleted[0].detail["objects"] == 4
        assert sorted(deleted[0].detail["data_classes"]) == ["recordings", "transcripts"]
        done = [e for e in trail if e.action == "recording.deleted"]
        assert [(e.object, e.detail) for e in done] == [(call.recording_id, {"reason": "erasure"})]
        actions = [e.action for e in trail]
        assert actions.index("erasure.requested") < actions.index("data.deleted")
        assert actions.index("data.deleted") < actions.index("recording.deleted")
        await audit_ok(gw, tenant)

        # Erasing it again deletes nothing more and says so.
        status, again = await api(gw, "DELETE", path, tenant.admin)
        assert status == 200
        assert (again["recordings"], again["already_deleted"]) == ([], [call.recording_id])
        assert (again["recordings_erased"], again["objects_shredded"]) == (0, 0)

    async def test_a_held_recording_is_not_erased(self, gw: Gateway) -> None:
        tenant = await gw.tenant("acme", RECORDING_ON)
        call = await record_call(gw, tenant)
        stored = await objects_of(gw, "acme", call.recording_id)
        hold = await place_hold(gw, tenant, call_ids=[call.call_id])
        status, body = await api(gw, "DELETE", f"/v1/recordings/{call.recording_id}", tenant.admin)
        assert status == 409, body
        assert (body["error"], body["hold"]) == ("legal_hold", hold["id"])
        assert hold["id"] in body["message"]
        await assert_kept(gw, stored)
        status, view = await recording(gw, tenant, call.recording_id)
        assert (view["status"], view["legal_hold"]) == ("recorded", True)
        assert (await audio(gw, tenant, call.recording_id))[0] == 200
        assert "erasure.requested" not in [e.action for e in await events(gw, "acme")]

    async def test_an_erasure_request_erases_every_call_of_the_number_and_no_other(
        self, gw: Gateway
    ) -> None:
        tenant = await gw.tenant("acme", RECORDING_ON)
        calling = await record_call(gw, tenant, seed=1, **between(CALLER, AGENT))
        called = await record_call(gw, tenant, seed=2, **between(OTHER, CALLER))
        others = await record_call(gw, tenant, seed=3, **between(OTHER, AGENT))
        mine = [*await objects_of(gw, "acme", calling.recording_id),
                *await objects_of(gw, "acme", called.recording_id)]  # fmt: skip
        kept = await objects_of(gw, "acme", others.recording_id)
        _, kept_wav = await audio(gw, tenant, others.recording_id)

        status, receipt = await api(
            gw,
            "POST",
            "/v1/tenants/acme/erasure-requests",
            tenant.admin,
            {"number": "+40 711 111 111"},
        )
        assert status == 200, receipt
        assert set(receipt) == RECEIPT_FIELDS
        assert receipt["scope"] == "number"
        assert sorted(receipt["recordings"]) == sorted([calling.recording_id, called.recording_id])
        assert (receipt["recordings_erased"], receipt["objects_shredded"]) == (2, 4)
        await assert_erased(gw, mine)
        for gone in (calling, called):
            status, view = await recording(gw, tenant, gone.recording_id)
            assert (view["status"], view["delete_reason"]) == ("deleted", "erasure")
        await assert_kept(gw, kept)
        status, view = await recording(gw, tenant, others.recording_id)
        assert view["status"] == "recorded"
        assert await audio(gw, tenant, others.recording_id) == (200, kept_wav)
        requested = [e for e in await events(gw, "acme") if e.action == "erasure.requested"]
        assert [e.detail for e in requested] == [{"scope": "number", "recordings": 2}]
        # The number is not in the log that outlives the erasure.
        status, page = await api(gw, "GET", "/v1/tenants/acme/audit?limit=1000", tenant.admin)
        erasure_json = [json.dumps(item) for item in page["items"]
                        if item["action"] in ("erasure.requested", "data.deleted",
                                              "recording.deleted")]  # fmt: skip
        assert len(erasure_json) == 5
        assert all(CALLER not in text for text in erasure_json)
        await audit_ok(gw, tenant)

    @pytest.mark.parametrize("held", ["number", "its-call", "other-party"])
    async def test_an_erasure_request_a_hold_covers_is_409_and_erases_nothing(
        self, gw: Gateway, held: str
    ) -> None:
        tenant = await gw.tenant("acme", RECORDING_ON)
        first = await record_call(gw, tenant, seed=1, **between(CALLER, AGENT))
        second = await record_call(gw, tenant, seed=2, **between(OTHER, CALLER))
        if held == "number":
            hold = await place_hold(gw, tenant, number=CALLER)
        elif held == "its-call":
            hold = await place_hold(gw, tenant, call_ids=[second.call_id])
        else:  # a hold on the other party of one of the number's calls covers that call
            hold = await place_hold(gw, tenant, number=OTHER)
        status, body = await api(
            gw, "POST", "/v1/tenants/acme/erasure-requests", tenant.admin, {"number": CALLER}
        )
        assert status == 409, body
        assert (body["error"], body["hold"]) == ("legal_hold", hold["id"])
        for call in (first, second):  # refused whole: not even the uncovered call went
            await assert_kept(gw, await objects_of(gw, "acme", call.recording_id))
            status, view = await recording(gw, tenant, call.recording_id)
            assert view["status"] == "recorded"
        assert "erasure.requested" not in [e.action for e in await events(gw, "acme")]

    async def test_erasing_a_live_call_ends_it_and_erases_what_it_streamed(
        self, gw: Gateway
    ) -> None:
        tenant = await gw.tenant("acme", RECORDING_ON)
        announced = await gw.announce(tenant)
        call_id, recording_id = announced["call_id"], announced["recording_id"]
        inbound, outbound = ULAW.encode(tone(0.4, 440)), ULAW.encode(tone(0.4, 660))
        ws = await gw.client.ws_connect("/v1/ingest/twilio", headers=bearer(tenant.pbx))
        try:
            await ws.send_str(twilio_connected())
            await ws.send_str(twilio_start(call_id))
            for message in twilio_call(inbound, outbound):
                await ws.send_str(message)
            await frames_taken(gw, 40)  # 0.4 s of two tracks, 20 ms a frame
            status, view = await recording(gw, tenant, recording_id)
            assert view["status"] == "recording"

            status, receipt = await api(
                gw, "DELETE", f"/v1/recordings/{recording_id}", tenant.admin
            )
            assert status == 200, receipt
            assert receipt["recordings"] == [recording_id]
            assert (receipt["recordings_erased"], receipt["objects_shredded"]) == (1, 2)
            # The call has ended: the stream's next frame is refused.
            await ws.send_str(twilio_media("inbound", 400, inbound[:160], sequence=99))
            closing = await ws.receive(timeout=10)
        finally:
            await ws.close()
        assert (closing.type, closing.data, closing.extra) == (
            WSMsgType.CLOSE,
            1008,
            "call_ended",
        )
        status, call = await api(gw, "GET", f"/v1/tenants/acme/calls/{call_id}", tenant.admin)
        assert status == 200
        assert call["ended_at"] == iso(0)
        status, view = await recording(gw, tenant, recording_id)
        assert (view["status"], view["delete_reason"]) == ("deleted", "erasure")
        stored = await objects_of(gw, "acme", recording_id)
        assert sorted(o.track or "" for o in stored) == ["inbound", "outbound"]
        await assert_erased(gw, stored)
        assert [key async for key in gw.app[SERVICES].store.list_keys("acme/")] == []
        assert await error_of(gw, tenant, f"/v1/recordings/{recording_id}/audio") == (
            410,
            "recording_deleted",
        )
        ended = [e for e in await events(gw, "acme") if e.action == "call.ended"]
        assert [e.detail.get("reason") for e in ended] == ["erased"]

    async def test_an_erasure_queues_a_recording_deleted_webhook_event(self, gw: Gateway) -> None:
        tenant = await gw.tenant("acme", {**RECORDING_ON, "webhook": HOOK})
        call = await record_call(gw, tenant)
        status, _ = await api(gw, "DELETE", f"/v1/recordings/{call.recording_id}", tenant.admin)
        assert status == 200
        jobs = await gw.app[SERVICES].catalog.jobs.list("acme", kind="webhook")
        payloads = [job.payload for job in jobs if job.payload]
        assert [(p["event"], p["data"]) for p in payloads] == [
            ("recording.deleted", {"recording_id": call.recording_id, "reason": "erasure"})
        ]
        assert payloads[0]["tenant"] == "acme"
        assert jobs[0].recording_id == call.recording_id


@pytest.mark.integration
@pytest.mark.postgres
@pytest.mark.s3
class TestOnPostgresAndS3(TestRetentionAndErasure):
    """The same tests with the catalog on PostgreSQL and the objects on SeaweedFS S3."""

    @pytest.fixture
    def gateway_settings(
        self,
        tmp_path: Path,
        database_url_postgresql: str,
        seaweedfs: S3Server,
        s3_bucket: str,
    ) -> Settings:
        return Settings.model_validate(
            {
                "data_dir": tmp_path / "var",
                "database_url": database_url_postgresql,
                "store": {
                    "url": f"s3://{s3_bucket}",
                    "endpoint_url": seaweedfs.endpoint_url,
                    "access_key": seaweedfs.access_key,
                    "secret_key": seaweedfs.secret_key,
                    "region": seaweedfs.region,
                },
                "audiosocket": {"port": free_port()},
                "ai": {
                    "workers": 0,
                    "retry_backoff": f"PT{AI_BACKOFF_S}S",
                    "lease": f"PT{AI_LEASE_S}S",
                },
                "retention": {"sweep_interval": "PT0S"},
            }
        )

    async def test_the_parts_are_postgresql_and_s3(self, gw: Gateway) -> None:
        services = gw.app[SERVICES]
        assert services.catalog.backend == "postgresql"
        assert type(services.store).__name__ == "S3Store"


# --- 4. export ---------------------------------------------------------------------------


async def test_an_export_holds_exactly_what_the_api_serves_for_the_number(
    gw: Gateway, worker: AnalysisWorker
) -> None:
    tenant = await gw.tenant("acme", {**WITH_AI, "consent": {"required": True}})
    calling = await record_call(gw, tenant, seconds=0.6, seed=1, **between(CALLER, AGENT))
    called = await record_call(gw, tenant, seconds=0.4, seed=2, **between(OTHER, CALLER))
    others = await record_call(gw, tenant, seed=3, **between(OTHER, AGENT))
    response = await gw.client.post(
        "/v1/tenants/acme/calls",
        json={"from": STRANGER, "to": CALLER, "consent": "denied", "transport": "twilio"},
        headers=bearer(tenant.pbx),
    )
    assert response.status == 403  # refused: only its call record exists
    assert await analyse_all(worker) == 3

    expected: dict[str, dict[str, Any]] = {}
    for call in (calling, called):
        entry: dict[str, Any] = {}
        for part in ("", "/transcript", "/analysis", "/audio"):
            response = await gw.client.get(
                f"/v1/recordings/{call.recording_id}{part}", headers=bearer(tenant.admin)
            )
            assert response.status == 200, part
            entry[part] = await response.read()
        expected[call.recording_id] = entry
    before = len(await events(gw, "acme"))

    response = await gw.client.get(
        "/v1/tenants/acme/export", params={"number": "+40 711 111 111"},
        headers=bearer(tenant.admin),
    )  # fmt: skip
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"] == "application/zip"
    assert response.headers["Cache-Control"] == "no-store"
    archive = zipfile.ZipFile(io.BytesIO(await response.read()))
    assert archive.testzip() is None
    names = set(archive.namelist())
    folders = {f"recordings/{c.recording_id}" for c in (calling, called)}
    assert names == {"manifest.json", "calls.json"} | {
        f"{folder}/{name}"
        for folder in folders
        for name in ("recording.json", "transcript.json", "analysis.json", "audio.wav")
    }
    assert not any(others.recording_id in name for name in names)

    def read(name: str) -> Any:
        return json.loads(archive.read(name))

    manifest = read("manifest.json")
    export_id = manifest["id"]
    assert export_id.startswith("export_")
    assert response.headers["Content-Disposition"] == f'attachment; filename="{export_id}.zip"'
    assert (manifest["tenant"], manifest["calls"]) == ("acme", 3)
    expected_items = {
        c.recording_id: {"recording_id": c.recording_id, "call_id": c.call_id,
                         "transcript": True, "analysis": True, "audio": True}
        for c in (calling, called)
    }  # fmt: skip
    assert {item["recording_id"]: item for item in manifest["recordings"]} == expected_items
    assert len(manifest["recordings"]) == 2

    catalog_calls = await gw.app[SERVICES].catalog.calls.of_number("acme", CALLER)
    exported = read("calls.json")
    assert [(c["call_id"], c["from"], c["to"]) for c in exported] == [
        (c.id, c.from_number, c.to_number) for c in catalog_calls
    ]
    assert len(exported) == 3
    refused = [c for c in exported if c["refusal"] is not None]
    assert [(c["from"], c["to"]) for c in refused] == [(STRANGER, CALLER)]
    assert {c["call_id"] for c in exported} >= {calling.call_id, called.call_id}
    assert others.call_id not in {c["call_id"] for c in exported}

    for recording_id, entry in expected.items():
        folder = f"recordings/{recording_id}"
        assert read(f"{folder}/recording.json") == json.loads(entry[""])
        assert read(f"{folder}/transcript.json") == json.loads(entry["/transcript"])
        assert read(f"{folder}/analysis.json") == json.loads(entry["/analysis"])
        assert archive.read(f"{folder}/audio.wav") == entry["/audio"]

    trail = (await events(gw, "acme"))[before:]
    created = [e for e in trail if e.action == "export.created"]
    assert [(e.object, e.detail) for e in created] == [(export_id, {"calls": 3, "recordings": 2})]
    reads = sorted((e.action, e.object) for e in trail if e.detail.get("export") == export_id)
    assert reads == sorted(
        (action, c.recording_id)
        for c in (calling, called)
        for action in ("audio.read", "transcript.read", "analysis.read")
    )
    assert len(trail) == 1 + len(reads)  # nothing else was read
    await audit_ok(gw, tenant)


async def test_an_export_says_why_a_recording_has_no_audio(
    gw: Gateway, worker: AnalysisWorker, clock: FakeClock
) -> None:
    tenant = await gw.tenant("acme", {**WITH_AI, "retention": SHORT})
    call = await record_call(gw, tenant, seconds=1.0, **between(CALLER, AGENT))
    assert await analyse_all(worker) == 1
    await sweep(gw, clock, 61)  # the audio's window ended; the transcript's has not
    response = await gw.client.get(
        "/v1/tenants/acme/export", params={"number": AGENT}, headers=bearer(tenant.admin)
    )
    assert response.status == 200
    archive = zipfile.ZipFile(io.BytesIO(await response.read()))
    folder = f"recordings/{call.recording_id}"
    assert set(archive.namelist()) == {
        "manifest.json",
        "calls.json",
        f"{folder}/recording.json",
        f"{folder}/transcript.json",
        f"{folder}/analysis.json",
    }
    manifest = json.loads(archive.read("manifest.json"))
    assert manifest["recordings"] == [
        {"recording_id": call.recording_id, "call_id": call.call_id, "transcript": True,
         "analysis": True, "audio": "audio_deleted"}
    ]  # fmt: skip
    assert not [e for e in await events(gw, "acme") if e.action == "audio.read"]


@pytest.mark.parametrize("query", ["", "?number=", "?number=call%20me", "?numbers=%2B40711111111"])
async def test_an_export_without_a_number_is_400(gw: Gateway, query: str) -> None:
    tenant = await gw.tenant("acme", RECORDING_ON)
    await record_call(gw, tenant, **between(CALLER))
    status, body = await api(gw, "GET", f"/v1/tenants/acme/export{query}", tenant.admin)
    assert (status, body["error"]) == (400, "bad_query")
    assert "number" in body["message"]
    assert "export.created" not in [e.action for e in await events(gw, "acme")]


async def test_an_export_of_a_number_without_calls_is_an_empty_archive(gw: Gateway) -> None:
    tenant = await gw.tenant("acme", RECORDING_ON)
    await record_call(gw, tenant, **between(CALLER))
    response = await gw.client.get(
        "/v1/tenants/acme/export", params={"number": STRANGER}, headers=bearer(tenant.admin)
    )
    assert response.status == 200
    archive = zipfile.ZipFile(io.BytesIO(await response.read()))
    assert sorted(archive.namelist()) == ["calls.json", "manifest.json"]
    assert json.loads(archive.read("calls.json")) == []
    assert json.loads(archive.read("manifest.json"))["recordings"] == []


# --- 5. tenant deletion and holds --------------------------------------------------------


async def test_a_tenant_under_a_hold_is_not_deleted_until_it_is_released(gw: Gateway) -> None:
    tenant = await gw.tenant("acme", RECORDING_ON)
    first = await record_call(gw, tenant, seed=1)
    second = await record_call(gw, tenant, seed=2, **between(OTHER))
    stored = [*await objects_of(gw, "acme", first.recording_id),
              *await objects_of(gw, "acme", second.recording_id)]  # fmt: skip
    hold = await place_hold(gw, tenant, number=OTHER)
    status, body = await api(gw, "DELETE", "/v1/tenants/acme", gw.operator)
    assert status == 409, body
    assert (body["error"], body["hold"]) == ("legal_hold", hold["id"])
    assert hold["id"] in body["message"]
    status, _ = await api(gw, "GET", "/v1/tenants/acme", tenant.admin)
    assert status == 200  # its tokens still work
    await assert_kept(gw, stored)
    assert (await audio(gw, tenant, first.recording_id))[0] == 200

    await release_hold(gw, tenant, hold["id"])
    status, receipt = await api(gw, "DELETE", "/v1/tenants/acme", gw.operator)
    assert status == 200, receipt
    assert receipt["tenant"] == "acme"
    assert receipt["keys_destroyed"] is True
    assert (receipt["recordings_deleted"], receipt["objects_shredded"]) == (2, 4)
    assert receipt["call_records_deleted"] == 2
    assert receipt["bytes_deleted"] == sum(o.size or 0 for o in stored)
    catalog = gw.app[SERVICES].catalog
    assert await catalog.objects.list("acme") == []
    assert await catalog.recordings.list_entries("acme", limit=10) == []
    for item in stored:
        assert not await gw.app[SERVICES].store.exists(item.store_key)
    trail = await events(gw, "acme")
    assert trail[-1].action == "tenant.deleted"
    assert [e.action for e in trail].count("hold.released") == 1
    assert (await catalog.audit.verify("acme")).ok


# --- 6. the `callvault retention sweep` command ------------------------------------------


@pytest.fixture
def root_logging() -> Iterator[None]:
    """The root logger as it was: the CLI's ``main`` points it at this test's (captured)
    stderr, which is closed once the test ends."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("root_logging")
async def test_the_retention_sweep_command_deletes_what_expired_and_prints_its_report(
    aiohttp_client: Callable[..., Any],
    gateway_settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The command sweeps at the wall clock's time: the call is recorded a day ago.
    clock = FakeClock(datetime.now(UTC) - timedelta(days=1))
    client = await aiohttp_client(GatewayServer(build_app(gateway_settings, clock=as_clock(clock))))
    gw = await start_gateway(client)
    windows = {"recordings": "PT60S", "transcripts": "PT60S", "call_records": "PT60S"}
    tenant = await gw.tenant("acme", {**RECORDING_ON, "retention": windows})
    call = await record_call(gw, tenant)
    kept_tenant = await gw.tenant("kept", RECORDING_ON)  # P90D: nothing of it is due
    kept = await record_call(gw, kept_tenant, seed=7)
    stored = await objects_of(gw, "acme", call.recording_id)
    kept_objects = await objects_of(gw, "kept", kept.recording_id)
    capsys.readouterr()

    code = await asyncio.to_thread(
        main, ["--data-dir", str(gateway_settings.data_dir), "retention", "sweep"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads(out.strip().splitlines()[-1])
    assert report == {
        "objects_deleted": 2,
        "bytes_deleted": sum(o.size or 0 for o in stored),
        "recordings_deleted": 1,
        "call_records_deleted": 1,
        "held": 0,
        "failed_tenants": [],
        "skipped_tenants": [],
    }
    await assert_erased(gw, stored, rows=False)
    assert (await recording(gw, tenant, call.recording_id))[0] == 404
    await assert_kept(gw, kept_objects)
    receipts = [e.action for e in await events(gw, "acme") if e.actor == "retention"]
    assert receipts == ["data.deleted", "recording.deleted", "call_record.deleted"]

    # A second run finds nothing left to do.
    code = await asyncio.to_thread(
        main, ["--data-dir", str(gateway_settings.data_dir), "retention", "sweep"]
    )
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0
    assert (report["objects_deleted"], report["recordings_deleted"]) == (0, 0)


# --- 7. the serve loop -------------------------------------------------------------------


async def test_the_app_sweeps_on_its_own_every_interval(
    aiohttp_client: Callable[..., Any], gateway_settings: Settings
) -> None:
    settings = gateway_settings.model_copy(
        update={"retention": RetentionSettings(sweep_interval=timedelta(seconds=0.1))}
    )
    clock = FakeClock(T0)
    client = await aiohttp_client(GatewayServer(build_app(settings, clock=as_clock(clock))))
    gw = await start_gateway(client)
    tenant = await gw.tenant("acme", {**RECORDING_ON, "retention": SHORT})
    call = await record_call(gw, tenant)
    stored = await objects_of(gw, "acme", call.recording_id)
    # The loop has swept at T0 (and does again every 0.1 s): nothing is due yet.
    await asyncio.sleep(0.3)  # several intervals of the loop, not time for the data
    assert (await recording(gw, tenant, call.recording_id))[0] == 200
    await assert_kept(gw, stored)

    clock.advance(10 * 365 * 86400)  # far past every window
    for _ in range(100):  # at most ~5 s for the next sweep to run
        if (await recording(gw, tenant, call.recording_id))[0] == 404:
            break
        await asyncio.sleep(0.05)
    status, _ = await recording(gw, tenant, call.recording_id)
    assert status == 404
    await assert_erased(gw, stored, rows=False)
    actions = [e.action for e in await events(gw, "acme") if e.actor == "retention"]
    assert actions == ["data.deleted", "recording.deleted", "call_record.deleted"]

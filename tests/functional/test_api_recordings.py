"""Recordings over HTTP: the list (filters, keyset pagination), the metadata, and the audio
export decrypted on the fly into a stereo WAV.

The calls are streamed over the real Twilio WebSocket path and read back through the API,
so a sample that is dropped, reordered or put on the wrong channel anywhere between the
socket and the export shows up here as an inexact WAV.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import numpy as np
import pytest

from gateway.state import SERVICES
from tests.gateway import (
    RECORD,
    T0,
    ULAW,
    FakeClock,
    Gateway,
    TenantTokens,
    bearer,
    read_wav,
    record_call,
)

RECORDING_ON = {**RECORD, "consent": {"required": False}}
FIELDS = {
    "id",
    "call_id",
    "tenant",
    "from",
    "to",
    "direction",
    "started_at",
    "ended_at",
    "duration_s",
    "codec",
    "tracks",
    "instructions_version",
    "status",
    "expires_at",
    "expires",
    "legal_hold",
    "legal_holds",
    "delete_reason",
    "deleted_at",
    "audio_purged",
}


def iso(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


async def listing(
    gateway: Gateway, tenant: TenantTokens, token: str | None = None, **query: Any
) -> tuple[int, dict[str, Any]]:
    response = await gateway.client.get(
        f"/v1/tenants/{tenant.id}/recordings",
        params={k: str(v) for k, v in query.items()},
        headers=bearer(token or tenant.admin),
    )
    return response.status, dict(await response.json())


async def ids(gateway: Gateway, tenant: TenantTokens, **query: Any) -> list[str]:
    status, body = await listing(gateway, tenant, **query)
    assert status == 200, body
    return [item["id"] for item in body["items"]]


async def audio_reads(gateway: Gateway, tenant_id: str) -> list[str | None]:
    events = await gateway.app[SERVICES].catalog.audit.list(tenant_id, limit=1000)
    return [e.object for e in events if e.action == "audio.read"]


# --- list and metadata ---------------------------------------------------------------------


async def test_a_streamed_call_is_listed_with_every_field(clocked_gateway: Gateway) -> None:
    gateway = clocked_gateway
    tenant = await gateway.tenant("acme", RECORDING_ON)
    call = await record_call(gateway, tenant, seconds=0.2, direction="outbound")

    for token in (tenant.admin, tenant.processor):
        status, body = await listing(gateway, tenant, token)
        assert status == 200
        assert body["next_cursor"] is None
        [item] = body["items"]
        assert FIELDS <= set(item)
        assert item["id"] == call.recording_id
        assert item["call_id"] == call.call_id
        assert item["tenant"] == "acme"
        assert (item["from"], item["to"]) == ("+40711111111", "+40722222222")
        assert item["direction"] == "outbound"
        # The fake clock never moved: the call started and ended at T0.
        assert item["started_at"] == item["ended_at"] == iso(0)
        assert item["duration_s"] == 0.2
        assert item["codec"] == "pcmu"
        assert item["tracks"] == ["inbound", "outbound"]
        assert item["instructions_version"] == 1
        assert item["status"] == "recorded"
        assert item["expires_at"] == iso(90 * 86400)  # P90D after the end
        assert item["legal_hold"] is False
        assert item["audio_purged"] is False

        response = await gateway.client.get(
            f"/v1/recordings/{call.recording_id}", headers=bearer(token)
        )
        assert response.status == 200
        assert await response.json() == item


async def test_a_live_recording_is_listed_as_recording(clocked_gateway: Gateway) -> None:
    gateway = clocked_gateway
    tenant = await gateway.tenant("acme", {**RECORDING_ON, "retention": {"recordings": "PT30S"}})
    announced = await gateway.announce(tenant)
    [item] = (await listing(gateway, tenant))[1]["items"]
    assert item["status"] == "recording"
    assert item["ended_at"] is None
    assert item["duration_s"] is None
    assert item["expires_at"] is None
    assert item["tracks"] == []
    response = await gateway.client.post(
        f"/v1/calls/{announced['call_id']}/end", headers=bearer(tenant.pbx)
    )
    assert response.status == 200
    [item] = (await listing(gateway, tenant))[1]["items"]
    assert item["status"] == "recorded"
    assert item["expires_at"] == iso(30)  # the recordings window of the current instructions


async def test_the_number_filter_matches_either_party_however_formatted(
    gateway: Gateway,
) -> None:
    tenant = await gateway.tenant("acme", RECORDING_ON)
    one = await gateway.announce(tenant, **{"from": "+40711111111", "to": "+40722222222"})
    two = await gateway.announce(tenant, **{"from": "+40733333333", "to": "+40711111111"})
    three = await gateway.announce(tenant, **{"from": "+40744444444", "to": "+40755555555"})
    found = await ids(gateway, tenant, number="+40 711-111-111")
    assert sorted(found) == sorted([one["recording_id"], two["recording_id"]])
    assert await ids(gateway, tenant, number="+40 (755) 555.555") == [three["recording_id"]]
    assert await ids(gateway, tenant, number="+40799999999") == []
    for bad in ("0711111111", "+40", "call me"):
        status, body = await listing(gateway, tenant, number=bad)
        assert status == 400, bad
        assert body["error"] == "bad_query"


async def test_since_and_until_select_by_start_time(
    clocked_gateway: Gateway, clock: FakeClock
) -> None:
    gateway = clocked_gateway
    tenant = await gateway.tenant("acme", RECORDING_ON)
    started = []
    for _ in range(3):
        started.append((await gateway.announce(tenant))["recording_id"])
        clock.advance(60)
    first, second, third = started
    assert await ids(gateway, tenant, since=iso(60)) == [third, second]  # newest first
    assert await ids(gateway, tenant, until=iso(60)) == [first]  # until is exclusive
    assert await ids(gateway, tenant, since=iso(60), until=iso(120)) == [second]
    # Any zone is accepted (12:01:30+02:00 is 10:01:30Z).
    assert await ids(gateway, tenant, since="2026-11-28T12:01:30+02:00") == [third]
    assert await ids(gateway, tenant, since=iso(3600)) == []


@pytest.mark.parametrize(
    "query",
    [
        {"since": "yesterday"},
        {"since": "2026-11-28T10:00:00"},  # no zone
        {"until": "2026-13-01T00:00:00Z"},
        {"limit": "0"},
        {"limit": "201"},
        {"limit": "ten"},
        {"limit": "-1"},
        {"cursor": "garbage!"},
        {"cursor": "WzEsMl0"},  # base64 of [1,2]: not a cursor this API made
        {"cursor": "bm90IGpzb24"},  # base64 of "not json"
    ],
    ids=lambda q: "-".join(f"{k}={v}" for k, v in q.items()),
)
async def test_a_bad_query_value_is_400(gateway: Gateway, query: dict[str, str]) -> None:
    tenant = await gateway.tenant("acme", RECORDING_ON)
    await gateway.announce(tenant)
    status, body = await listing(gateway, tenant, **query)
    assert status == 400, body
    assert body["error"] == "bad_query"
    assert next(iter(query)) in body["message"]


async def test_limit_and_cursor_page_through_without_gaps_or_duplicates(
    clocked_gateway: Gateway, clock: FakeClock
) -> None:
    gateway = clocked_gateway
    tenant = await gateway.tenant("acme", RECORDING_ON)
    # Five recordings, three of them created at the very same instant, so the cursor has to
    # break ties by id.
    for step in (0, 0, 0, 30, 30):
        clock.advance(step)
        await gateway.announce(tenant)
    everything = await ids(gateway, tenant)
    assert len(everything) == 5

    for limit in (1, 2, 3, 5):
        seen: list[str] = []
        pages = 0
        cursor: str | None = None
        while True:
            query: dict[str, Any] = {"limit": limit}
            if cursor is not None:
                query["cursor"] = cursor
            status, body = await listing(gateway, tenant, **query)
            assert status == 200
            pages += 1
            assert len(body["items"]) <= limit
            seen += [item["id"] for item in body["items"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert seen == everything, limit  # same order, none missing, none twice
        # The last page says it is the last, even when it is full: never a cursor to an
        # empty page.
        assert pages == -(-5 // limit), limit


async def test_pages_hold_with_a_filter_and_recordings_added_meanwhile(
    clocked_gateway: Gateway, clock: FakeClock
) -> None:
    gateway = clocked_gateway
    tenant = await gateway.tenant("acme", RECORDING_ON)
    wanted = []
    for index in range(4):
        clock.advance(1)
        wanted.append((await gateway.announce(tenant, to="+40733333333"))["recording_id"])
        await gateway.announce(tenant, to=f"+4074444444{index}")
    status, page = await listing(gateway, tenant, number="+40733333333", limit=2)
    assert [item["id"] for item in page["items"]] == wanted[:1:-1]
    # A newer recording arrives between pages: it is not on the next page (keyset cursor).
    clock.advance(1)
    newer = (await gateway.announce(tenant, to="+40733333333"))["recording_id"]
    status, rest = await listing(
        gateway, tenant, number="+40733333333", limit=2, cursor=page["next_cursor"]
    )
    assert [item["id"] for item in rest["items"]] == wanted[1::-1]
    assert newer not in [item["id"] for item in rest["items"]]


async def test_unknown_and_foreign_recordings_are_404(gateway: Gateway) -> None:
    tenant = await gateway.tenant("acme", RECORDING_ON)
    other = await gateway.tenant("other", RECORDING_ON)
    theirs = await gateway.announce(other)
    for recording_id in ("rec_nothing", theirs["recording_id"]):
        for suffix in ("", "/audio"):
            response = await gateway.client.get(
                f"/v1/recordings/{recording_id}{suffix}", headers=bearer(tenant.admin)
            )
            assert response.status == 404, (recording_id, suffix)
            assert (await response.json())["error"] == "not_found"
    assert await audio_reads(gateway, "acme") == []
    assert await audio_reads(gateway, "other") == []


# --- audio -----------------------------------------------------------------------------------


async def test_the_audio_is_a_stereo_wav_of_exactly_what_was_streamed(gateway: Gateway) -> None:
    tenant = await gateway.tenant("acme", RECORDING_ON)
    call = await record_call(gateway, tenant, seconds=0.5, seed=3)
    assert call.outbound is not None

    response = await gateway.client.get(
        f"/v1/recordings/{call.recording_id}/audio", headers=bearer(tenant.admin)
    )
    assert response.status == 200
    assert response.headers["Content-Type"] == "audio/wav"
    assert response.headers["Cache-Control"] == "no-store"
    wav = await response.read()
    assert len(wav) == int(response.headers["Content-Length"])
    channels, rate, pcm = read_wav(wav)
    assert (channels, rate) == (2, 8000)
    assert pcm.dtype == np.dtype("<i2")
    assert pcm.shape == (4000, 2)
    # Sample-exact: each channel is the µ-law that was sent, decoded.
    assert np.array_equal(pcm[:, 0], ULAW.decode(call.inbound))
    assert np.array_equal(pcm[:, 1], ULAW.decode(call.outbound))
    assert not np.array_equal(pcm[:, 0], pcm[:, 1])


async def test_a_track_that_sent_nothing_is_silence(gateway: Gateway) -> None:
    tenant = await gateway.tenant("acme", RECORDING_ON)
    call = await record_call(gateway, tenant, seconds=0.2, outbound=False)
    response = await gateway.client.get(
        f"/v1/recordings/{call.recording_id}/audio", headers=bearer(tenant.admin)
    )
    channels, rate, pcm = read_wav(await response.read())
    assert (channels, rate) == (2, 8000)
    assert np.array_equal(pcm[:, 0], ULAW.decode(call.inbound))
    assert not pcm[:, 1].any()


async def test_every_audio_read_is_audited(gateway: Gateway) -> None:
    tenant = await gateway.tenant("acme", RECORDING_ON)
    call = await record_call(gateway, tenant)
    digests = set()
    for _ in range(2):
        response = await gateway.client.get(
            f"/v1/recordings/{call.recording_id}/audio", headers=bearer(tenant.admin)
        )
        assert response.status == 200
        digests.add(hashlib.sha256(await response.read()).hexdigest())
    assert len(digests) == 1  # the same bytes each time
    events = [
        e
        for e in await gateway.app[SERVICES].catalog.audit.list("acme", limit=1000)
        if e.action == "audio.read"
    ]
    assert [e.object for e in events] == [call.recording_id] * 2
    assert all(e.actor.startswith("token:tok_") for e in events)
    assert events[0].detail == {"tracks": ["inbound", "outbound"]}


async def test_the_audio_of_a_live_recording_is_409(gateway: Gateway) -> None:
    tenant = await gateway.tenant("acme", RECORDING_ON)
    announced = await gateway.announce(tenant)
    response = await gateway.client.get(
        f"/v1/recordings/{announced['recording_id']}/audio", headers=bearer(tenant.admin)
    )
    assert response.status == 409
    assert (await response.json())["error"] == "conflict"
    assert await audio_reads(gateway, "acme") == []


async def test_an_ai_only_recording_has_no_audio_to_read(gateway: Gateway) -> None:
    tenant = await gateway.tenant(
        "acme", {"ai": {"transcript": True}, "consent": {"required": False}}
    )
    call = await record_call(gateway, tenant)
    assert call.announced["decision"] == {"store_recording": False, "ai": ["transcript"]}
    response = await gateway.client.get(
        f"/v1/recordings/{call.recording_id}/audio", headers=bearer(tenant.admin)
    )
    assert response.status == 403
    assert (await response.json())["error"] == "forbidden"
    assert await audio_reads(gateway, "acme") == []
    # Its metadata is readable; it has no recording to hand out.
    response = await gateway.client.get(
        f"/v1/recordings/{call.recording_id}", headers=bearer(tenant.processor)
    )
    assert response.status == 200
    assert (await response.json())["decision"]["store_recording"] is False


@pytest.mark.parametrize("role", ["operator", "pbx", "processor"])
async def test_only_an_admin_reads_audio(gateway: Gateway, role: str) -> None:
    tenant = await gateway.tenant("acme", RECORDING_ON)
    call = await record_call(gateway, tenant)
    token = gateway.operator if role == "operator" else getattr(tenant, role)
    response = await gateway.client.get(
        f"/v1/recordings/{call.recording_id}/audio", headers=bearer(token)
    )
    assert response.status == 403
    assert (await response.json())["error"] == "forbidden"
    assert await audio_reads(gateway, "acme") == []


async def test_numbers_are_stored_in_one_form_so_any_formatting_finds_them(
    gateway: Gateway,
) -> None:
    tenant = await gateway.tenant("acme", RECORDING_ON)
    call = await record_call(gateway, tenant, **{"from": "+40 (711) 222-333", "to": "anonymous"})
    for query in ("+40711222333", "+40 711 222 333", "+40-711-222-333"):
        assert await ids(gateway, tenant, number=query) == [call.recording_id]
    response = await gateway.client.get(
        f"/v1/recordings/{call.recording_id}", headers=bearer(tenant.admin)
    )
    body = await response.json()
    assert (body["from"], body["to"]) == ("+40711222333", "anonymous")

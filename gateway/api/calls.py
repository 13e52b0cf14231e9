"""Announcing calls, and pausing, resuming and ending them.

``POST .../calls`` runs the policy before anything else exists: a refusal answers 403 with
the refusal code and leaves only the call record (CDR) and an audit event.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from crypto.errors import CallvaultError, Conflict, PolicyRefused, StreamRefused
from gateway.api.common import iso, json_body, principal_of
from gateway.auth import ANY_ROLE, require_role, scope, tenant_of
from gateway.calls import CallAnnouncement, RtpPayloadTypes, parse_announcement
from gateway.ingest.rtp import PayloadTypes
from gateway.ingest.rtp_server import RtpOffer
from gateway.state import CALLS, CLOCK, RTP, SERVICES, SETTINGS
from storage.catalog import Call

WEBSOCKET_PATHS = {"twilio": "/v1/ingest/twilio", "fork": "/v1/ingest/fork"}


def call_view(call: Call) -> dict[str, Any]:
    return {
        "call_id": call.id,
        "tenant": call.tenant_id,
        "from": call.from_number,
        "to": call.to_number,
        "direction": call.direction,
        "consent": call.consent,
        "transport": call.transport,
        "codec": call.codec,
        "sample_rate": call.sample_rate,
        "instructions_version": call.instructions_version,
        "decision": call.decision,
        "refusal": call.refusal_code,
        "started_at": iso(call.started_at),
        "ended_at": iso(call.ended_at),
    }


async def announce(request: web.Request) -> web.Response:
    principal = await principal_of(request)
    tenant = scope(principal, request.match_info["tenant"], {"pbx"})
    announcement = parse_announcement(await json_body(request))
    app = request.app
    announced = await app[CALLS].announce(
        tenant, announcement, actor=principal.actor, now=app[CLOCK].now()
    )
    settings = app[SETTINGS]
    ingest: dict[str, Any] = {"websocket": WEBSOCKET_PATHS.get(announced.call.transport)}
    if settings.audiosocket.port:
        ingest["audiosocket"] = f"{settings.audiosocket.host}:{settings.audiosocket.port}"
    if announced.call.transport == "rtp":
        ingest["rtp"] = (await _open_rtp(app, tenant, announced.call.id, announcement)).document()
    return web.json_response(
        {
            "call_id": announced.call.id,
            "recording_id": announced.recording.id,
            "instructions_version": announced.decision.instructions_version,
            "decision": announced.decision.document(),
            "ingest": ingest,
        },
        status=201,
    )


async def _open_rtp(
    app: web.Application, tenant: str, call_id: str, announcement: CallAnnouncement
) -> RtpOffer:
    """Bind the call's ports; a call that cannot get them is ended at once (empty)."""
    now = app[CLOCK].now()
    session = await app[CALLS].session(tenant, call_id, now)
    types = announcement.payload_types or RtpPayloadTypes()
    try:
        return await app[RTP].open_call(
            session,
            srtp=bool(announcement.srtp),
            payload_types=PayloadTypes.for_codec(
                session.call.codec, opus=types.opus, telephone_event=types.telephone_event
            ),
        )
    except CallvaultError:
        await app[CALLS].end(tenant, call_id, now=now, reason="ingest_unavailable")
        raise


async def get_call(request: web.Request) -> web.Response:
    principal = await principal_of(request)
    tenant = scope(principal, request.match_info["tenant"], ANY_ROLE)
    call = await request.app[SERVICES].catalog.calls.get(tenant, request.match_info["call_id"])
    require_role(principal, {"pbx", "admin"})
    return web.json_response(call_view(call))


async def _pbx_call(request: web.Request) -> tuple[str, str]:
    """The caller's tenant and the call id of the path, once the call is known to be the
    tenant's (404 otherwise) and the caller a pbx (403)."""
    principal = await principal_of(request)
    tenant, call_id = tenant_of(principal), request.match_info["call_id"]
    await request.app[SERVICES].catalog.calls.get(tenant, call_id)
    require_role(principal, {"pbx"})
    return tenant, call_id


async def _set_paused(request: web.Request, paused: bool) -> web.Response:
    tenant, call_id = await _pbx_call(request)
    app = request.app
    try:
        await app[CALLS].set_paused(tenant, call_id, paused, app[CLOCK].now())
    except (PolicyRefused, StreamRefused):
        raise Conflict(f"Call {call_id!r} is not live.") from None
    return web.json_response({"call_id": call_id, "paused": paused})


async def pause(request: web.Request) -> web.Response:
    """From now until ``resume`` the call's audio is discarded, never stored; the gap is
    kept as silence in exports. The pause survives a restart of the gateway."""
    return await _set_paused(request, True)


async def resume(request: web.Request) -> web.Response:
    return await _set_paused(request, False)


async def end(request: web.Request) -> web.Response:
    """End the call (idempotent: also 200 when its transport already ended it)."""
    tenant, call_id = await _pbx_call(request)
    app = request.app
    call = await app[CALLS].end(tenant, call_id, now=app[CLOCK].now(), reason="api")
    return web.json_response(call_view(call))

"""Announcing calls, and pausing, resuming and ending them.

``POST .../calls`` runs the policy before anything else exists: a refusal answers 403 with
the refusal code and leaves only the call record (CDR) and an audit event.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from crypto.errors import CallvaultError
from gateway.api.common import TENANT, body_of, found, iso, principal_of
from gateway.calls import CallAnnouncement, RtpPayloadTypes
from gateway.errors import PolicyRefused, StreamRefused
from gateway.ingest.rtp import PayloadTypes
from gateway.ingest.rtp_server import RtpOffer
from gateway.state import CALLS, CLOCK, NODE, RTP
from storage.catalog import Call, Catalog
from storage.errors import Conflict

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
    """Run the tenant's instructions on the call before any audio exists. Accepted: 201 with
    the decision and where to send audio: this node's listeners (``gateway.nodes``), since
    the node that answers takes the call. Refused: 403 with the refusal code, and nothing is
    stored but the call record (CDR) of the refusal and an audit event."""
    principal, tenant = await principal_of(request), request[TENANT]
    announcement = body_of(request, CallAnnouncement)
    app = request.app
    announced = await app[CALLS].announce(
        tenant, announcement, actor=principal.actor, now=app[CLOCK].now()
    )
    node = app[NODE]
    path = WEBSOCKET_PATHS.get(announced.call.transport)
    ingest: dict[str, Any] = {"websocket": path}
    url = node.addresses.websocket_url(path) if path is not None else None
    if url is not None:
        ingest["websocket_url"] = url
    if announced.audiosocket_id is not None and node.addresses.audiosocket is not None:
        # The one answer that shows the id: the catalog keeps only its hash.
        ingest["audiosocket"] = {
            "address": node.addresses.audiosocket,
            "id": announced.audiosocket_id,
        }
    if announced.call.transport == "rtp":
        ingest["rtp"] = (await _open_rtp(app, tenant, announced.call.id, announcement)).document()
    return web.json_response(
        {
            "call_id": announced.call.id,
            "recording_id": announced.recording.id,
            "instructions_version": announced.decision.instructions_version,
            "decision": announced.decision.document(),
            "ingest": ingest,
            "node": node.id,
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


async def find_call(catalog: Catalog, tenant: str, path: Mapping[str, str]) -> Call:
    """The path's call in the caller's tenant (404 otherwise)."""
    return await catalog.calls.get(tenant, path["call_id"])


async def get_call(request: web.Request) -> web.Response:
    """The call record, refused calls included."""
    call: Call = found(request)
    return web.json_response(call_view(call))


async def _pbx_call(request: web.Request) -> tuple[str, str]:
    """The caller's tenant and the path's call id (found by the route table)."""
    call: Call = found(request)
    return request[TENANT], call.id


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
    """Store audio again."""
    return await _set_paused(request, False)


async def end(request: web.Request) -> web.Response:
    """End the call and finalize its recording. Idempotent: 200 also when the transport
    already ended it, or the call was refused."""
    tenant, call_id = await _pbx_call(request)
    app = request.app
    call = await app[CALLS].end(tenant, call_id, now=app[CLOCK].now(), reason="api")
    return web.json_response(call_view(call))

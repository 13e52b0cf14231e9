"""Legal holds and data subjects' right to erasure (of one recording, or of every call where
a number is a party); the export by number (Art. 20 portability) is ``gateway.api.export``.

An erasure is refused whole (409 naming the hold) when a legal hold covers any of its calls.
Otherwise it is recorded first (the recordings read as deleted at once, and a sweep finishes
an erasure a crash interrupted), then carried out by the retention sweeper's own deletion
steps (shred the DEKs, delete the bytes, mark the rows, write the receipts), and answered
with a receipt. The call records stay until their ``call_records`` window ends (they are
the operator's billing data), content-free.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from gateway.api.common import TENANT, body_of, found, iso, principal_of
from gateway.api.rightsmodels import ErasureRequest, LegalHoldCreate
from gateway.auth import Principal
from gateway.state import CALLS, CLOCK, SERVICES, SWEEPER
from storage.catalog import AuditEntry, Call, Catalog, LegalHold, Recording, RecordingKey
from storage.errors import HeldByLegalHold
from storage.retention import Holds

_PAGE = 500
"""Recordings read per catalog query when a number's recordings are gathered for an
erasure."""


def hold_view(hold: LegalHold) -> dict[str, Any]:
    return {
        "id": hold.id,
        "tenant": hold.tenant_id,
        "number": hold.number,
        "call_ids": None if hold.call_ids is None else list(hold.call_ids),
        "reason": hold.reason,
        "active": hold.released_at is None,
        "created_at": iso(hold.created_at),
        "created_by": hold.created_by,
        "released_at": iso(hold.released_at),
        "released_by": hold.released_by,
    }


async def place_hold(request: web.Request) -> web.Response:
    """Hold calls (by id, live or finished) or every call where a number is a party, so
    that retention deletes nothing of them and erasure is refused until the hold is
    released. Audited as `hold.placed` (without the number)."""
    principal, tenant = await principal_of(request), request[TENANT]
    body = body_of(request, LegalHoldCreate)
    number = body.number
    call_ids = None if body.call_ids is None else list(dict.fromkeys(body.call_ids))
    services, now = request.app[SERVICES], request.app[CLOCK].now()
    hold_id = f"hold_{secrets.token_hex(12)}"
    hold = await services.catalog.holds.create(
        id=hold_id,
        tenant_id=tenant,
        reason=body.reason,
        created_by=principal.actor,
        now=now,
        number=number,
        call_ids=call_ids,
        # The number stays out of the audit log (which outlives an erasure); the hold row,
        # which the log names, says what it covers.
        audit=AuditEntry(
            actor=principal.actor,
            action="hold.placed",
            object=hold_id,
            detail={
                "scope": "number" if number is not None else "call_ids",
                "calls": None if call_ids is None else len(call_ids),
            },
        ),
    )
    return web.json_response(hold_view(hold), status=201)


async def list_holds(request: web.Request) -> web.Response:
    """The tenant's legal holds, released ones included unless `active`, oldest first."""
    tenant = request[TENANT]
    catalog = request.app[SERVICES].catalog
    await catalog.tenants.get(tenant)
    active = request.query.get("active") in ("1", "true")
    holds = await catalog.holds.list(tenant, active_only=active)
    return web.json_response({"items": [hold_view(hold) for hold in holds]})


async def find_hold(catalog: Catalog, tenant: str, path: Mapping[str, str]) -> LegalHold:
    """The path's hold, looked up before the role is checked, so that another tenant's hold
    id is 404 for every role, as any other id is."""
    return await catalog.holds.get(tenant, path["hold_id"])


async def get_hold(request: web.Request) -> web.Response:
    """The legal hold."""
    hold: LegalHold = found(request)
    return web.json_response(hold_view(hold))


async def release_hold(request: web.Request) -> web.Response:
    """Release the hold: what it kept follows its retention windows again (from the next
    sweep on), and can be erased. Audited as `hold.released`."""
    principal, hold = await principal_of(request), found(request)
    tenant, hold_id = hold.tenant_id, hold.id
    hold = await request.app[SERVICES].catalog.holds.release(
        tenant,
        hold_id,
        released_by=principal.actor,
        now=request.app[CLOCK].now(),
        audit=AuditEntry(actor=principal.actor, action="hold.released", object=hold_id, detail={}),
    )
    return web.json_response(hold_view(hold))


def _refuse_held(holds: Holds, calls: Sequence[Call], number: str | None = None) -> None:
    """``HeldByLegalHold`` naming the first hold that covers the number or one of the calls."""
    for hold in holds.holds:
        if number is not None and hold.number == number:
            raise HeldByLegalHold(
                hold.id, f"Legal hold {hold.id!r} covers this number; release it first."
            )
    for call in calls:
        covering = holds.covering(call.id, call.from_number, call.to_number)
        if covering:
            raise HeldByLegalHold(
                covering[0].id,
                f"Legal hold {covering[0].id!r} covers call {call.id!r}; release it first.",
            )


async def _erase(
    request: web.Request,
    principal: Principal,
    tenant: str,
    entries: Sequence[tuple[Recording, Call]],
    *,
    scope_name: str,
    number: str | None = None,
) -> dict[str, Any]:
    """Erase the recordings of ``entries`` (refused whole if a hold covers one) and return
    the receipt."""
    app = request.app
    catalog, now = app[SERVICES].catalog, app[CLOCK].now()
    holds = Holds(await catalog.holds.list(tenant, active_only=True))
    _refuse_held(holds, [call for _, call in entries], number)
    for recording, call in entries:
        if recording.status == "recording":  # a live call: it ends here, then is erased
            await app[CALLS].end(tenant, call.id, now=now, reason="erased")
    pending = [recording.id for recording, _ in entries if recording.deleted_at is None]
    receipt_id = f"erasure_{secrets.token_hex(12)}"
    await catalog.retention.request_deletion(
        tenant,
        pending,
        "erasure",
        now,
        audit=[
            AuditEntry(
                actor=principal.actor,
                action="erasure.requested",
                object=receipt_id,
                detail={"scope": scope_name, "recordings": len(pending)},
            )
        ],
    )
    report = await app[SWEEPER].erase(tenant, pending, now)
    done = app[CLOCK].now()
    return {
        "id": receipt_id,
        "tenant": tenant,
        "scope": scope_name,
        "requested_at": iso(now),
        "completed_at": iso(done),
        "recordings": pending,
        "already_deleted": [r.id for r, _ in entries if r.deleted_at is not None],
        "recordings_erased": report.recordings_deleted,
        "objects_shredded": report.objects_deleted,
        "bytes_deleted": report.bytes_deleted,
        "call_records": "kept without content until the call_records retention window ends",
    }


async def erase_recording(request: web.Request) -> web.Response:
    """Erase the recording's audio, transcript and analysis (a live call is ended first)
    and return the receipt; the call record stays, without content, until its
    `call_records` window ends. Erasing a deleted recording answers a receipt that lists it
    in `already_deleted`. Refused whole with 409 `legal_hold` while a legal hold covers the
    call."""
    principal, tenant, entry = await principal_of(request), request[TENANT], found(request)
    receipt = await _erase(request, principal, tenant, [entry], scope_name="recording")
    return web.json_response(receipt)


async def request_erasure(request: web.Request) -> web.Response:
    """Erase the audio, transcript and analysis of every recording where the number is a
    party (live calls are ended first) and return the receipt; the call records stay,
    without content, until their `call_records` window ends. Refused whole with 409
    `legal_hold` when a legal hold covers the number or any of those calls."""
    principal, tenant = await principal_of(request), request[TENANT]
    number = body_of(request, ErasureRequest).number
    catalog = request.app[SERVICES].catalog
    await catalog.tenants.get(tenant)
    entries = await _entries_of_number(catalog, tenant, number)
    receipt = await _erase(request, principal, tenant, entries, scope_name="number", number=number)
    return web.json_response(receipt)


async def _entries_of_number(
    catalog: Catalog, tenant: str, number: str
) -> list[tuple[Recording, Call]]:
    """Every recording of a call where ``number`` is a party, with its call, oldest call
    first (a page at a time; the receipt names every one)."""
    entries: list[tuple[Recording, Call]] = []
    after: RecordingKey | None = None
    while page := await catalog.recordings.of_number(tenant, number, after=after, limit=_PAGE):
        entries.extend(page)
        recording, call = page[-1]
        after = (call.started_at, call.id, recording.id)
    return entries

"""Legal holds and data subjects' rights: erasure (of one recording, or of every call where
a number is a party) and export by number (Art. 20 portability).

An erasure is refused whole (409 naming the hold) when a legal hold covers any of its calls.
Otherwise it is recorded first (the recordings read as deleted at once, and a sweep finishes
an erasure a crash interrupted), then carried out by the retention sweeper's own deletion
steps (shred the DEKs, delete the bytes, mark the rows, write the receipts), and answered
with a receipt. The call records stay until their ``call_records`` window ends (they are
the operator's billing data), content-free.

The export is a ZIP streamed as it is built: nothing decrypted is written anywhere but the
response, each audio object is verified segment by segment as it is sent, and every read is
audited before the first byte.
"""

from __future__ import annotations

import logging
import secrets
import zipfile
from collections.abc import Mapping, Sequence
from datetime import datetime
from io import RawIOBase
from typing import Any

import orjson
from aiohttp import web

from ai.worker import ANALYSIS_KIND, TRANSCRIPT_KIND
from crypto.errors import CallvaultError, KeyUnavailable
from gateway.api.calls import call_view
from gateway.api.common import TENANT, body_of, found, iso, principal_of
from gateway.api.recordings import Lifecycle, open_wav, recording_view
from gateway.api.rightsmodels import ErasureRequest, LegalHoldCreate
from gateway.auth import Principal
from gateway.errors import BadRequest
from gateway.state import CALLS, CLOCK, SERVICES, SWEEPER
from storage.catalog import AuditEntry, Call, Catalog, LegalHold, Recording
from storage.errors import HeldByLegalHold
from storage.instructions import normalize_number
from storage.media.tracks import AUDIO_KIND
from storage.retention import Holds

log = logging.getLogger(__name__)

_PAGE = 500
"""Recordings read per catalog query when a number's recordings are gathered."""

EXPORT_ENTRIES: dict[str, Any] = {
    "manifest.json": {"schema": {"$ref": "#/components/schemas/ExportManifest"}},
    "calls.json": {
        "schema": {"type": "array", "items": {"$ref": "#/components/schemas/Call"}},
        "description": "Every call record where the number is a party, refused calls included.",
    },
    "recordings/{recording_id}/recording.json": {
        "schema": {"$ref": "#/components/schemas/Recording"}
    },
    "recordings/{recording_id}/transcript.json": {
        "schema": {"$ref": "#/components/schemas/Transcript"},
        "description": "Where one is stored.",
    },
    "recordings/{recording_id}/analysis.json": {
        "schema": {"$ref": "#/components/schemas/Analysis"},
        "description": "Where one is stored.",
    },
    "recordings/{recording_id}/audio.wav": {
        "contentMediaType": "audio/wav",
        "description": "Where the audio can be exported: the WAV of "
        "`GET /v1/recordings/{recording_id}/audio`.",
    },
}
"""What ``export_number``'s ZIP holds, for the OpenAPI document (``x-zip-entries``: a
schema cannot say what a ZIP's entries are)."""


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


def _query_number(request: web.Request) -> str:
    if "number" not in request.query:
        raise BadRequest("number is required (?number=+40...).", code="bad_query")
    try:
        return normalize_number(request.query["number"])
    except ValueError:
        raise BadRequest("number is not a phone number.", code="bad_query") from None


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
    first (the recordings listing, read to its end)."""
    entries: list[tuple[Recording, Call]] = []
    after: tuple[datetime, str] | None = None
    while page := await catalog.recordings.list_entries(
        tenant, number=number, after=after, limit=_PAGE
    ):
        entries.extend(page)
        after = (page[-1][0].created_at, page[-1][0].id)
    entries.sort(key=lambda entry: (entry[1].started_at, entry[1].id))
    return entries


class _ZipSink(RawIOBase):
    """Where ``zipfile`` writes: a buffer the handler drains into the response after each
    write (unseekable, so entries carry data descriptors and nothing is rewritten)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._offset = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self._buffer += view
        self._offset += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self._offset

    def take(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


async def export_number(request: web.Request) -> web.StreamResponse:
    """``GET /v1/tenants/{t}/export?number=``: a ZIP of every call where the number is a
    party: ``calls.json`` (the call records), and per recording ``recording.json``,
    ``transcript.json``, ``analysis.json`` and ``audio.wav`` where they exist, plus
    ``manifest.json`` saying what is in it and why something is not."""
    principal, tenant = await principal_of(request), request[TENANT]
    number = _query_number(request)
    app = request.app
    services, now = app[SERVICES], app[CLOCK].now()
    catalog = services.catalog
    await catalog.tenants.get(tenant)
    calls = await catalog.calls.of_number(tenant, number)
    lifecycle = await Lifecycle.load(catalog, tenant)
    export_id = f"export_{secrets.token_hex(12)}"
    # Everything is opened (keys unwrapped, errors known) before the first byte is sent.
    files: list[tuple[str, Any]] = [("calls.json", [call_view(c) for c in calls])]
    manifest: dict[str, Any] = {"id": export_id, "tenant": tenant, "created_at": iso(now)}
    contents: list[dict[str, Any]] = []
    reads: list[AuditEntry] = []
    entries = await _entries_of_number(catalog, tenant, number)
    tracks = await catalog.objects.tracks(tenant, [r.id for r, _ in entries], kind=AUDIO_KIND)
    for recording, call in entries:
        folder = f"recordings/{recording.id}"
        files.append(
            (
                f"{folder}/recording.json",
                recording_view(recording, call, tracks[recording.id], lifecycle),
            )
        )
        item: dict[str, Any] = {"recording_id": recording.id, "call_id": call.id}
        committed = await catalog.objects.list(tenant, recording_id=recording.id, state="committed")
        for kind in (TRANSCRIPT_KIND, ANALYSIS_KIND):
            item[kind] = False
            stored = [o for o in committed if o.kind == kind]
            if not stored or recording.status == "deleted":  # an erasure not finished yet
                continue
            try:
                body = await services.vault.read_object(tenant, stored[-1].id)
            except KeyUnavailable:  # shredded by a deletion a crash interrupted
                continue
            files.append((f"{folder}/{kind}.json", orjson.loads(body)))
            reads.append(_read(principal, f"{kind}.read", recording.id, export_id))
            item[kind] = True
        try:
            wav = await open_wav(services, recording, call)
        except CallvaultError as e:
            item["audio"] = e.code  # recording_deleted, audio_purged, audio_deleted, ...
        else:
            files.append((f"{folder}/audio.wav", wav))
            reads.append(_read(principal, "audio.read", recording.id, export_id))
            item["audio"] = True
        contents.append(item)
    manifest.update(calls=len(calls), recordings=contents)
    export = AuditEntry(
        actor=principal.actor,
        action="export.created",
        object=export_id,
        detail={"calls": len(calls), "recordings": len(contents)},
    )
    await catalog.audit.append_many(tenant, [export, *reads], now)
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/zip",
            "Content-Disposition": f'attachment; filename="{export_id}.zip"',
            "Cache-Control": "no-store",
        }
    )
    await response.prepare(request)
    sink = _ZipSink()
    try:
        with zipfile.ZipFile(sink, "w") as archive:
            await _write_json(response, sink, archive, "manifest.json", manifest, now)
            for name, content in files:
                if isinstance(content, (dict, list)):
                    await _write_json(response, sink, archive, name, content, now)
                    continue
                info = zipfile.ZipInfo(name, date_time=_zip_time(now))
                info.compress_type = zipfile.ZIP_STORED
                with archive.open(info, "w", force_zip64=True) as entry:
                    async for block in content.body:
                        entry.write(block)
                        await response.write(sink.take())
        await response.write(sink.take())
    except CallvaultError as e:
        # The status line is sent; a truncated ZIP (no central directory) is the signal.
        log.error("export %s stopped: %s", export_id, e.code)
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response


def _read(principal: Principal, action: str, recording_id: str, export_id: str) -> AuditEntry:
    return AuditEntry(
        actor=principal.actor, action=action, object=recording_id, detail={"export": export_id}
    )


def _zip_time(now: datetime) -> tuple[int, int, int, int, int, int]:
    return (now.year, now.month, now.day, now.hour, now.minute, now.second)


async def _write_json(
    response: web.StreamResponse,
    sink: _ZipSink,
    archive: zipfile.ZipFile,
    name: str,
    content: Any,
    now: datetime,
) -> None:
    info = zipfile.ZipInfo(name, date_time=_zip_time(now))
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, orjson.dumps(content, option=orjson.OPT_INDENT_2))
    await response.write(sink.take())

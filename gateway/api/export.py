"""The data subject's export (GDPR Art. 20): a ZIP of every call where a number is a party,
produced recording by recording while it is sent.

Why recording by recording: one number (a company's main line) can be a party to every call
a tenant has, and an export must cost the node what one recording costs, not what all of
them do. The handler pages through the catalog (``_PAGE`` rows a query, keyset cursors) and,
for each recording, reads its transcript and analysis (small objects, verified whole),
audits those reads, and copies its audio into the ZIP as the WAV is rendered, segment by
segment (the WAV of ``GET /v1/recordings/{id}/audio``). Every write awaits the client
(aiohttp drains its buffer past 64 KiB), so a client that stops reading stalls its own
export, not the event loop nor the node's memory.

What the handler holds at a time: one page of rows and of opened (not read) objects, one
recording's transcript and analysis, one block of audio. What can only be written at the
end, the ZIP's central directory (a record per entry, which the format puts after the
entries) and the manifest's line per recording, goes to spool files (``_SPOOL_IN_MEMORY``,
then an unlinked temporary file: ids, sizes and checksums, never content), so nothing grows
with the number of calls. ``manifest.json`` is thus the ZIP's last entry: what it says of a
recording is known once the recording is written.

Nothing decrypted is written anywhere but the response. ``export.created`` and the first
recording's reads are audited before the first byte; the reads of each later batch (the
rest of a page) in one transaction before the batch's first byte, its objects opened (keys
unwrapped, so a shredded one is known and not audited) but not yet read. An export that
stops early may so have audited reads of up to a page it did not send, never the reverse.
The first recording is opened before the status line, so that a store or a key that fails
from the start is still an error status; a failure later ends the response early (a ZIP
without its central directory: nothing unverified was sent).
"""

from __future__ import annotations

import logging
import secrets
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import IO, Any

import orjson
from aiohttp import web

from ai.worker import ANALYSIS_KIND, TRANSCRIPT_KIND
from crypto.errors import CallvaultError, KeyUnavailable
from gateway.api.calls import call_view
from gateway.api.common import TENANT, iso, principal_of
from gateway.api.recordings import Lifecycle, Wav, open_wav, recording_view
from gateway.api.zipstream import ZipStream
from gateway.auth import Principal
from gateway.errors import BadRequest
from gateway.services import Services
from gateway.state import CLOCK, SERVICES
from storage.catalog import (
    AuditEntry,
    Call,
    NumberCalls,
    Recording,
    RecordingKey,
    StoredObject,
)
from storage.instructions import normalize_number
from storage.media.tracks import AUDIO_KIND

log = logging.getLogger(__name__)

_PAGE = 50
"""Call records, or recordings, read per catalog query: what the export holds of its rows
at a time."""

_SPOOL_IN_MEMORY = 64 * 1024
"""Bytes of the ZIP's central directory, and of the manifest's lines, kept in memory before
they go to a temporary file (ids, sizes and checksums, never content): about 140 recordings'
worth. Past that, what the export holds does not grow with the number of calls."""


EXPORT_ENTRIES: dict[str, Any] = {
    "calls.json": {
        "schema": {"type": "array", "items": {"$ref": "#/components/schemas/Call"}},
        "description": "Every call record where the number is a party, refused calls included; "
        "the first entry.",
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
    "manifest.json": {
        "schema": {"$ref": "#/components/schemas/ExportManifest"},
        "description": "The last entry: what it says of each recording is known once the "
        "recording is written.",
    },
}
"""What ``export_number``'s ZIP holds, in the order it holds it, for the OpenAPI document
(``x-zip-entries``: a schema cannot say what a ZIP's entries are)."""


def query_number(request: web.Request) -> str:
    """The ``?number=`` of the request, normalized; 400 ``bad_query`` without one."""
    if "number" not in request.query:
        raise BadRequest("number is required (?number=+40...).", code="bad_query")
    try:
        return normalize_number(request.query["number"])
    except ValueError:
        raise BadRequest("number is not a phone number.", code="bad_query") from None


@dataclass(frozen=True)
class _Opened:
    """One recording ready to be written: its objects opened (keys unwrapped, so that a
    shredded one is known) but not read, and the reads to audit before its bytes are sent."""

    folder: str
    view: dict[str, Any]
    """``recording.json``."""
    results: list[tuple[str, AsyncIterator[bytes]]]
    """``transcript.json`` and ``analysis.json`` where they are stored: (name, plaintext)."""
    wav: Wav | None
    item: dict[str, Any]
    """Its line in the manifest."""
    reads: list[AuditEntry]


class _Export:
    """One export's reads: the number's call records and recordings, a page at a time, up
    to the last call the export's count saw (calls announced meanwhile are not in it)."""

    def __init__(
        self,
        services: Services,
        principal: Principal,
        tenant: str,
        number: str,
        scope: NumberCalls,
        lifecycle: Lifecycle,
    ) -> None:
        self.id = f"export_{secrets.token_hex(12)}"
        self._services = services
        self._principal = principal
        self._tenant = tenant
        self._number = number
        self._scope = scope
        self._lifecycle = lifecycle

    async def calls(self) -> AsyncIterator[dict[str, Any]]:
        """The views of the number's call records, oldest first."""
        catalog, last = self._services.catalog, self._scope.last
        after = None
        while last is not None:
            page = await catalog.calls.of_number(
                self._tenant, self._number, after=after, through=last, limit=_PAGE
            )
            for call in page:
                yield call_view(call)
            if len(page) < _PAGE:
                return
            after = (page[-1].started_at, page[-1].id)

    async def batches(self) -> AsyncGenerator[list[_Opened], None]:
        """The number's recordings, oldest call first, opened a batch at a time so that a
        batch's reads are audited in one transaction: the first recording alone (the first
        byte goes out before a second one is opened), then the rest of each page."""
        catalog, last = self._services.catalog, self._scope.last
        after: RecordingKey | None = None
        first = True
        while last is not None:
            page = await catalog.recordings.of_number(
                self._tenant, self._number, after=after, through=last, limit=_PAGE
            )
            ids = [recording.id for recording, _ in page]
            tracks = await catalog.objects.tracks(self._tenant, ids, kind=AUDIO_KIND)
            objects = await catalog.objects.of_recordings(self._tenant, ids)
            batch = []
            for recording, call in page:
                batch.append(
                    await self._open(recording, call, tracks[recording.id], objects[recording.id])
                )
                if first:
                    yield batch
                    batch, first = [], False
            if batch:
                yield batch
            if len(page) < _PAGE:
                return
            recording, call = page[-1]
            after = (call.started_at, call.id, recording.id)

    async def _open(
        self, recording: Recording, call: Call, tracks: list[str], objects: list[StoredObject]
    ) -> _Opened:
        services = self._services
        view = recording_view(recording, call, tracks, self._lifecycle)
        item: dict[str, Any] = {"recording_id": recording.id, "call_id": call.id}
        results: list[tuple[str, AsyncIterator[bytes]]] = []
        reads: list[AuditEntry] = []
        for kind in (TRANSCRIPT_KIND, ANALYSIS_KIND):
            item[kind] = False
            stored = [o for o in objects if o.kind == kind and o.state == "committed"]
            if not stored or recording.status == "deleted":  # an erasure not finished yet
                continue
            try:  # verified whole before any of it is released
                stream = await services.vault.open_stored(stored[-1], verify_all=True)
            except KeyUnavailable:  # shredded by a deletion a crash interrupted
                continue
            results.append((f"{kind}.json", stream))
            reads.append(self._read(f"{kind}.read", recording.id))
            item[kind] = True
        wav: Wav | None = None
        try:
            wav = await open_wav(services, recording, call, objects)
        except CallvaultError as e:
            item["audio"] = e.code  # recording_deleted, audio_purged, audio_deleted, ...
        else:
            reads.append(self._read("audio.read", recording.id))
            item["audio"] = True
        return _Opened(f"recordings/{recording.id}", view, results, wav, item, reads)

    def created(self) -> AuditEntry:
        return AuditEntry(
            actor=self._principal.actor,
            action="export.created",
            object=self.id,
            detail={"calls": self._scope.calls, "recordings": self._scope.recordings},
        )

    def _read(self, action: str, recording_id: str) -> AuditEntry:
        return AuditEntry(
            actor=self._principal.actor,
            action=action,
            object=recording_id,
            detail={"export": self.id},
        )


async def export_number(request: web.Request) -> web.StreamResponse:
    """``GET /v1/tenants/{t}/export?number=``: a ZIP of every call where the number is a
    party: ``calls.json`` (the call records), per recording ``recording.json``,
    ``transcript.json``, ``analysis.json`` and ``audio.wav`` where they exist, and last
    ``manifest.json`` saying what is in it and why something is not."""
    principal, tenant = await principal_of(request), request[TENANT]
    number = query_number(request)
    app = request.app
    services, now = app[SERVICES], app[CLOCK].now()
    catalog = services.catalog
    await catalog.tenants.get(tenant)
    scope = await catalog.calls.count_of_number(tenant, number)
    lifecycle = await Lifecycle.load(catalog, tenant)
    export = _Export(services, principal, tenant, number, scope, lifecycle)
    async with aclosing(export.batches()) as batches:
        batch: list[_Opened] = await anext(batches, [])
        reads = [read for opened in batch for read in opened.reads]
        await catalog.audit.append_many(tenant, [export.created(), *reads], now)
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/zip",
                "Content-Disposition": f'attachment; filename="{export.id}.zip"',
                "Cache-Control": "no-store",
            }
        )
        await response.prepare(request)
        with (
            tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY) as directory,
            tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY) as lines,
        ):
            writer = _ZipWriter(ZipStream(directory, now), response)
            try:
                calls = await writer.json_array("calls.json", export.calls())
                while batch:
                    for opened in batch:
                        await writer.recording(opened)
                        lines.write(orjson.dumps(opened.item) + b"\n")
                    batch = await anext(batches, [])
                    reads = [read for opened in batch for read in opened.reads]
                    if reads:  # read now, not when the export began
                        await catalog.audit.append_many(tenant, reads, app[CLOCK].now())
                head: dict[str, Any] = {"id": export.id, "tenant": tenant}
                head.update(created_at=iso(now), calls=calls, recordings=[])
                manifest = orjson.dumps(head, option=orjson.OPT_INDENT_2)
                await writer.json_array("manifest.json", _read_lines(lines), member=manifest)
                await writer.finish()
            except CallvaultError as e:
                # The status line is sent; a truncated ZIP (no central directory) is the
                # signal.
                log.error("export %s stopped: %s", export.id, e.code)
                if request.transport is not None:
                    request.transport.close()
                return response
    await response.write_eof()
    return response


async def _read_lines(spool: IO[bytes]) -> AsyncIterator[Any]:
    """The manifest's lines, as the export spooled them (one JSON object a line)."""
    spool.seek(0)
    for line in spool:
        yield orjson.loads(line)


class _ZipWriter:
    """Writes entries and sends what they produce to the response as it comes, awaiting the
    client each time (aiohttp drains its buffer past 64 KiB)."""

    def __init__(self, stream: ZipStream, response: web.StreamResponse) -> None:
        self._zip = stream
        self._response = response

    async def _send(self, data: bytes) -> None:
        if data:
            await self._response.write(data)

    async def json(self, name: str, content: Any) -> None:
        await self._send(self._zip.begin(name, deflate=True))
        await self._send(self._zip.write(orjson.dumps(content, option=orjson.OPT_INDENT_2)))
        await self._send(self._zip.end())

    async def json_array(
        self, name: str, items: AsyncIterator[Any], *, member: bytes | None = None
    ) -> int:
        """Write the items as one JSON array, an item at a time, in the bytes that
        ``orjson.OPT_INDENT_2`` would give the whole document: alone, or as the last member
        of the JSON object ``member`` (``OPT_INDENT_2`` bytes ending in ``"key": []\n}``);
        returns how many items there were."""
        zip_, indent = self._zip, b"\n  " if member is None else b"\n    "
        head, tail = (b"", b"") if member is None else (member[: -len(b"[]\n}")], b"\n}")
        await self._send(zip_.begin(name, deflate=True) + zip_.write(head))
        count = 0
        async for item in items:
            dumped = orjson.dumps(item, option=orjson.OPT_INDENT_2)
            opening = b"," if count else b"["
            await self._send(zip_.write(opening + indent + dumped.replace(b"\n", indent)))
            count += 1
        closing = indent[:-2] + b"]" if count else b"[]"
        await self._send(zip_.write(closing + tail) + zip_.end())
        return count

    async def recording(self, opened: _Opened) -> None:
        folder = opened.folder
        await self.json(f"{folder}/recording.json", opened.view)
        for name, stream in opened.results:
            body = b"".join([chunk async for chunk in stream])
            await self.json(f"{folder}/{name}", orjson.loads(body))
        if opened.wav is None:
            return
        await self._send(self._zip.begin(f"{folder}/audio.wav", deflate=False))
        async with aclosing(opened.wav.body) as blocks:
            async for block in blocks:
                await self._send(self._zip.write(block))
        await self._send(self._zip.end())

    async def finish(self) -> None:
        """The central directory and the end records."""
        for block in self._zip.finish():
            await self._send(block)

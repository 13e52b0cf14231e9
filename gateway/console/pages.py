"""The tenant's pages: instructions, recordings, a recording, legal holds, erasure, export
and the audit log. Each asks the API (``gateway.api.dispatch``) as the session's user."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from aiohttp import web

from crypto.errors import CallvaultError
from gateway.api.dispatch import dispatch, dispatch_json
from gateway.console.charts import sentiment_timeline, talk_bars
from gateway.console.forms import (
    BOOLEANS,
    REDACTED,
    REDACTION_BOOLEANS,
    RETENTION,
    diff,
    document_of,
    field_of,
    form_values,
)
from gateway.console.sessions import ConsoleSession
from gateway.console.site import PREFIX, add_pages, form_of, render, see_other
from gateway.errors import BadRequest, Forbidden, http_status
from storage.errors import InvalidInstructions

PAGE_SIZE = "25"
AUDIT_PAGE = 100
AUDIT_SCAN_PAGES = 10
"""A filtered audit page reads at most this many pages of the log to fill itself."""
AUDIT_ACTIONS = (
    "instructions.updated",
    "call.refused",
    "call.ended",
    "recording.created",
    "audio.read",
    "transcript.read",
    "analysis.read",
    "transcript.original.read",
    "ai.purged",
    "audio.redacted",
    "recording.deleted",
    "data.deleted",
    "call_record.deleted",
    "hold.placed",
    "hold.released",
    "erasure.requested",
    "export.created",
    "keys.rotated",
    "keys.retired",
    "keys.destroyed",
    "token.created",
    "token.revoked",
    "token.break_glass",
    "tenant.created",
    "tenant.updated",
    "tenant.deleted",
    "audit.rekeyed",
)
"""Every action the gateway writes to a tenant's log (``tests/unit/test_console_pure.py``
finds each one in the code)."""


def tenant_of(session: ConsoleSession) -> str:
    tenant = session.principal.tenant
    if tenant is None:
        raise Forbidden("This page is a tenant's; the operator's pages are under Tenants.")
    return tenant


# --- instructions ------------------------------------------------------------------------


async def instructions(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    tenant = tenant_of(session)
    base = f"/v1/tenants/{tenant}/instructions"
    current = await dispatch_json(request, session.principal, "GET", base)
    return await _instructions_page(request, session, current, form_values(current), {})


async def _instructions_page(
    request: web.Request,
    session: ConsoleSession,
    current: dict[str, Any],
    values: dict[str, Any],
    errors: dict[str, str],
    *,
    status: int = 200,
    conflict: str | None = None,
) -> web.Response:
    tenant = tenant_of(session)
    history = await dispatch_json(
        request, session.principal, "GET", f"/v1/tenants/{tenant}/instructions/history"
    )
    context = {
        "current": current,
        "values": values,
        "errors": errors,
        "booleans": BOOLEANS,
        "redaction_booleans": REDACTION_BOOLEANS,
        "retention": RETENTION,
        "history": list(reversed(history["items"])),
        "saved": request.query.get("saved"),
        "conflict": conflict,
    }
    return render(request, "instructions.html", context, status=status, session=session)


async def save_instructions(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    tenant = tenant_of(session)
    form = {key: value for key, value in form_of(request).items() if isinstance(value, str)}
    path = f"/v1/tenants/{tenant}/instructions"
    current = await dispatch_json(request, session.principal, "GET", path)

    def kept() -> dict[str, Any]:
        """The posted form as it was typed, for the page that refuses it; a webhook secret
        typed in clear is not sent back into the page."""
        values = {**form_values(current), **form}
        for name, _ in (*BOOLEANS, *REDACTION_BOOLEANS):
            values[name] = name in form
        if form.get("webhook.secret") != REDACTED:
            values["webhook.secret"] = ""
        return values

    if form.get("base_version") != str(current["version"]):
        # Another admin stored a version since this form was drawn: saving it would undo
        # theirs without anyone seeing it.
        conflict = (
            f"version {current['version']} was stored since you opened this form (by "
            f"{current.get('created_by')}); your changes are below, on top of the version you "
            "opened: check them against the history and save again."
        )
        return await _instructions_page(
            request, session, current, kept(), {}, status=409, conflict=conflict
        )
    try:
        stored = await dispatch_json(
            request, session.principal, "PUT", path, body=document_of(form)
        )
    except InvalidInstructions as e:
        errors = {field_of(e.field): e.message}
        return await _instructions_page(request, session, current, kept(), errors, status=422)
    raise see_other(f"{PREFIX}/instructions?saved={stored['version']}#saved")


async def instructions_diff(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    tenant = tenant_of(session)
    history = await dispatch_json(
        request, session.principal, "GET", f"/v1/tenants/{tenant}/instructions/history"
    )
    versions = {item["version"]: item for item in history["items"]}
    try:
        version = int(request.query.get("version", ""))
    except ValueError:
        raise BadRequest("version must be a number of the history.") from None
    if version not in versions:
        raise BadRequest(f"Version {version} is not in the history.")
    older = versions.get(version - 1, {})
    context = {
        "version": versions[version],
        "previous": version - 1 if older else None,
        "changes": diff(older, versions[version]),
    }
    return render(request, "instructions_diff.html", context, session=session)


# --- recordings --------------------------------------------------------------------------


def _day(text: str, *, end: bool) -> str:
    """A date input (``YYYY-MM-DD``) as the API's timestamp: the day's start, or for
    ``until`` the next day's start (the day itself included)."""
    try:
        day = date.fromisoformat(text)
    except ValueError:
        return text  # the API names the query parameter in its 400
    return f"{day + timedelta(days=1) if end else day}T00:00:00Z"


async def recordings(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    tenant = tenant_of(session)
    filters = {name: request.query.get(name, "").strip() for name in ("number", "since", "until")}
    query = {name: value for name, value in filters.items() if value}
    for name in ("since", "until"):
        if name in query:
            query[name] = _day(query[name], end=name == "until")
    if cursor := request.query.get("cursor"):
        query["cursor"] = cursor
    query["limit"] = PAGE_SIZE
    error: str | None = None
    listing: dict[str, Any] = {"items": [], "next_cursor": None}
    try:
        listing = await dispatch_json(
            request, session.principal, "GET", f"/v1/tenants/{tenant}/recordings", query=query
        )
    except BadRequest as e:
        error = e.message
    context = {"filters": filters, "listing": listing, "error": error}
    return render(
        request, "recordings.html", context, status=400 if error else 200, session=session
    )


async def _result(
    request: web.Request, session: ConsoleSession, path: str
) -> tuple[Any, str | None]:
    """A transcript's or an analysis's document, or why there is none (not instructed,
    pending, failed, deleted)."""
    try:
        return await dispatch_json(request, session.principal, "GET", path), None
    except CallvaultError as e:
        return None, e.message


async def recording(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    recording_id = request.match_info["recording_id"]
    base = f"/v1/recordings/{recording_id}"
    found = await dispatch_json(request, session.principal, "GET", base)
    transcript, transcript_note = await _result(request, session, f"{base}/transcript")
    analysis, analysis_note = await _result(request, session, f"{base}/analysis")
    admin = session.principal.role == "admin"
    analysis = analysis or {}
    holds = []
    if admin:  # the holds that keep this recording (a processor may not read holds)
        for hold_id in found.get("legal_holds") or ():
            path = f"/v1/tenants/{found['tenant']}/legal-holds/{hold_id}"
            holds.append(await dispatch_json(request, session.principal, "GET", path))
    context = {
        "rec": found,
        "transcript": transcript,
        "transcript_note": transcript_note,
        "analysis": analysis,
        "analysis_note": analysis_note,
        "timeline": sentiment_timeline(analysis.get("sentiment")),
        "bars": talk_bars(analysis.get("talk_listen")),
        "playable": admin and audio_kept(found),
        "stored": audio_kept(found),
        "admin": admin,
        "holds": holds,
    }
    return render(request, "recording.html", context, session=session)


def audio_kept(found: dict[str, Any]) -> bool:
    """Whether the recording's audio can be exported (the API answers 403, 409 or 410
    otherwise): recorded (not AI only), ended, redacted if the instructions say so, neither
    purged nor deleted, and some track's
    audio still stored (``tracks`` lists those; audio past its window but under a legal hold,
    or not yet swept, is still there and still served)."""
    if found["status"] in ("recording", "deleted") or found.get("audio_purged"):
        return False
    if (found.get("decision") or {}).get("redact_audio") and found["status"] in (
        "processing",
        "failed",
    ):
        return False  # not redacted yet: the API answers 409
    if not (found.get("decision") or {}).get("store_recording"):
        return False
    return bool(found.get("tracks"))


async def audio(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    """The WAV export, as the API serves it to this user (admin only: a processor's 403)."""
    recording_id = request.match_info["recording_id"]
    return await dispatch(request, session.principal, "GET", f"/v1/recordings/{recording_id}/audio")


async def erase_recording(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    """GET: what erasing the recording removes, and a button; POST: erase it."""
    recording_id = request.match_info["recording_id"]
    base = f"/v1/recordings/{recording_id}"
    found = await dispatch_json(request, session.principal, "GET", base)
    context: dict[str, Any] = {"rec": found, "error": None, "receipt": None}
    status = 200
    if request.method == "POST":
        try:
            context["receipt"] = await dispatch_json(request, session.principal, "DELETE", base)
        except CallvaultError as e:
            context["error"], status = e.message, http_status(e)
    return render(request, "erase_recording.html", context, status=status, session=session)


# --- legal holds, erasure by number, export ------------------------------------------------


async def holds(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    tenant = tenant_of(session)
    path = f"/v1/tenants/{tenant}/legal-holds"
    # A recording's page links here with its call filled in (?call_id=).
    prefill = request.query.get("call_id", "")[:200]
    error, status, values = None, 200, {"number": "", "call_ids": prefill, "reason": ""}
    if request.method == "POST":
        form = form_of(request)
        values = {name: str(form.get(name, "")).strip() for name in values}
        body: dict[str, Any] = {"reason": values["reason"]}
        if values["number"]:
            body["number"] = values["number"]
        if values["call_ids"]:
            body["call_ids"] = values["call_ids"].replace(",", " ").split()
        try:
            await dispatch_json(request, session.principal, "POST", path, body=body)
        except CallvaultError as e:
            error, status = e.message, http_status(e)
        else:
            raise see_other(f"{PREFIX}/holds")
    listing = await dispatch_json(request, session.principal, "GET", path)
    context = {"holds": listing["items"], "error": error, "values": values}
    return render(request, "holds.html", context, status=status, session=session)


async def release_hold(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    tenant = tenant_of(session)
    hold_id = request.match_info["hold_id"]
    path = f"/v1/tenants/{tenant}/legal-holds/{hold_id}"
    await dispatch_json(request, session.principal, "DELETE", path)
    raise see_other(f"{PREFIX}/holds")


async def erasure(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    """GET with a number: the recordings an erasure would remove, and a button to confirm;
    POST: the erasure, and its receipt (or the hold that refuses it)."""
    tenant = tenant_of(session)
    source = form_of(request) if request.method == "POST" else request.query
    number = str(source.get("number", "")).strip()
    context: dict[str, Any] = {"number": number, "items": [], "more": False}
    context.update(error=None, receipt=None)
    status = 200
    if number:
        try:
            if request.method == "POST":
                context["receipt"] = await dispatch_json(
                    request,
                    session.principal,
                    "POST",
                    f"/v1/tenants/{tenant}/erasure-requests",
                    body={"number": number},
                )
            else:
                listing = await dispatch_json(
                    request,
                    session.principal,
                    "GET",
                    f"/v1/tenants/{tenant}/recordings",
                    query={"number": number, "limit": "200"},
                )
                context["items"] = listing["items"]
                context["more"] = listing["next_cursor"] is not None
        except CallvaultError as e:
            context["error"], status = e.message, http_status(e)
    return render(request, "erasure.html", context, status=status, session=session)


async def export(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    """The data subject's ZIP, streamed as the API streams it."""
    tenant = tenant_of(session)
    number = request.query.get("number", "").strip()
    if not number:
        raise BadRequest("Give the data subject's number to export.")
    return await dispatch(
        request, session.principal, "GET", f"/v1/tenants/{tenant}/export", query={"number": number}
    )


# --- audit -------------------------------------------------------------------------------


async def audit(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    tenant = tenant_of(session)
    base = f"/v1/tenants/{tenant}/audit"
    action = request.query.get("action", "").strip()
    try:
        since = max(0, int(request.query.get("since", "0")))
    except ValueError:
        raise BadRequest("since must be a sequence number.") from None
    # The whole chain is recomputed by a verification: once, on the log's first page.
    check = None
    if since == 0:
        check = await dispatch_json(request, session.principal, "GET", f"{base}/verify")
    events: list[dict[str, Any]] = []
    after, more = since, False
    for _ in range(AUDIT_SCAN_PAGES):
        query = {"since": str(after), "limit": str(AUDIT_PAGE)}
        batch = (await dispatch_json(request, session.principal, "GET", base, query=query))["items"]
        if not batch:
            more = False
            break
        for event in batch:
            after = event["seq"]
            if not action or event["action"] == action:
                events.append(event)
                if len(events) == AUDIT_PAGE:
                    break
        more = len(batch) == AUDIT_PAGE or len(events) == AUDIT_PAGE
        if len(events) == AUDIT_PAGE or not more:
            break
    context = {
        "check": check,
        "events": events,
        "action": action,
        "actions": AUDIT_ACTIONS,
        "since": since,
        "next_since": after if more else None,
    }
    return render(request, "audit.html", context, session=session)


def add_routes(app: web.Application) -> None:
    add_pages(
        app,
        [
            ("GET", "/instructions", instructions),
            ("POST", "/instructions", save_instructions),
            ("GET", "/instructions/diff", instructions_diff),
            ("GET", "/recordings", recordings),
            ("GET", "/recordings/{recording_id}", recording),
            ("GET", "/recordings/{recording_id}/audio", audio),
            ("GET", "/recordings/{recording_id}/erase", erase_recording),
            ("POST", "/recordings/{recording_id}/erase", erase_recording),
            ("GET", "/holds", holds),
            ("POST", "/holds", holds),
            ("POST", "/holds/{hold_id}/release", release_hold),
            ("GET", "/erasure", erasure),
            ("POST", "/erasure", erasure),
            ("GET", "/export", export),
            ("GET", "/audit", audit),
        ],
    )

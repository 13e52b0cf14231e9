"""The tenant's audit log over HTTP: its events, a page at a time, and a check of the chain.

Events hold ids and small metadata only (never audio, transcripts or secrets), each linked
to the one before by SHA-256 (``storage.catalog.auditchain``). Reading the log is not itself
audited: it changes nothing and would only add to what it reads.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.api.common import TENANT, iso, query_int
from gateway.state import SERVICES
from storage.catalog import AuditEvent

PAGE_MAX = 1000


def event_view(event: AuditEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "at": iso(event.at),
        "actor": event.actor,
        "action": event.action,
        "object": event.object,
        "detail": event.detail,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


async def list_audit(request: web.Request) -> web.Response:
    """Events after sequence number ``since`` (default 0: from the first), oldest first, at
    most ``limit``; ``next_since`` continues the listing (null at the end)."""
    tenant = request[TENANT]
    catalog = request.app[SERVICES].catalog
    since = query_int(request, "since", default=0, low=0, high=2**62)
    limit = query_int(request, "limit", default=100, low=1, high=PAGE_MAX)
    await catalog.tenants.get(tenant)
    events = await catalog.audit.list(tenant, since_seq=since, limit=limit + 1)
    page = events[:limit]
    more = len(events) > limit
    return web.json_response(
        {
            "items": [event_view(event) for event in page],
            "next_since": page[-1].seq if more else None,
        }
    )


async def verify_audit(request: web.Request) -> web.Response:
    """Recompute the chain: ``{"ok": true, "events": N}``, or ``ok`` false with the first
    sequence number that was altered, removed or moved (``broken_at``), also a removed tail
    (against the head kept on the tenant)."""
    tenant = request[TENANT]
    check = await request.app[SERVICES].catalog.audit.verify(tenant)
    body: dict[str, Any] = {"ok": check.ok, "events": check.count}
    if not check.ok:
        body["broken_at"] = check.broken_at
    return web.json_response(body)

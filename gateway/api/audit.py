"""The tenant's audit log over HTTP: its events, a page at a time, a check of the chain, its
signed checkpoints, and the public key that checks them.

Events hold ids and small metadata only (never audio, transcripts or secrets), each linked
to the one before by HMAC-SHA256 under the tenant's audit key
(``storage.catalog.auditchain``). Reading the log is not itself audited: it changes nothing
and would only add to what it reads; neither is making a checkpoint (it would move the head
it signs).
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from crypto.signing import ALGORITHM, CheckpointSigner
from gateway.api.common import TENANT, iso, query_int
from gateway.checkpoints import checkpoint_view
from gateway.state import CHECKPOINTER, CLOCK, SERVICES
from storage.catalog import AuditEvent
from storage.errors import Conflict

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
    audit = request.app[SERVICES].catalog.audit
    return await _page_since(request, audit.list, event_view)


async def verify_audit(request: web.Request) -> web.Response:
    """Recompute the chain under the tenant's audit key and check it against the latest
    signed checkpoint: `{"ok": true, "events": N}`, or `ok` false with the first sequence
    number that was altered, removed, moved or cut off (`broken_at`, absent when no event is
    to blame) and which check failed (`reason`: `chain`, `head`, `behind_checkpoint`,
    `checkpoint_mismatch`, `checkpoint_signature`, `not_keyed`). `checkpoint` is the latest
    checkpoint's sequence number, when there is one."""
    tenant = request[TENANT]
    check = await request.app[SERVICES].catalog.audit.verify(tenant)
    body: dict[str, Any] = {"ok": check.ok, "events": check.count}
    if check.broken_at is not None:
        body["broken_at"] = check.broken_at
    if check.reason is not None:
        body["reason"] = check.reason
    if check.checkpoint is not None:
        body["checkpoint"] = check.checkpoint
    return web.json_response(body)


async def list_checkpoints(request: web.Request) -> web.Response:
    """The gateway's signed checkpoints of the chain's head, oldest first: those after
    sequence number `since`, at most `limit`; `next_since` continues the listing. One is
    made every `CALLVAULT_AUDIT__CHECKPOINT_INTERVAL` when the head moved, and each is also
    sent to the tenant's webhook (`audit.checkpoint`): keep them, and a log cut back behind
    one is caught even if the checkpoint rows were deleted too."""
    checkpoints = request.app[SERVICES].catalog.checkpoints
    return await _page_since(request, checkpoints.list, checkpoint_view)


async def _page_since(
    request: web.Request,
    fetch: Callable[..., Awaitable[Sequence[Any]]],
    view: Callable[[Any], dict[str, Any]],
) -> web.Response:
    """One page of the tenant's rows after sequence number ``since``, read with ``fetch``
    (one more than ``limit``, to know whether another page follows) and shown with ``view``;
    ``next_since`` is the last row's ``seq``, or null at the end."""
    tenant = request[TENANT]
    since = query_int(request, "since", default=0, low=0, high=2**62)
    limit = query_int(request, "limit", default=100, low=1, high=PAGE_MAX)
    await request.app[SERVICES].catalog.tenants.get(tenant)
    found = await fetch(tenant, since_seq=since, limit=limit + 1)
    page = found[:limit]
    return web.json_response(
        {
            "items": [view(row) for row in page],
            "next_since": page[-1].seq if len(found) > limit else None,
        }
    )


async def make_checkpoint(request: web.Request) -> web.Response:
    """Sign the chain's head now: the new checkpoint, or the latest when the head has not
    moved since (it is sent to the webhook when new). 409 `audit_broken` when the latest
    checkpoint does not carry the gateway's signature or the events since it do not extend
    it: the gateway signs nothing it cannot vouch for, and hands out no row it did not
    sign."""
    tenant = request[TENANT]
    catalog = request.app[SERVICES].catalog
    await catalog.tenants.get(tenant)
    now = request.app[CLOCK].now()
    checkpoint = await request.app[CHECKPOINTER].make(tenant, now, current=True)
    if checkpoint is None:
        raise Conflict(f"The audit log of {tenant!r} is empty or not keyed yet; nothing to sign.")
    return web.json_response(checkpoint_view(checkpoint))


async def public_key(request: web.Request) -> web.Response:
    """The Ed25519 public key that checks every audit checkpoint's signature. It is public:
    anyone holding checkpoints (a tenant's webhook receiver, an auditor) checks them with
    it, without a token."""
    signer = await request.app[SERVICES].audit_keys.checkpoint_signer()
    return web.json_response(public_key_view(signer))


def public_key_view(signer: CheckpointSigner) -> dict[str, Any]:
    return {
        "algorithm": ALGORITHM,
        "key_id": signer.key_id,
        "public_key": base64.b64encode(signer.public_key).decode(),
        "public_key_pem": signer.public_key_pem,
    }

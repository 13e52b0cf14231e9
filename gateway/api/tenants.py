"""Tenants, their tokens, the operator's tokens and the tenants' documented instructions.

Every instructions PUT stores a new immutable version (who and when) and is audited, so the
version that allowed a call can always be shown later. Token secrets are in exactly one
answer, the 201 that mints them; the webhook secret of the instructions is in none (views
show `REDACTED`, and a PUT that sends `REDACTED` back keeps the current secret), and the
catalog holds it sealed under the tenant's keys (``storage.webhooksecret``). The rules of
minting (expiry, break-glass) are ``gateway.auth``'s; a tenant token's minting and
revocation are audited in the tenant's chain in the transaction that writes the token.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from gateway.api.common import TENANT, body_of, found, iso, principal_of
from gateway.api.models import OperatorTokenCreate, TenantCreate, TenantUpdate, TokenCreate
from gateway.auth import MAX_LIFETIME, mint_tenant_token, mint_token, token_expiry
from gateway.egress import check_webhook_url
from gateway.errors import BadRequest
from gateway.state import CALLS, CLOCK, SERVICES, SETTINGS, SWEEPER
from storage.catalog import AuditEntry, Catalog, Instructions, Tenant, TenantLimits, Token
from storage.errors import HeldByLegalHold, NotFound
from storage.instructions import (
    REDACTED,
    InstructionsDoc,
    default_instructions,
    parse_stored_instructions,
)
from storage.webhooksecret import store_instructions

log = logging.getLogger(__name__)


def tenant_view(tenant: Tenant, defaults: TenantLimits) -> dict[str, Any]:
    """The tenant as the API shows it, with the limits in force (its overrides of
    ``defaults``)."""
    return {
        "id": tenant.id,
        "name": tenant.name,
        "region": tenant.region,
        "created_at": iso(tenant.created_at),
        "limits": defaults.merged(tenant.limits).document(),
    }


def _defaults(request: web.Request) -> TenantLimits:
    return request.app[SETTINGS].limits.defaults()


def token_view(token: Token) -> dict[str, Any]:
    return {
        "id": token.id,
        "role": token.role,
        "tenant": token.tenant_id,
        "created_at": iso(token.created_at),
        "created_by": token.created_by,
        "revoked_at": iso(token.revoked_at),
        "expires_at": iso(token.expires_at),
        "break_glass": token.break_glass,
    }


def instructions_view(row: Instructions | None) -> dict[str, Any]:
    """One version as the API shows it: with its metadata, the webhook secret redacted."""
    if row is None:
        return {
            "version": 0,
            "created_at": None,
            "created_by": None,
            **default_instructions().document(),
        }
    document = parse_stored_instructions(row.document).document()
    webhook = document["webhook"]
    if webhook["secret"] is not None:
        # Write-only, like a password field: whoever can read the instructions (an operator
        # too) must not be able to forge the tenant's webhook signatures.
        document["webhook"] = {**webhook, "secret": REDACTED}
    return {
        "version": row.version,
        "created_at": iso(row.created_at),
        "created_by": row.created_by,
        **document,
    }


async def create_tenant(request: web.Request) -> web.Response:
    """Create a tenant. Its id can never be used again, even after the tenant is deleted."""
    body = body_of(request, TenantCreate)
    services, now = request.app[SERVICES], request.app[CLOCK].now()
    actor = (await principal_of(request)).actor
    limits = {
        name: value
        for name, value in (body.limits.overrides() if body.limits else {}).items()
        if value is not None
    }
    tenant = await services.catalog.tenants.create(
        body.id,
        name=body.name,
        region=body.region,
        now=now,
        limits=limits,
        audit=AuditEntry(
            actor=actor,
            action="tenant.created",
            object=body.id,
            detail={"limits": limits} if limits else {},
        ),
    )
    return web.json_response(tenant_view(tenant, _defaults(request)), status=201)


async def update_tenant(request: web.Request) -> web.Response:
    """Rename the tenant or change its limits (operator): what the body names changes, the
    rest stays; a limit set to null goes back to its default. The new limits hold from the
    next call on, on every node (live calls over a lowered limit go on). Audited as
    `tenant.updated` with what changed. A body that names nothing to change (`{}`,
    `{"limits": {}}`) is refused 400 `bad_request`, and nothing is audited."""
    body = body_of(request, TenantUpdate)
    services, now = request.app[SERVICES], request.app[CLOCK].now()
    actor = (await principal_of(request)).actor
    tenant = request[TENANT]
    limits = body.limits.overrides() if body.limits is not None else None
    if body.name is None and not limits:
        raise BadRequest("The body names nothing to change: give name or limits.")
    detail: dict[str, Any] = {}
    if body.name is not None:
        detail["name"] = body.name
    if limits is not None:
        detail["limits"] = limits
    updated = await services.catalog.tenants.update(
        tenant,
        name=body.name,
        limits=limits,
        now=now,
        audit=AuditEntry(actor=actor, action="tenant.updated", object=tenant, detail=detail),
    )
    return web.json_response(tenant_view(updated, _defaults(request)))


async def list_tenants(request: web.Request) -> web.Response:
    """Every tenant that is not deleted."""
    tenants = await request.app[SERVICES].catalog.tenants.list()
    defaults = _defaults(request)
    return web.json_response({"items": [tenant_view(t, defaults) for t in tenants]})


async def get_tenant(request: web.Request) -> web.Response:
    """The tenant, with its limits in force."""
    tenant = await request.app[SERVICES].catalog.tenants.get(request[TENANT])
    return web.json_response(tenant_view(tenant, _defaults(request)))


async def delete_tenant(request: web.Request) -> web.Response:
    """Erase everything of the tenant: live calls end, its tokens stop working, its keys
    (KEKs) are destroyed first (so every object is unreadable from that moment, backups
    included), then every object, recording and call record is deleted. Refused with 409
    `legal_hold` while any legal hold of the tenant is active. The audit log stays, with
    `keys.destroyed`, a `recording.deleted` (reason `tenant`) per recording, a
    `call_record.deleted` per call record and a final `tenant.deleted`."""
    # The order: live calls end, the KEKs go (every DEK, and with it every object, is
    # unreadable from then on), the tenant is marked deleted, then the sweeper's deletion
    # steps remove every object, recording, call record, hold and instructions version. A
    # crash before the mark is finished by repeating the request; one after it by the next
    # sweep, which treats a deleted tenant's leftovers as due.
    principal, tenant = await principal_of(request), request[TENANT]
    app = request.app
    services, now = app[SERVICES], app[CLOCK].now()
    catalog = services.catalog
    await catalog.tenants.get(tenant)
    active = await catalog.holds.list(tenant, active_only=True)
    if active:
        raise HeldByLegalHold(
            active[0].id,
            f"Tenant {tenant!r} has {len(active)} active legal hold(s), the first "
            f"{active[0].id!r}; its admin must release them before the tenant is deleted.",
        )
    await app[CALLS].end_tenant(tenant, now=now)
    await services.keys.destroy_tenant(tenant)
    await catalog.audit.append(
        tenant, actor=principal.actor, action="keys.destroyed", object=tenant, detail={}, now=now
    )
    marked = await catalog.tenants.mark_deleted(tenant, now)
    report = await app[SWEEPER].sweep_tenant(marked, now)
    await catalog.audit.append(
        tenant,
        actor=principal.actor,
        action="tenant.deleted",
        object=tenant,
        detail={
            "recordings": report.recordings_deleted,
            "objects": report.objects_deleted,
            "call_records": report.call_records_deleted,
        },
        now=now,
    )
    return web.json_response(
        {
            "tenant": tenant,
            "deleted_at": iso(marked.deleted_at),
            "keys_destroyed": True,
            "recordings_deleted": report.recordings_deleted,
            "objects_shredded": report.objects_deleted,
            "bytes_deleted": report.bytes_deleted,
            "call_records_deleted": report.call_records_deleted,
        }
    )


async def create_token(request: web.Request) -> web.Response:
    """Mint a token of the tenant; its secret is in this answer only. Audited as
    `token.created` (role, expiry). The operator may mint the tenant's first admin token and
    any pbx token; once the tenant has had an admin token (revoked and expired ones count),
    an operator's admin or processor token needs `break_glass` (403 `break_glass_required`
    without it): such a token is audited as `token.break_glass`, sent to the tenant's
    webhook (event `token.break_glass`), expires within `PT1H` (its default; a longer
    `expires_in` is 400) and mints no token (403 `forbidden`)."""
    principal, tenant = await principal_of(request), request[TENANT]
    body = body_of(request, TokenCreate)
    app = request.app
    services, now = app[SERVICES], app[CLOCK].now()
    await services.catalog.tenants.get(tenant)
    minted = await mint_tenant_token(
        services.catalog,
        actor=principal.actor,
        by_operator=principal.role == "operator",
        by_break_glass=principal.break_glass,
        tenant=tenant,
        role=body.role,
        now=now,
        expires_in=body.expires_in,
        break_glass=None if body.break_glass is None else body.break_glass.reason,
        webhook_attempts=app[SETTINGS].webhooks.max_attempts,
    )
    return web.json_response({**token_view(minted.record), "token": minted.secret}, status=201)


async def list_tokens(request: web.Request) -> web.Response:
    """The tenant's tokens, revoked and expired ones included (never secrets)."""
    tenant, catalog = await _existing_tenant(request)
    tokens = await catalog.tokens.list(tenant)
    return web.json_response({"items": [token_view(t) for t in tokens]})


async def find_token(catalog: Catalog, tenant: str, path: Mapping[str, str]) -> str:
    """The path's token id, once the tenant exists and has that token."""
    token_id = path["token_id"]
    await catalog.tenants.get(tenant)
    if not any(token.id == token_id for token in await catalog.tokens.list(tenant)):
        raise NotFound(f"Token {token_id!r} not found.")
    return token_id


async def revoke_token(request: web.Request) -> web.Response:
    """Revoke the token: it is refused from the next request on, on every node. Audited as
    `token.revoked`; repeating it keeps the first revocation time (and audits nothing)."""
    principal, tenant, token_id = await principal_of(request), request[TENANT], found(request)
    services, now = request.app[SERVICES], request.app[CLOCK].now()
    token = await services.catalog.tokens.revoke(tenant, token_id, now, actor=principal.actor)
    return web.json_response(token_view(token))


async def list_operator_tokens(request: web.Request) -> web.Response:
    """The operator tokens, revoked and expired ones included (never secrets)."""
    tokens = await request.app[SERVICES].catalog.tokens.list(None)
    return web.json_response({"items": [token_view(t) for t in tokens]})


async def create_operator_token(request: web.Request) -> web.Response:
    """Mint an operator token; its secret is in this answer only."""
    principal = await principal_of(request)
    body = body_of(request, OperatorTokenCreate)
    services, now = request.app[SERVICES], request.app[CLOCK].now()
    minted = await mint_token(
        services.catalog,
        tenant=None,
        role="operator",
        created_by=principal.actor,
        now=now,
        expires_at=token_expiry(body.expires_in, now, longest=MAX_LIFETIME),
    )
    return web.json_response({**token_view(minted.record), "token": minted.secret}, status=201)


async def revoke_operator_token(request: web.Request) -> web.Response:
    """Revoke an operator token (the caller's own too): it is refused from the next request
    on, on every node; repeating it keeps the first revocation time. A tenant's token id is
    404 here. Revoking the last operator token is allowed: `callvault serve`, started
    again without `CALLVAULT_OPERATOR_TOKEN`, then mints and prints a new one as on its
    first start."""
    services, now = request.app[SERVICES], request.app[CLOCK].now()
    token_id = request.match_info["token_id"]
    token = await services.catalog.tokens.revoke(None, token_id, now)
    log.info("operator token %s revoked by %s", token.id, (await principal_of(request)).actor)
    return web.json_response(token_view(token))


async def _existing_tenant(request: web.Request) -> tuple[str, Catalog]:
    """The path's tenant once it exists (a deleted tenant is 404 too), with the catalog to
    read it from."""
    tenant = request[TENANT]
    catalog = request.app[SERVICES].catalog
    await catalog.tenants.get(tenant)
    return tenant, catalog


async def get_instructions(request: web.Request) -> web.Response:
    """The current version; version 0 (the defaults, which refuse every call) when none was
    ever stored."""
    tenant, catalog = await _existing_tenant(request)
    return web.json_response(instructions_view(await catalog.instructions.latest(tenant)))


async def put_instructions(request: web.Request) -> web.Response:
    """Store a new immutable version of the whole document (an omitted field takes its
    default) and return it. Audited as `instructions.updated`."""
    principal, tenant = await principal_of(request), request[TENANT]
    services, now = request.app[SERVICES], request.app[CLOCK].now()
    document = body_of(request, InstructionsDoc)
    if document.webhook.url is not None:
        # What this gateway may send to (https only, no private address literal) is the
        # operator's setting, which the document's own validation cannot see.
        check_webhook_url(document.webhook.url, request.app[SETTINGS].webhooks)
    row = await store_instructions(
        services.catalog,
        services.keys,
        tenant,
        document,
        created_by=principal.token_id,
        now=now,
    )
    await services.catalog.audit.append(
        tenant,
        actor=principal.actor,
        action="instructions.updated",
        object=f"instructions:{row.version}",
        # The version only: the document (and its webhook secret) stays out of the audit log,
        # which operators and exports read; the version row says what changed.
        detail={"version": row.version},
        now=now,
    )
    return web.json_response(instructions_view(row))


async def instructions_history(request: web.Request) -> web.Response:
    """Every stored version, so the one that allowed a call can be shown."""
    tenant, catalog = await _existing_tenant(request)
    rows = await catalog.instructions.history(tenant)
    return web.json_response({"items": [instructions_view(row) for row in rows]})

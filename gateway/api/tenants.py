"""Tenants, their tokens and their documented instructions.

Every instructions PUT stores a new immutable version (who and when) and is audited, so the
version that allowed a call can always be shown later. Token secrets are in exactly one
answer, the 201 that mints them; the webhook secret of the instructions is in none (views
show `REDACTED`, and a PUT that sends `REDACTED` back keeps the current secret).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

from aiohttp import web

from crypto.errors import BadRequest, HeldByLegalHold, InvalidInstructions, NotFound
from gateway.api.common import iso, json_body, principal_of
from gateway.auth import ANY_ROLE, mint_token, require_role, scope
from gateway.state import CALLS, CLOCK, SERVICES, SWEEPER
from storage.catalog import AuditEntry, Catalog, Instructions, Role, Tenant, Token
from storage.instructions import REDACTED, default_instructions, parse_instructions

TENANT_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
TENANT_ROLES: frozenset[Role] = frozenset({"admin", "pbx", "processor"})
"""The roles a tenant token can have; operator tokens are minted with the CLI."""


def tenant_view(tenant: Tenant) -> dict[str, Any]:
    return {
        "id": tenant.id,
        "name": tenant.name,
        "region": tenant.region,
        "created_at": iso(tenant.created_at),
    }


def token_view(token: Token) -> dict[str, Any]:
    return {
        "id": token.id,
        "role": token.role,
        "tenant": token.tenant_id,
        "created_at": iso(token.created_at),
        "created_by": token.created_by,
        "revoked_at": iso(token.revoked_at),
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
    document = parse_instructions(row.document).document()
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


async def _keep_webhook_secret(catalog: Catalog, tenant: str, body: object) -> object:
    """``body`` with a `REDACTED` webhook secret replaced by the current version's secret, so
    that a client can PUT back what GET gave it without knowing (or re-sending) the secret.

    `InvalidInstructions` on ``webhook.secret`` when there is no current secret to keep. Any
    other body is returned as is, for `parse_instructions` to judge."""
    if not isinstance(body, dict):
        return body
    webhook = body.get("webhook")
    if not isinstance(webhook, dict) or webhook.get("secret") != REDACTED:
        return body
    secret = (await catalog.instructions.current(tenant)).document.webhook.secret
    if secret is None:
        raise InvalidInstructions(
            "webhook.secret",
            f"is {REDACTED!r}, which keeps the current secret, but none is set; send the secret",
        )
    return {**body, "webhook": {**webhook, "secret": secret}}


def _text(body: dict[str, Any], name: str, *, default: str | None = None, limit: int) -> str:
    value = body.get(name, default)
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise BadRequest(f"{name} must be a non-empty string of at most {limit} characters.")
    return value.strip()


async def create_tenant(request: web.Request) -> web.Response:
    require_role(await principal_of(request), {"operator"})
    body = await json_body(request)
    if not isinstance(body, dict):
        raise BadRequest("The body must be a JSON object.")
    unknown = sorted(set(body) - {"id", "name", "region"})
    if unknown:
        raise BadRequest(f"{unknown[0]} is not a tenant field.")
    tenant_id = body.get("id")
    if not isinstance(tenant_id, str) or not TENANT_ID.match(tenant_id):
        raise BadRequest("id must be 2-63 lowercase letters, digits or dashes.")
    services, now = request.app[SERVICES], request.app[CLOCK].now()
    actor = (await principal_of(request)).actor
    tenant = await services.catalog.tenants.create(
        tenant_id,
        name=_text(body, "name", limit=200),
        region=_text(body, "region", default="eu", limit=32),
        now=now,
        audit=AuditEntry(actor=actor, action="tenant.created", object=tenant_id, detail={}),
    )
    return web.json_response(tenant_view(tenant), status=201)


async def list_tenants(request: web.Request) -> web.Response:
    require_role(await principal_of(request), {"operator"})
    tenants = await request.app[SERVICES].catalog.tenants.list()
    return web.json_response({"items": [tenant_view(t) for t in tenants]})


async def get_tenant(request: web.Request) -> web.Response:
    tenant = scope(await principal_of(request), request.match_info["tenant"], {"operator", "admin"})
    return web.json_response(tenant_view(await request.app[SERVICES].catalog.tenants.get(tenant)))


async def delete_tenant(request: web.Request) -> web.Response:
    """Erase everything of the tenant. Refused (409 naming the hold) while a legal hold is
    active. Otherwise its live calls end, its KEKs are destroyed first (so every DEK, and
    with it every object, is unreadable from that moment, backups included), it is marked
    deleted (its tokens stop working), then the sweeper's deletion steps remove every
    object, recording, call record, hold and instructions version (``recording.deleted``
    with reason ``tenant``, ``call_record.deleted``). A crash before the mark is finished
    by repeating the request; one after it by the next sweep, which treats a deleted
    tenant's leftovers as due. The audit log stays."""
    principal = await principal_of(request)
    tenant = scope(principal, request.match_info["tenant"], {"operator"})
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
    principal = await principal_of(request)
    tenant = scope(principal, request.match_info["tenant"], {"operator", "admin"})
    body = await json_body(request)
    role = body.get("role") if isinstance(body, dict) else None
    if role not in TENANT_ROLES:
        raise BadRequest("role must be one of admin, pbx, processor.", code="bad_role")
    services, now = request.app[SERVICES], request.app[CLOCK].now()
    await services.catalog.tenants.get(tenant)
    minted = await mint_token(
        services.catalog, tenant=tenant, role=role, created_by=principal.actor, now=now
    )
    await services.catalog.audit.append(
        tenant,
        actor=principal.actor,
        action="token.created",
        object=minted.record.id,
        detail={"role": role},
        now=now,
    )
    return web.json_response({**token_view(minted.record), "token": minted.secret}, status=201)


async def list_tokens(request: web.Request) -> web.Response:
    tenant, catalog = await _existing_tenant(request, {"operator", "admin"})
    tokens = await catalog.tokens.list(tenant)
    return web.json_response({"items": [token_view(t) for t in tokens]})


async def revoke_token(request: web.Request) -> web.Response:
    principal = await principal_of(request)
    tenant = scope(principal, request.match_info["tenant"], ANY_ROLE)
    token_id = request.match_info["token_id"]
    services, now = request.app[SERVICES], request.app[CLOCK].now()
    await services.catalog.tenants.get(tenant)
    if not any(token.id == token_id for token in await services.catalog.tokens.list(tenant)):
        raise NotFound(f"Token {token_id!r} not found.")
    require_role(principal, {"operator", "admin"})
    token = await services.catalog.tokens.revoke(tenant, token_id, now)
    await services.catalog.audit.append(
        tenant,
        actor=principal.actor,
        action="token.revoked",
        object=token.id,
        detail={"role": token.role},
        now=now,
    )
    return web.json_response(token_view(token))


async def _existing_tenant(request: web.Request, roles: Collection[Role]) -> tuple[str, Catalog]:
    """The path's tenant, once the caller may act on it with ``roles`` and it exists (a
    deleted tenant is 404 too), with the catalog to read it from."""
    tenant = scope(await principal_of(request), request.match_info["tenant"], roles)
    catalog = request.app[SERVICES].catalog
    await catalog.tenants.get(tenant)
    return tenant, catalog


async def get_instructions(request: web.Request) -> web.Response:
    tenant, catalog = await _existing_tenant(request, {"operator", "admin"})
    return web.json_response(instructions_view(await catalog.instructions.latest(tenant)))


async def put_instructions(request: web.Request) -> web.Response:
    """Store a new version: the whole document, omitted fields at their defaults."""
    principal = await principal_of(request)
    tenant = scope(principal, request.match_info["tenant"], {"admin"})
    services, now = request.app[SERVICES], request.app[CLOCK].now()
    body = await _keep_webhook_secret(services.catalog, tenant, await json_body(request))
    document = parse_instructions(body).document()
    row = await services.catalog.instructions.add(
        tenant, document, created_by=principal.token_id, now=now
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
    tenant, catalog = await _existing_tenant(request, {"operator", "admin"})
    rows = await catalog.instructions.history(tenant)
    return web.json_response({"items": [instructions_view(row) for row in rows]})

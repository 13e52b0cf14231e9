"""Tenants and tokens: the operator's pages, and a tenant admin's tokens page.

The tenant's tokens page is one page for both: the API's path names the tenant, so an
admin reaches only its own (another tenant's is 404, as in the API) and the operator any.
A minted token's secret is shown once, on the answer to the form that minted it, and never
again (it is in no URL and no redirect).
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from crypto.errors import CallvaultError
from gateway.api.dispatch import dispatch_json
from gateway.console.sessions import ConsoleSession
from gateway.console.site import PREFIX, add_pages, form_of, render, see_other
from gateway.errors import http_status

LIMITS = ("live_calls", "rtp_calls", "announces_per_minute")
NUMBER = re.compile(r"[0-9]{1,9}", re.ASCII)
ROLES = ("admin", "processor", "pbx")


def _limits(form: Any) -> dict[str, Any] | None:
    """The limits the form sets (blank: the gateway's default); a value that is not a
    number is handed on for the API to refuse by name."""
    limits: dict[str, Any] = {}
    for name in LIMITS:
        text = str(form.get(f"limits.{name}", "")).strip()
        if text:
            limits[name] = int(text) if NUMBER.fullmatch(text) else text
    return limits or None


async def tenants(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    error, status = None, 200
    values = {name: "" for name in ("id", "name", "region")}
    if request.method == "POST":
        form = form_of(request)
        values = {name: str(form.get(name, "")).strip() for name in values}
        body: dict[str, Any] = {k: v for k, v in values.items() if v}
        if (limits := _limits(form)) is not None:
            body["limits"] = limits
        try:
            created = await dispatch_json(
                request, session.principal, "POST", "/v1/tenants", body=body
            )
        except CallvaultError as e:
            error, status = e.message, http_status(e)
        else:
            raise see_other(f"{PREFIX}/tenants/{created['id']}")
    listing = await dispatch_json(request, session.principal, "GET", "/v1/tenants")
    context = {"tenants": listing["items"], "error": error, "values": values, "limits": LIMITS}
    return render(request, "tenants.html", context, status=status, session=session)


async def tenant(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    tenant_id = request.match_info["tenant"]
    found = await dispatch_json(request, session.principal, "GET", f"/v1/tenants/{tenant_id}")
    context = {"tenant": found, "receipt": None, "error": None, "limits": LIMITS}
    return render(request, "tenant.html", context, session=session)


async def delete_tenant(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    """GET: what deleting the tenant erases, and a confirmation that asks for its id;
    POST: the erasure, when the id typed matches."""
    tenant_id = request.match_info["tenant"]
    path = f"/v1/tenants/{tenant_id}"
    found = await dispatch_json(request, session.principal, "GET", path)
    context: dict[str, Any] = {"tenant": found, "receipt": None, "error": None}
    status = 200
    if request.method == "POST":
        if form_of(request).get("confirm", "").strip() != tenant_id:
            context["error"], status = "Type the tenant's id to confirm.", 400
        else:
            try:
                context["receipt"] = await dispatch_json(request, session.principal, "DELETE", path)
            except CallvaultError as e:
                context["error"], status = e.message, http_status(e)
    return render(request, "delete_tenant.html", context, status=status, session=session)


async def tokens(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    """A tenant's tokens (``/console/tenants/{tenant}/tokens``) or, without a tenant in the
    path, the operator's own: listed, minted (the secret shown once) and revoked."""
    tenant_id = request.match_info.get("tenant")
    base = f"/v1/tenants/{tenant_id}/tokens" if tenant_id else "/v1/operator/tokens"
    here = f"{PREFIX}/tenants/{tenant_id}/tokens" if tenant_id else f"{PREFIX}/operator/tokens"
    minted, error, status = None, None, 200
    if request.method == "POST":
        form = form_of(request)
        body: dict[str, Any] = {}
        if tenant_id:
            body["role"] = str(form.get("role", ""))
        if expires := str(form.get("expires_in", "")).strip():
            body["expires_in"] = expires
        if reason := str(form.get("break_glass", "")).strip():
            body["break_glass"] = {"reason": reason}
        try:
            minted = await dispatch_json(request, session.principal, "POST", base, body=body)
        except CallvaultError as e:
            error, status = e.message, http_status(e)
        else:
            status = 201
    listing = await dispatch_json(request, session.principal, "GET", base)
    context = {
        "tenant_id": tenant_id,
        "tokens": listing["items"],
        "minted": minted,
        "error": error,
        "roles": ROLES,
        "here": here,
    }
    return render(request, "tokens.html", context, status=status, session=session)


async def revoke_token(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    tenant_id = request.match_info.get("tenant")
    token_id = request.match_info["token_id"]
    if tenant_id:
        path, back = f"/v1/tenants/{tenant_id}/tokens/{token_id}", f"/tenants/{tenant_id}/tokens"
    else:
        path, back = f"/v1/operator/tokens/{token_id}", "/operator/tokens"
    await dispatch_json(request, session.principal, "DELETE", path)
    raise see_other(PREFIX + back)


def add_routes(app: web.Application) -> None:
    add_pages(
        app,
        [
            ("GET", "/tenants", tenants),
            ("POST", "/tenants", tenants),
            ("GET", "/tenants/{tenant}", tenant),
            ("GET", "/tenants/{tenant}/delete", delete_tenant),
            ("POST", "/tenants/{tenant}/delete", delete_tenant),
            ("GET", "/tenants/{tenant}/tokens", tokens),
            ("POST", "/tenants/{tenant}/tokens", tokens),
            ("POST", "/tenants/{tenant}/tokens/{token_id}/revoke", revoke_token),
            ("GET", "/operator/tokens", tokens),
            ("POST", "/operator/tokens", tokens),
            ("POST", "/operator/tokens/{token_id}/revoke", revoke_token),
        ],
    )

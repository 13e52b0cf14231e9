"""The control API's tokens, roles and tenants, over HTTP against an in-process gateway.

Three promises of ../shared/API.md are checked here from the outside: a token is a random
secret shown once and stored only as its SHA-256; each role may call exactly the endpoints
of the role table (everything else is 403); and a tenant token learns nothing about other
tenants, because another tenant's path or resource id is always 404, never 403 or 200.
Tenant creation and deletion (the crypto-shredding erasure) are here too, since they are
the operator's half of the same table.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sqlite3
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from ai.pipeline import Analyzer
from gateway.api import add_routes
from gateway.auth import TOKEN_PREFIX
from gateway.services import build_worker
from gateway.settings import Settings
from gateway.state import CLOCK, SERVICES, SETTINGS
from tests.ai import ScriptedTranscriber
from tests.gateway import (
    Gateway,
    TenantTokens,
    bearer,
    data_files,
    record_call,
)

RECORDING_ON = {"recording": {"enabled": True}, "consent": {"required": False}}
# The resources' tenant also has a transcript and an analysis feature, so that its finished
# recording has both to serve.
# The transcript redacted, its original kept: every result route has something to serve.
WITH_AI = {
    **RECORDING_ON,
    "ai": {
        "transcript": True,
        "sentiment": True,
        "redaction": {"transcript": True, "keep_original": True},
    },
}
ROLES = ("operator", "admin", "pbx", "processor")
TENANT_ROLES = ("admin", "pbx", "processor")
CALLER = "+40711111111"
NOBODY = "+40799999999"
CALL = {"from": CALLER, "to": "+40722222222", "consent": "granted", "transport": "twilio"}


def token_of(gateway: Gateway, tenant: TenantTokens, role: str) -> str:
    return gateway.operator if role == "operator" else str(getattr(tenant, role))


async def mint(gateway: Gateway, tenant_id: str, role: str, *, by: str) -> dict[str, Any]:
    response = await gateway.client.post(
        f"/v1/tenants/{tenant_id}/tokens", json={"role": role}, headers=bearer(by)
    )
    assert response.status == 201, await response.text()
    return dict(await response.json())


# --- authentication ------------------------------------------------------------------------

# One endpoint of each kind: operator-only, tenant path, id-only path, a POST.
GUARDED = [
    ("GET", "/v1/tenants"),
    ("GET", "/v1/tenants/acme/recordings"),
    ("GET", "/v1/recordings/rec_x/audio"),
    ("POST", "/v1/calls/call-1/end"),
]


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer    ",
        "Token abcdefabcdefabcdefabcdefabcdefabcdef",
        "Basic dXNlcjpwYXNzd29yZA==",
        "cv_abcdefabcdefabcdefabcdefabcdefabcdef",
        "Bearer cv_not-a-token-anyone-was-given-000000000000",
    ],
    ids=[
        "absent",
        "empty",
        "no-token",
        "blank-token",
        "token-scheme",
        "basic",
        "no-scheme",
        "unknown",
    ],
)
async def test_a_missing_malformed_or_unknown_token_is_401(
    gateway: Gateway, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in GUARDED:
        response = await gateway.client.request(method, path, headers=headers)
        assert response.status == 401, (method, path)
        body = await response.json()
        assert body["error"] == "unauthorized"
        assert body["message"]


async def test_the_scheme_is_case_insensitive_but_the_token_is_not(gateway: Gateway) -> None:
    # RFC 9110: auth schemes are case-insensitive; the secret itself must match exactly.
    response = await gateway.client.get(
        "/v1/tenants", headers={"Authorization": f"bearer {gateway.operator}"}
    )
    assert response.status == 200
    response = await gateway.client.get("/v1/tenants", headers=bearer(gateway.operator.upper()))
    assert response.status == 401


async def test_the_control_api_takes_no_token_in_the_query_string(gateway: Gateway) -> None:
    response = await gateway.client.get("/v1/tenants", params={"token": gateway.operator})
    assert response.status == 401


async def test_a_revoked_token_is_401_from_the_next_request_on(gateway: Gateway) -> None:
    tenant = await gateway.tenant("acme")
    minted = await mint(gateway, "acme", "processor", by=tenant.admin)
    secret = minted["token"]
    response = await gateway.client.get("/v1/tenants/acme/recordings", headers=bearer(secret))
    assert response.status == 200

    response = await gateway.client.delete(
        f"/v1/tenants/acme/tokens/{minted['id']}", headers=bearer(tenant.admin)
    )
    assert response.status == 200
    revoked = await response.json()
    assert revoked["id"] == minted["id"]
    assert revoked["revoked_at"] is not None

    response = await gateway.client.get("/v1/tenants/acme/recordings", headers=bearer(secret))
    assert response.status == 401
    assert (await response.json())["error"] == "unauthorized"
    # The other tokens of the tenant are untouched.
    response = await gateway.client.get(
        "/v1/tenants/acme/recordings", headers=bearer(tenant.processor)
    )
    assert response.status == 200
    # Revoking again is harmless and keeps the first revocation time.
    response = await gateway.client.delete(
        f"/v1/tenants/acme/tokens/{minted['id']}", headers=bearer(tenant.admin)
    )
    assert response.status == 200
    assert (await response.json())["revoked_at"] == revoked["revoked_at"]


async def test_an_admin_mints_tenant_roles_never_an_operator(gateway: Gateway) -> None:
    # The admin may mint admin, pbx and processor tokens of its tenant, never an operator.
    tenant = await gateway.tenant("acme")
    # A role that is not even a string (schemathesis found {} answering 500) is 400 too.
    for role in ("operator", "root", "", {}, ["admin"], None, 1):
        response = await gateway.client.post(
            "/v1/tenants/acme/tokens", json={"role": role}, headers=bearer(tenant.admin)
        )
        assert response.status == 400, role
        answer = await response.json()
        assert answer["error"] == "bad_role"
        assert answer["message"].startswith("role: "), answer
    for role in TENANT_ROLES:
        minted = await mint(gateway, "acme", role, by=tenant.admin)
        assert minted["role"] == role
        assert minted["tenant"] == "acme"


async def test_a_token_secret_is_shown_only_in_the_answer_that_minted_it(
    gateway: Gateway,
) -> None:
    tenant = await gateway.tenant("acme")
    minted = await mint(gateway, "acme", "pbx", by=tenant.admin)
    secret = minted["token"]
    digest = hashlib.sha256(secret.encode()).hexdigest()
    assert {"id", "token", "role", "tenant", "created_at", "created_by"} <= set(minted)
    assert minted["created_by"].startswith("token:")
    assert secret not in minted["created_by"]

    response = await gateway.client.get("/v1/tenants/acme/tokens", headers=bearer(tenant.admin))
    assert response.status == 200
    text = await response.text()
    items = json.loads(text)["items"]
    assert minted["id"] in {item["id"] for item in items}
    for item in items:
        assert "token" not in item
        assert "token_hash" not in item
        assert "hash" not in item
    assert secret not in text
    assert digest not in text
    # Nor in the revocation's answer, nor in the audit log of the minting.
    response = await gateway.client.delete(
        f"/v1/tenants/acme/tokens/{minted['id']}", headers=bearer(tenant.admin)
    )
    text = await response.text()
    assert secret not in text and digest not in text
    events = await gateway.app[SERVICES].catalog.audit.list("acme", limit=1000)
    created = [e for e in events if e.action == "token.created" and e.object == minted["id"]]
    assert len(created) == 1
    logged = repr(events)
    assert secret not in logged and digest not in logged


async def test_tokens_are_long_random_and_distinct(gateway: Gateway) -> None:
    tenant = await gateway.tenant("acme")
    secrets = {gateway.operator, tenant.admin, tenant.pbx, tenant.processor}
    for _ in range(8):
        secrets.add((await mint(gateway, "acme", "pbx", by=tenant.admin))["token"])
    assert len(secrets) == 12  # no two mints alike
    alphabet = set(string.ascii_letters + string.digits + "-_")
    for secret in secrets:
        assert secret.startswith(TOKEN_PREFIX)
        body = secret[len(TOKEN_PREFIX) :]
        # >= 32 base64url characters = >= 192 bits, comfortably over the 128 promised.
        assert len(body) >= 32
        assert set(body) <= alphabet
        # A sanity check on randomness: a token is not a run of a few repeated characters.
        assert len(set(body)) >= 16


def catalog_cells(path: Path) -> list[tuple[str, str, object]]:
    """Every (table, column, value) of the SQLite catalog, read through SQLite (which sees
    the WAL too), opened read-only so the running gateway is undisturbed."""
    cells: list[tuple[str, str, object]] = []
    with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
        tables = [
            row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        for table in tables:
            cursor = db.execute(f'SELECT * FROM "{table}"')  # noqa: S608 - names from the schema
            columns = [description[0] for description in cursor.description]
            for row in cursor:
                cells.extend(zip([table] * len(columns), columns, row, strict=True))
    return cells


def raw_catalog_bytes(data_dir: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(data_dir.glob("catalog.sqlite3*")))


async def test_the_catalog_stores_only_the_sha256_of_each_token(
    gateway: Gateway, gateway_settings: Settings
) -> None:
    tenant = await gateway.tenant("acme")
    minted = await mint(gateway, "acme", "processor", by=tenant.admin)
    database = gateway_settings.data_dir / "catalog.sqlite3"
    cells = catalog_cells(database)
    raw = raw_catalog_bytes(gateway_settings.data_dir)
    secrets = [gateway.operator, tenant.admin, tenant.pbx, tenant.processor, minted["token"]]
    for secret in secrets:
        digest = hashlib.sha256(secret.encode()).hexdigest()
        for _table, _column, value in cells:
            if isinstance(value, str | bytes):
                assert secret not in (value if isinstance(value, str) else value.decode("latin-1"))
        assert secret.encode() not in raw
        holders = {(table, column) for table, column, value in cells if value == digest}
        assert holders == {("tokens", "token_hash")}


# --- roles ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """One row of the role table: a request and the roles that may make it."""

    method: str
    path: str
    """Formatted with ``tenant``, ``call`` (live), ``recording`` (finished), ``token``,
    ``operator_token`` (a spare one) and ``hold`` (an active legal hold on the live call)."""
    allowed: frozenset[str]
    body: dict[str, Any] | None = None
    unheld: bool = False
    """The tenant's hold is released before the allowed roles call it (a hold blocks it)."""

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def endpoint(
    method: str,
    path: str,
    allowed: str,
    body: dict[str, Any] | None = None,
    *,
    unheld: bool = False,
) -> Any:
    row = Endpoint(method, path, frozenset(allowed.split()), body, unheld)
    return pytest.param(row, id=str(row))


# API.md's role table, one row per endpoint of gateway/api/__init__.py.
ROLE_TABLE = [
    endpoint("POST", "/v1/tenants", "operator", {"id": "newco", "name": "Newco"}),
    endpoint("GET", "/v1/tenants", "operator"),
    endpoint("GET", "/v1/tenants/{tenant}", "operator admin"),
    endpoint("PATCH", "/v1/tenants/{tenant}", "operator", {"limits": {"live_calls": 100}}),
    endpoint("DELETE", "/v1/tenants/{tenant}", "operator", unheld=True),
    endpoint("POST", "/v1/tenants/{tenant}/tokens", "operator admin", {"role": "pbx"}),
    endpoint("GET", "/v1/tenants/{tenant}/tokens", "operator admin"),
    endpoint("DELETE", "/v1/tenants/{tenant}/tokens/{token}", "operator admin"),
    endpoint("GET", "/v1/operator/tokens", "operator"),
    endpoint("POST", "/v1/operator/tokens", "operator", {}),
    endpoint("DELETE", "/v1/operator/tokens/{operator_token}", "operator"),
    endpoint("GET", "/v1/tenants/{tenant}/instructions", "operator admin"),
    endpoint("PUT", "/v1/tenants/{tenant}/instructions", "admin", RECORDING_ON),
    endpoint("GET", "/v1/tenants/{tenant}/instructions/history", "operator admin"),
    endpoint("POST", "/v1/tenants/{tenant}/calls", "pbx", CALL),
    endpoint("GET", "/v1/tenants/{tenant}/calls/{call}", "pbx admin"),
    endpoint("POST", "/v1/calls/{call}/pause", "pbx"),
    endpoint("POST", "/v1/calls/{call}/resume", "pbx"),
    endpoint("POST", "/v1/calls/{call}/end", "pbx"),
    endpoint("GET", "/v1/tenants/{tenant}/recordings", "admin processor"),
    endpoint("GET", "/v1/recordings/{recording}", "admin processor"),
    endpoint("GET", "/v1/recordings/{recording}/audio", "admin"),
    endpoint("GET", "/v1/recordings/{recording}/transcript", "admin processor"),
    endpoint("GET", "/v1/recordings/{recording}/transcript/original", "admin"),
    endpoint("GET", "/v1/recordings/{recording}/analysis", "admin processor"),
    endpoint("DELETE", "/v1/recordings/{recording}", "admin"),
    endpoint(
        "POST", "/v1/tenants/{tenant}/legal-holds", "admin", {"number": CALLER, "reason": "r"}
    ),
    endpoint("GET", "/v1/tenants/{tenant}/legal-holds", "admin"),
    endpoint("GET", "/v1/tenants/{tenant}/legal-holds/{hold}", "admin"),
    endpoint("DELETE", "/v1/tenants/{tenant}/legal-holds/{hold}", "admin"),
    # A number no call has: nothing is erased, the receipt is empty.
    endpoint("POST", "/v1/tenants/{tenant}/erasure-requests", "admin", {"number": NOBODY}),
    endpoint("GET", "/v1/tenants/{tenant}/export?number=%2B40711111111", "admin"),
    endpoint("GET", "/v1/tenants/{tenant}/audit", "admin"),
    endpoint("GET", "/v1/tenants/{tenant}/audit/verify", "admin"),
    endpoint("GET", "/v1/tenants/{tenant}/audit/checkpoints", "admin"),
    endpoint("POST", "/v1/tenants/{tenant}/audit/checkpoints", "admin"),
    endpoint("GET", "/v1/audit/public-key", "operator admin pbx processor"),  # no token, too
]


@dataclass(frozen=True)
class Resources:
    """A tenant with something behind every path: a live call (under a legal hold), a
    finished recording, a spare token, and a spare operator token."""

    tenant: TenantTokens
    call: str
    recording: str
    token: str
    hold: str
    operator_token: str

    def path(self, template: str) -> str:
        return template.format(
            tenant=self.tenant.id,
            call=self.call,
            recording=self.recording,
            token=self.token,
            hold=self.hold,
            operator_token=self.operator_token,
        )


async def resources(gateway: Gateway, tenant_id: str) -> Resources:
    tenant = await gateway.tenant(tenant_id, WITH_AI)
    live = await gateway.announce(tenant)
    # Announced and ended over the API: a finished (empty) recording, whose audio export is
    # a valid WAV; the audio's content is checked in test_api_recordings.py.
    finished = await gateway.announce(tenant)
    response = await gateway.client.post(
        f"/v1/calls/{finished['call_id']}/end", headers=bearer(tenant.pbx)
    )
    assert response.status == 200
    # Its (empty) analysis, by an AI worker with a scripted model.
    app = gateway.app
    worker = build_worker(
        app[SETTINGS],
        app[SERVICES],
        now=app[CLOCK].now,
        analyzer=Analyzer(lambda: ScriptedTranscriber()),
    )
    assert await worker.run_once()
    await worker.close()
    spare = await mint(gateway, tenant_id, "pbx", by=gateway.operator)
    # The hold names the live call only, so the finished recording can still be erased.
    response = await gateway.client.post(
        f"/v1/tenants/{tenant_id}/legal-holds",
        json={"call_ids": [live["call_id"]], "reason": "litigation"},
        headers=bearer(tenant.admin),
    )
    assert response.status == 201, await response.text()
    hold = (await response.json())["id"]
    response = await gateway.client.post(
        "/v1/operator/tokens", json={}, headers=bearer(gateway.operator)
    )
    assert response.status == 201, await response.text()
    operator_token = (await response.json())["id"]
    return Resources(
        tenant,
        str(live["call_id"]),
        str(finished["recording_id"]),
        spare["id"],
        hold,
        operator_token,
    )


def test_the_role_table_covers_every_route() -> None:
    app = web.Application()
    add_routes(app)
    routes = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    table = set()
    for param in ROLE_TABLE:
        row = param.values[0]
        canonical = row.path.split("?")[0].format(
            tenant="{tenant}",
            call="{call_id}",
            recording="{recording_id}",
            token="{token_id}",
            hold="{hold_id}",
            operator_token="{token_id}",
        )
        table.add((row.method, canonical))
    assert table == routes


@pytest.mark.parametrize("row", ROLE_TABLE)
async def test_each_role_may_call_exactly_its_endpoints(gateway: Gateway, row: Endpoint) -> None:
    own = await resources(gateway, "acme")
    # The forbidden roles first: a 403 must not depend on what an allowed call changed
    # (an ended call, a deleted tenant), and it changes nothing itself.
    held = True
    for role in sorted(ROLES, key=lambda r: r in row.allowed):
        if row.unheld and held and role in row.allowed:
            response = await gateway.client.delete(
                own.path("/v1/tenants/{tenant}/legal-holds/{hold}"),
                headers=bearer(own.tenant.admin),
            )
            assert response.status == 200
            held = False
        response = await gateway.client.request(
            row.method,
            own.path(row.path),
            json=row.body,
            headers=bearer(token_of(gateway, own.tenant, role)),
        )
        text = (await response.read()).decode(errors="replace")  # the export is a ZIP
        if role in row.allowed:
            assert 200 <= response.status < 300, (role, text)
        else:
            assert response.status == 403, (role, text)
            assert json.loads(text)["error"] == "forbidden", role


# --- tenant isolation ------------------------------------------------------------------------


@dataclass(frozen=True)
class Foreign:
    """A request of tenant A's tokens naming tenant B's path or one of B's resource ids."""

    method: str
    path: str
    """Formatted with ``own`` (A), ``other`` (B) and B's ``call``, ``recording``, ``token``,
    ``hold``."""
    roles: tuple[str, ...]
    """A's roles to send it with."""
    body: dict[str, Any] | None = None

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


PATHS_OF_B = [
    Foreign("GET", "/v1/tenants/{other}", TENANT_ROLES),
    Foreign("DELETE", "/v1/tenants/{other}", TENANT_ROLES),
    Foreign("POST", "/v1/tenants/{other}/tokens", TENANT_ROLES, {"role": "admin"}),
    Foreign("GET", "/v1/tenants/{other}/tokens", TENANT_ROLES),
    Foreign("DELETE", "/v1/tenants/{other}/tokens/{token}", TENANT_ROLES),
    Foreign("GET", "/v1/tenants/{other}/instructions", TENANT_ROLES),
    Foreign("PUT", "/v1/tenants/{other}/instructions", TENANT_ROLES, RECORDING_ON),
    Foreign("GET", "/v1/tenants/{other}/instructions/history", TENANT_ROLES),
    Foreign("POST", "/v1/tenants/{other}/calls", TENANT_ROLES, CALL),
    Foreign("GET", "/v1/tenants/{other}/calls/{call}", TENANT_ROLES),
    Foreign("GET", "/v1/tenants/{other}/recordings", TENANT_ROLES),
    Foreign("GET", "/v1/tenants/{other}/audit", TENANT_ROLES),
    Foreign("GET", "/v1/tenants/{other}/audit/verify", TENANT_ROLES),
    Foreign("GET", "/v1/tenants/{other}/audit/checkpoints", TENANT_ROLES),
    Foreign("POST", "/v1/tenants/{other}/audit/checkpoints", TENANT_ROLES),
    Foreign(
        "POST", "/v1/tenants/{other}/legal-holds", TENANT_ROLES, {"number": CALLER, "reason": "r"}
    ),
    Foreign("GET", "/v1/tenants/{other}/legal-holds", TENANT_ROLES),
    Foreign("GET", "/v1/tenants/{other}/legal-holds/{hold}", TENANT_ROLES),
    Foreign("DELETE", "/v1/tenants/{other}/legal-holds/{hold}", TENANT_ROLES),
    # A number B has calls with: were it not refused, B's recording would be erased.
    Foreign("POST", "/v1/tenants/{other}/erasure-requests", TENANT_ROLES, {"number": CALLER}),
    Foreign("GET", "/v1/tenants/{other}/export?number=%2B40711111111", TENANT_ROLES),
]
# B's ids on paths that name no tenant, or A's own tenant, with the roles allowed there.
IDS_OF_B = [
    Foreign("GET", "/v1/tenants/{own}/calls/{call}", ("admin", "pbx")),
    Foreign("DELETE", "/v1/tenants/{own}/tokens/{token}", ("admin",)),
    Foreign("POST", "/v1/calls/{call}/pause", ("pbx",)),
    Foreign("POST", "/v1/calls/{call}/resume", ("pbx",)),
    Foreign("POST", "/v1/calls/{call}/end", ("pbx",)),
    Foreign("GET", "/v1/recordings/{recording}", ("admin", "processor")),
    Foreign("GET", "/v1/recordings/{recording}/audio", ("admin",)),
    Foreign("GET", "/v1/recordings/{recording}/transcript", ("admin", "processor")),
    Foreign("GET", "/v1/recordings/{recording}/transcript/original", ("admin",)),
    Foreign("GET", "/v1/recordings/{recording}/analysis", ("admin", "processor")),
    Foreign("DELETE", "/v1/recordings/{recording}", ("admin",)),
    Foreign("GET", "/v1/tenants/{own}/legal-holds/{hold}", ("admin",)),
    Foreign("DELETE", "/v1/tenants/{own}/legal-holds/{hold}", ("admin",)),
]
# The same ids with the roles that are forbidden there even on A's own resources.
IDS_OF_B_FORBIDDEN_ROLES = [
    Foreign(row.method, row.path, tuple(r for r in TENANT_ROLES if r not in row.roles))
    for row in IDS_OF_B
]


@dataclass
class TwoTenants:
    a: TenantTokens
    b: Resources


@pytest.fixture
async def two_tenants(gateway: Gateway) -> TwoTenants:
    a = await gateway.tenant("tenant-a", RECORDING_ON)
    # A has resources of its own too, so that a lookup in the wrong tenant has rows to find.
    await gateway.announce(a)
    return TwoTenants(a=a, b=await resources(gateway, "tenant-b"))


async def b_is_untouched(gateway: Gateway, b: Resources) -> None:
    """B's tenant, tokens, instructions, live call and recording are all as they were."""
    client = gateway.client
    response = await client.get(f"/v1/tenants/{b.tenant.id}", headers=bearer(b.tenant.admin))
    assert response.status == 200
    response = await client.get(
        f"/v1/tenants/{b.tenant.id}/instructions/history", headers=bearer(b.tenant.admin)
    )
    assert [item["version"] for item in (await response.json())["items"]] == [1]
    response = await client.get(
        f"/v1/tenants/{b.tenant.id}/calls/{b.call}", headers=bearer(b.tenant.pbx)
    )
    assert response.status == 200
    call = await response.json()
    assert call["ended_at"] is None
    response = await client.get(f"/v1/recordings/{b.recording}", headers=bearer(b.tenant.processor))
    assert response.status == 200
    assert (await response.json())["status"] == "analyzed"
    response = await client.get(f"/v1/tenants/{b.tenant.id}/tokens", headers=bearer(b.tenant.admin))
    tokens = (await response.json())["items"]
    assert len(tokens) == 4
    assert all(token["revoked_at"] is None for token in tokens)
    response = await client.get(
        f"/v1/tenants/{b.tenant.id}/legal-holds", headers=bearer(b.tenant.admin)
    )
    assert [(h["id"], h["active"]) for h in (await response.json())["items"]] == [(b.hold, True)]
    events = await gateway.app[SERVICES].catalog.audit.list(b.tenant.id, limit=1000)
    actions = {e.action for e in events}
    assert actions.isdisjoint({"erasure.requested", "export.created", "hold.released"})


async def assert_foreign_is_404(gateway: Gateway, two: TwoTenants, request: Foreign) -> None:
    a, b = two.a, two.b
    path = request.path.format(
        own=a.id, other=b.tenant.id, call=b.call, recording=b.recording, token=b.token, hold=b.hold
    )
    # What the same request answers for a tenant or id that does not exist at all.
    ghost = request.path.format(
        own=a.id,
        other="ghost",
        call="no-call",
        recording="rec_none",
        token="tok_none",
        hold="hold_none",
    )
    for role in request.roles:
        headers = bearer(getattr(a, role))
        response = await gateway.client.request(
            request.method, path, json=request.body, headers=headers
        )
        text = await response.text()
        assert response.status == 404, (role, text)
        assert json.loads(text)["error"] == "not_found"
        response = await gateway.client.request(
            request.method, ghost, json=request.body, headers=headers
        )
        assert response.status == 404, role
        assert (await response.json())["error"] == "not_found"
    await b_is_untouched(gateway, b)


@pytest.mark.parametrize("request_", PATHS_OF_B + IDS_OF_B, ids=str)
async def test_another_tenants_path_or_id_is_404(
    gateway: Gateway, two_tenants: TwoTenants, request_: Foreign
) -> None:
    await assert_foreign_is_404(gateway, two_tenants, request_)


@pytest.mark.parametrize("request_", IDS_OF_B_FORBIDDEN_ROLES, ids=str)
async def test_another_tenants_id_is_404_also_for_a_role_forbidden_there(
    gateway: Gateway, two_tenants: TwoTenants, request_: Foreign
) -> None:
    await assert_foreign_is_404(gateway, two_tenants, request_)


async def test_an_admin_cannot_revoke_another_tenants_token(
    gateway: Gateway, two_tenants: TwoTenants
) -> None:
    a, b = two_tenants.a, two_tenants.b
    response = await gateway.client.get(
        f"/v1/tenants/{b.tenant.id}/tokens", headers=bearer(b.tenant.admin)
    )
    pbx_id = next(t["id"] for t in (await response.json())["items"] if t["role"] == "pbx")
    for path in (
        f"/v1/tenants/{b.tenant.id}/tokens/{pbx_id}",
        f"/v1/tenants/{a.id}/tokens/{pbx_id}",
    ):
        response = await gateway.client.delete(path, headers=bearer(a.admin))
        assert response.status == 404, path
    # B's pbx token still works.
    response = await gateway.client.post(
        f"/v1/tenants/{b.tenant.id}/calls", json=CALL, headers=bearer(b.tenant.pbx)
    )
    assert response.status == 201
    await b_is_untouched(gateway, b)


# --- tenants -------------------------------------------------------------------------------


async def test_the_operator_creates_and_lists_tenants(gateway: Gateway) -> None:
    client, operator = gateway.client, bearer(gateway.operator)
    response = await client.post(
        "/v1/tenants", json={"id": "acme", "name": "Acme SRL", "region": "eu"}, headers=operator
    )
    assert response.status == 201
    acme = await response.json()
    assert acme["id"] == "acme"
    assert acme["name"] == "Acme SRL"
    assert acme["region"] == "eu"
    assert acme["created_at"].endswith("Z")
    response = await client.post(
        "/v1/tenants", json={"id": "b2", "name": "  B2  "}, headers=operator
    )
    assert response.status == 201
    b2 = await response.json()
    assert (b2["name"], b2["region"]) == ("B2", "eu")  # trimmed; region defaults to eu

    response = await client.get("/v1/tenants", headers=operator)
    assert response.status == 200
    assert (await response.json())["items"] == [acme, b2]
    response = await client.get("/v1/tenants/acme", headers=operator)
    assert await response.json() == acme


async def test_a_tenant_id_is_taken_once(gateway: Gateway) -> None:
    await gateway.tenant("acme")
    response = await gateway.client.post(
        "/v1/tenants", json={"id": "acme", "name": "Again"}, headers=bearer(gateway.operator)
    )
    assert response.status == 409
    assert (await response.json())["error"] == "conflict"
    response = await gateway.client.get("/v1/tenants/acme", headers=bearer(gateway.operator))
    assert (await response.json())["name"] == "Acme"


@pytest.mark.parametrize(
    "body",
    [
        {"id": "Acme", "name": "x"},
        {"id": "a", "name": "x"},
        {"id": "-acme", "name": "x"},
        {"id": "ac_me", "name": "x"},
        {"id": "ac/me", "name": "x"},
        {"id": "a" * 64, "name": "x"},
        {"id": 7, "name": "x"},
        {"name": "x"},
        {"id": "acme"},
        {"id": "acme", "name": ""},
        {"id": "acme", "name": "x", "region": 5},
        {"id": "acme", "name": "x", "plan": "gold"},
        ["acme"],
    ],
    ids=[
        "uppercase",
        "short",
        "leading-dash",
        "underscore",
        "slash",
        "too-long",
        "not-a-string",
        "no-id",
        "no-name",
        "empty-name",
        "bad-region",
        "unknown-field",
        "not-an-object",
    ],
)
async def test_a_bad_tenant_is_400_and_not_created(gateway: Gateway, body: Any) -> None:
    response = await gateway.client.post("/v1/tenants", json=body, headers=bearer(gateway.operator))
    assert response.status == 400, await response.text()
    assert (await response.json())["error"] == "bad_request"
    response = await gateway.client.get("/v1/tenants", headers=bearer(gateway.operator))
    assert (await response.json())["items"] == []


async def test_a_bad_json_body_is_400(gateway: Gateway) -> None:
    response = await gateway.client.post(
        "/v1/tenants", data=b"{not json", headers=bearer(gateway.operator)
    )
    assert response.status == 400
    assert (await response.json())["error"] == "bad_json"


async def test_a_body_over_the_size_limit_is_413_as_documented(gateway: Gateway) -> None:
    response = await gateway.client.post(
        "/v1/tenants", data=io.BytesIO(b" " * (2 << 20)), headers=bearer(gateway.operator)
    )
    assert response.status == 413
    assert (await response.json())["error"] == "request_entity_too_large"


async def test_a_body_that_is_not_an_object_names_the_body_not_a_class(gateway: Gateway) -> None:
    response = await gateway.client.post(
        "/v1/tenants", json=["acme"], headers=bearer(gateway.operator)
    )
    assert response.status == 400
    assert (await response.json())["message"] == "(body): must be a JSON object."


@pytest.mark.parametrize("name", ["", "   ", "\u001f", " \u001c\u001d\u001e "])
async def test_a_blank_tenant_name_is_400_and_no_tenant_is_made(
    gateway: Gateway, name: str
) -> None:
    response = await gateway.client.post(
        "/v1/tenants", json={"id": "blank", "name": name}, headers=bearer(gateway.operator)
    )
    assert response.status == 400
    assert await response.json() == {"error": "bad_request", "message": "name: must not be blank."}
    listed = await gateway.client.get("/v1/tenants/blank", headers=bearer(gateway.operator))
    assert listed.status == 404


async def test_head_answers_as_get_does_on_every_get_route(gateway: Gateway) -> None:
    # aiohttp's GET routes answer HEAD; the route table mounts them so, as before it.
    tenant = await gateway.tenant("acme")
    for path, token, status in [
        ("/v1/tenants", gateway.operator, 200),
        ("/v1/tenants", None, 401),
        ("/v1/tenants/acme", tenant.admin, 200),
        ("/v1/tenants/acme/recordings", tenant.processor, 200),
        ("/v1/tenants/beta/recordings", tenant.admin, 404),
        ("/v1/tenants/acme/instructions/history", tenant.pbx, 403),
    ]:
        headers = {} if token is None else bearer(token)
        got = await gateway.client.get(path, headers=headers)
        head = await gateway.client.head(path, headers=headers)
        assert (got.status, head.status) == (status, status), path
        assert await head.read() == b""


async def test_a_method_the_path_does_not_take_is_405_naming_those_it_does(
    gateway: Gateway,
) -> None:
    response = await gateway.client.patch("/v1/tenants", headers=bearer(gateway.operator))
    assert response.status == 405
    assert (await response.json())["error"] == "method_not_allowed"
    assert set(response.headers["Allow"].split(",")) >= {"GET", "POST"}


def keyring_tenants(data_dir: Path) -> set[str]:
    return set(json.loads((data_dir / "keyring.json").read_text())["tenants"])


async def test_deleting_a_tenant_erases_it_and_keeps_its_audit_log(
    gateway: Gateway, gateway_settings: Settings
) -> None:
    client, operator = gateway.client, bearer(gateway.operator)
    catalog = gateway.app[SERVICES].catalog
    objects_dir = gateway_settings.data_dir / "objects"
    doomed = await gateway.tenant("doomed", RECORDING_ON)
    kept = await gateway.tenant("kept", RECORDING_ON)
    finished = await record_call(gateway, doomed)
    live = await gateway.announce(doomed)
    survivor = await record_call(gateway, kept, seed=5)
    doomed_keys = {o.store_key for o in await catalog.objects.list("doomed")}
    kept_keys = {o.store_key for o in await catalog.objects.list("kept")}
    assert len(doomed_keys) == 2 and len(kept_keys) == 2  # inbound + outbound each
    on_disk = {p.relative_to(objects_dir).as_posix() for p in data_files(objects_dir)}
    assert doomed_keys | kept_keys <= on_disk
    assert keyring_tenants(gateway_settings.data_dir) == {"doomed", "kept"}

    response = await client.delete("/v1/tenants/doomed", headers=operator)
    assert response.status == 200, await response.text()
    receipt = await response.json()
    assert receipt["tenant"] == "doomed"
    assert receipt["recordings_deleted"] == 2
    assert receipt["objects_shredded"] == 2
    assert receipt["keys_destroyed"] is True

    # Every token of the tenant is dead, whatever its role.
    for token in (doomed.admin, doomed.pbx, doomed.processor):
        response = await client.get("/v1/tenants/doomed", headers=bearer(token))
        assert response.status == 401
    # The tenant is unknown now, and its id is not handed out again.
    response = await client.get("/v1/tenants/doomed", headers=operator)
    assert response.status == 404
    response = await client.get("/v1/tenants", headers=operator)
    assert [t["id"] for t in (await response.json())["items"]] == ["kept"]
    response = await client.post(
        "/v1/tenants", json={"id": "doomed", "name": "x"}, headers=operator
    )
    assert response.status == 409
    assert receipt["call_records_deleted"] == 2
    # Everything of the tenant is gone: objects, recordings, call records (the live call was
    # ended first), the bytes on disk and the KEK.
    assert await catalog.recordings.list_entries("doomed", limit=100) == []
    assert await catalog.objects.list("doomed") == []
    on_disk = {p.relative_to(objects_dir).as_posix() for p in data_files(objects_dir)}
    assert on_disk.isdisjoint(doomed_keys)
    assert kept_keys <= on_disk
    assert keyring_tenants(gateway_settings.data_dir) == {"kept"}
    # The audit log stays: the KEKs were destroyed before anything else was deleted, every
    # recording has its receipt, and the log ends with the deletion.
    events = await catalog.audit.list("doomed", limit=1000)
    actions = [e.action for e in events]
    assert events[-1].action == "tenant.deleted"
    assert events[-1].actor.startswith("token:")
    assert actions.index("keys.destroyed") < actions.index("data.deleted")
    deleted = [e for e in events if e.action == "recording.deleted"]
    assert {e.object for e in deleted} == {finished.recording_id, live["recording_id"]}
    assert all(e.detail["reason"] == "tenant" for e in deleted)
    assert len([e for e in events if e.action == "call_record.deleted"]) == 2
    assert (await catalog.audit.verify("doomed")).ok
    # The other tenant is untouched, its audio still readable.
    response = await client.get(
        f"/v1/recordings/{survivor.recording_id}/audio", headers=bearer(kept.admin)
    )
    assert response.status == 200
    await response.read()


async def test_deleting_an_unknown_tenant_is_404(gateway: Gateway) -> None:
    response = await gateway.client.delete("/v1/tenants/ghost", headers=bearer(gateway.operator))
    assert response.status == 404


@pytest.mark.parametrize("tenant_id", ["ghost", "doomed"])
async def test_the_tokens_of_an_unknown_or_deleted_tenant_are_404(
    gateway: Gateway, tenant_id: str
) -> None:
    await gateway.tenant("doomed")
    response = await gateway.client.delete("/v1/tenants/doomed", headers=bearer(gateway.operator))
    assert response.status == 200
    response = await gateway.client.get(
        f"/v1/tenants/{tenant_id}/tokens", headers=bearer(gateway.operator)
    )
    assert response.status == 404

"""Revocation, expiry and rotation of tokens across nodes and restarts, on SQLite and
PostgreSQL: the catalog is the truth, so a token revoked through one node is refused by
every other node at its next request; ``CALLVAULT_OPERATOR_TOKEN`` changed between starts
revokes the token of its previous value; a value revoked through the API is never
registered again, nor is one that expired; a value that is an existing operator token (the one
the first start printed) is taken over, so the next change revokes it too; a break-glass
token mints nothing, and a tenant that ever had an admin needs break-glass however its
admins were revoked; ``callvault token revoke`` revokes any token.

"Two nodes" are two ``build_app`` on one catalog (one SQLite file, or one PostgreSQL
database), each with its own connection pool, as two gateway processes would have.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import create_async_engine

from crypto.errors import ConfigError
from gateway.app import build_app
from gateway.auth import (
    ENV_OPERATOR,
    authenticate,
    ensure_operator_token,
    hash_secret,
    mint_token,
)
from gateway.errors import Unauthorized
from gateway.services import open_services
from gateway.settings import Settings
from gateway.state import SERVICES
from storage.catalog import AuditEntry, Catalog
from storage.catalog.database import MIGRATIONS_DIR
from storage.catalog.schema import audit_events, tenants, tokens
from storage.errors import AdminExists, CatalogUnavailable, NotFound
from tests.functional.test_catalog_audited_writes import failing_audit
from tests.functional.test_cli import callvault, clean_env, list_tenants, start_serve, stop_serve
from tests.gateway import FakeClock, Gateway, GatewayServer, bearer, start_gateway
from tests.keyring import audit_keyring

__all__ = ["failing_audit"]  # the fixture, shared with test_catalog_audited_writes

OLD = "old-operator-token-from-the-secret-store-0123456789"
NEW = "new-operator-token-from-the-secret-store-9876543210"
T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


@pytest.fixture
def node_settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "var",
        database_url=database_url,
        audiosocket={"port": 0},
        ai={"workers": 0},
        retention={"sweep_interval": "PT0S"},
    )


@pytest.fixture
async def nodes(
    aiohttp_client: Callable[..., Any], node_settings: Settings, clock: FakeClock
) -> tuple[Gateway, Gateway]:
    """Two gateways on one catalog; the second knows the first's operator token."""
    a = await start_gateway(
        await aiohttp_client(GatewayServer(build_app(node_settings, clock=clock)))
    )
    b_client = await aiohttp_client(GatewayServer(build_app(node_settings, clock=clock)))
    return a, Gateway(client=b_client, operator=a.operator)


async def status(gateway: Gateway, secret: str, path: str) -> int:
    response = await gateway.client.get(path, headers=bearer(secret))
    await response.read()
    return response.status


async def test_a_token_revoked_on_one_node_is_401_on_the_other_at_once(
    nodes: tuple[Gateway, Gateway], clock: FakeClock
) -> None:
    a, b = nodes
    tenant = await a.tenant("acme")
    recordings = "/v1/tenants/acme/recordings"
    response = await a.client.post(
        "/v1/tenants/acme/tokens", json={"role": "processor"}, headers=bearer(tenant.admin)
    )
    minted = await response.json()
    assert await status(b, minted["token"], recordings) == 200
    response = await a.client.delete(
        f"/v1/tenants/acme/tokens/{minted['id']}", headers=bearer(tenant.admin)
    )
    assert response.status == 200
    assert await status(b, minted["token"], recordings) == 401
    assert await status(a, minted["token"], recordings) == 401

    # An operator token minted on B and revoked on B: refused by A at once.
    response = await b.client.post("/v1/operator/tokens", json={}, headers=bearer(b.operator))
    operator = await response.json()
    assert await status(a, operator["token"], "/v1/tenants") == 200
    response = await b.client.delete(
        f"/v1/operator/tokens/{operator['id']}", headers=bearer(b.operator)
    )
    assert response.status == 200
    assert await status(a, operator["token"], "/v1/tenants") == 401

    # Expiry minted on A is kept by B to the microsecond.
    response = await a.client.post(
        "/v1/tenants/acme/tokens",
        json={"role": "processor", "expires_in": "PT5M"},
        headers=bearer(tenant.admin),
    )
    short = await response.json()
    clock.current += timedelta(minutes=5) - timedelta(microseconds=1)
    assert await status(b, short["token"], recordings) == 200
    clock.current += timedelta(microseconds=1)
    assert await status(b, short["token"], recordings) == 401
    assert await status(b, tenant.processor, recordings) == 200


async def test_an_operator_break_glass_is_decided_on_the_shared_catalog(
    nodes: tuple[Gateway, Gateway],
) -> None:
    a, b = nodes
    await a.tenant("acme")  # its admin is minted through A
    response = await b.client.post(
        "/v1/tenants/acme/tokens", json={"role": "admin"}, headers=bearer(b.operator)
    )
    assert response.status == 403
    assert (await response.json())["error"] == "break_glass_required"


async def test_a_break_glass_token_mints_nothing_and_revoked_admins_still_count_on_every_node(
    nodes: tuple[Gateway, Gateway],
) -> None:
    a, b = nodes
    tenant = await a.tenant("acme")
    glass = await (
        await a.client.post(
            "/v1/tenants/acme/tokens",
            json={"role": "admin", "break_glass": {"reason": "case 7"}},
            headers=bearer(a.operator),
        )
    ).json()
    response = await b.client.post(
        "/v1/tenants/acme/tokens", json={"role": "pbx"}, headers=bearer(glass["token"])
    )
    assert response.status == 403
    assert (await response.json())["error"] == "forbidden"
    # The operator revokes every admin token through B, break-glass one included ...
    response = await b.client.get("/v1/tenants/acme/tokens", headers=bearer(b.operator))
    listed = await response.json()
    for token in listed["items"]:
        if token["role"] == "admin":
            response = await b.client.delete(
                f"/v1/tenants/acme/tokens/{token['id']}", headers=bearer(b.operator)
            )
            assert response.status == 200
    assert await status(a, tenant.admin, "/v1/tenants/acme/tokens") == 401
    # ... and still needs break-glass for an admin, on either node.
    for node in (a, b):
        response = await node.client.post(
            "/v1/tenants/acme/tokens", json={"role": "admin"}, headers=bearer(node.operator)
        )
        assert response.status == 403
        assert (await response.json())["error"] == "break_glass_required"


# --- the operator token from the environment ------------------------------------------------


async def test_rotating_the_env_operator_token_revokes_the_old_one(
    nodes: tuple[Gateway, Gateway], clock: FakeClock
) -> None:
    a, b = nodes
    catalog: Catalog = a.app[SERVICES].catalog
    # First start with OLD (the in-process app is started; serve would call this first).
    assert await ensure_operator_token(catalog, OLD, now=clock.now()) is None
    assert await status(a, OLD, "/v1/tenants") == 200
    response = await a.client.post("/v1/operator/tokens", json={}, headers=bearer(OLD))
    minted = (await response.json())["token"]

    # The next start, on another node, with NEW: OLD is dead everywhere, NEW works.
    clock.advance(60)
    assert await ensure_operator_token(b.app[SERVICES].catalog, NEW, now=clock.now()) is None
    for node in (a, b):
        assert await status(node, OLD, "/v1/tenants") == 401
        assert await status(node, NEW, "/v1/tenants") == 200
        # Tokens not registered from the setting are not the rotation's business.
        assert await status(node, minted, "/v1/tenants") == 200
        assert await status(node, a.operator, "/v1/tenants") == 200
    env_tokens = [t for t in await catalog.tokens.list(None) if t.created_by == ENV_OPERATOR]
    assert [(t.token_hash, t.revoked_at) for t in env_tokens] == [
        (hash_secret(OLD), clock.now()),
        (hash_secret(NEW), None),
    ]
    # Starting again with NEW changes nothing.
    clock.advance(60)
    before = await catalog.tokens.list(None)
    assert await ensure_operator_token(catalog, NEW, now=clock.now()) is None
    assert await catalog.tokens.list(None) == before
    assert await status(a, NEW, "/v1/tenants") == 200

    # Going back to OLD is refused: a revoked value is never registered again.
    with pytest.raises(ConfigError) as refused:
        await ensure_operator_token(catalog, OLD, now=clock.now())
    assert ENV_OPERATOR in str(refused.value)
    assert OLD not in str(refused.value)
    assert await catalog.tokens.list(None) == before
    assert await status(b, OLD, "/v1/tenants") == 401
    assert await status(b, NEW, "/v1/tenants") == 200


async def test_an_env_token_revoked_through_the_api_is_not_registered_again(
    nodes: tuple[Gateway, Gateway], clock: FakeClock
) -> None:
    a, b = nodes
    catalog: Catalog = a.app[SERVICES].catalog
    await ensure_operator_token(catalog, OLD, now=clock.now())
    (env,) = [t for t in await catalog.tokens.list(None) if t.created_by == ENV_OPERATOR]
    response = await b.client.delete(f"/v1/operator/tokens/{env.id}", headers=bearer(OLD))
    assert response.status == 200  # it revoked itself
    assert await status(a, OLD, "/v1/tenants") == 401
    with pytest.raises(ConfigError, match="revoked"):
        await ensure_operator_token(catalog, OLD, now=clock.now())
    assert await status(a, OLD, "/v1/tenants") == 401
    # A new value is the way out.
    await ensure_operator_token(catalog, NEW, now=clock.now())
    assert await status(a, NEW, "/v1/tenants") == 200


async def test_a_printed_token_put_in_the_setting_is_revoked_when_the_setting_changes(
    database_url: str,
    tmp_path: Path,
) -> None:
    # The README's quick start: the first start prints a token, the operator copies it into
    # CALLVAULT_OPERATOR_TOKEN; a later value must revoke it like any earlier value.
    catalog = await Catalog.open(database_url, audit_keys=audit_keyring(tmp_path / "keys"))
    try:
        await catalog.migrate()
        printed = await ensure_operator_token(catalog, None, now=T0)
        assert printed is not None
        minted = await mint_token(catalog, tenant=None, role="operator", created_by="cli", now=T0)
        assert await ensure_operator_token(catalog, printed, now=T0) is None
        (taken,) = [t for t in await catalog.tokens.list(None) if t.from_env]
        # Taken over, not registered again; who minted it stays on record.
        assert (taken.token_hash, taken.created_by) == (hash_secret(printed), "bootstrap")
        assert len(await catalog.tokens.list(None)) == 2

        later = T0 + timedelta(days=1)
        assert await ensure_operator_token(catalog, minted.secret, now=later) is None
        with pytest.raises(Unauthorized):
            await authenticate(catalog, printed, now=later)
        assert (await catalog.tokens.get(taken.id)).revoked_at == later
        assert (await authenticate(catalog, minted.secret, now=later)).role == "operator"

        latest = later + timedelta(days=1)
        assert await ensure_operator_token(catalog, NEW, now=latest) is None
        with pytest.raises(Unauthorized):
            await authenticate(catalog, minted.secret, now=latest)
        active = [t for t in await catalog.tokens.list(None) if t.active(latest)]
        assert [(t.token_hash, t.created_by) for t in active] == [(hash_secret(NEW), ENV_OPERATOR)]
    finally:
        await catalog.close()


async def test_a_setting_whose_token_expired_refuses_to_start(
    database_url: str, tmp_path: Path
) -> None:
    catalog = await Catalog.open(database_url, audit_keys=audit_keyring(tmp_path / "keys"))
    try:
        await catalog.migrate()
        expires_at = T0 + timedelta(hours=1)
        await catalog.tokens.create(
            "tok_short", None, "operator", hash_secret(OLD), "token:tok_x", T0,
            expires_at=expires_at,
        )  # fmt: skip
        assert await ensure_operator_token(catalog, OLD, now=T0) is None  # still good
        before = await catalog.tokens.list(None)
        with pytest.raises(ConfigError) as refused:
            await ensure_operator_token(catalog, OLD, now=expires_at)
        assert refused.value.message.startswith(f"{ENV_OPERATOR}: ")
        assert "tok_short" in refused.value.message and "expired" in refused.value.message
        assert OLD not in refused.value.message
        assert await catalog.tokens.list(None) == before
    finally:
        await catalog.close()


async def test_once_every_operator_token_is_revoked_or_expired_the_next_start_mints_one(
    database_url: str, tmp_path: Path
) -> None:
    catalog = await Catalog.open(database_url, audit_keys=audit_keyring(tmp_path / "keys"))
    try:
        await catalog.migrate()
        first = await ensure_operator_token(catalog, None, now=T0)
        assert first is not None
        assert await ensure_operator_token(catalog, None, now=T0) is None  # not again
        (token,) = await catalog.tokens.list(None)
        await catalog.tokens.revoke(None, token.id, T0)
        second = await ensure_operator_token(catalog, None, now=T0)
        assert second is not None and second != first
        assert (await authenticate(catalog, second, now=T0)).role == "operator"
        with pytest.raises(Unauthorized):
            await authenticate(catalog, first, now=T0)

        # An operator token that expires is no way in once it has: the next start mints.
        for token in await catalog.tokens.list(None):
            await catalog.tokens.revoke(None, token.id, T0)
        await catalog.tokens.create(
            "tok_short", None, "operator", hash_secret("short-lived"), "api", T0,
            expires_at=T0 + timedelta(hours=1),
        )  # fmt: skip
        assert await ensure_operator_token(catalog, None, now=T0) is None
        later = T0 + timedelta(hours=1)
        third = await ensure_operator_token(catalog, None, now=later)
        assert third is not None
        assert (await authenticate(catalog, third, now=later)).role == "operator"
    finally:
        await catalog.close()


# --- the catalog's guarantees ---------------------------------------------------------------


@pytest.fixture
async def catalog(catalog: Catalog) -> Catalog:
    """The tier's migrated catalog, with tenant acme."""
    await catalog.tenants.create("acme", "Acme", "eu", T0)
    return catalog


async def test_two_nodes_minting_a_first_admin_at_once_mint_one(
    catalog: Catalog, database_url: str, tmp_path: Path
) -> None:
    # Another node: its own catalog pool and its own view of the same keyring.
    other = await Catalog.open(database_url, audit_keys=audit_keyring(tmp_path / "keys"))
    try:

        async def first_admin(on: Catalog, n: int) -> str:
            try:
                token = await on.tokens.create(
                    f"tok_{n}", "acme", "admin", hash_secret(f"s{n}"), "op", T0, unless_admin=True
                )
            except AdminExists:
                return "refused"
            return token.id

        results = await asyncio.gather(
            *(first_admin(c, n) for n, c in enumerate([catalog, other] * 3))
        )
    finally:
        await other.close()
    assert sorted(results)[:-1] == ["refused"] * 5
    (admin,) = await catalog.tokens.list("acme")
    assert admin.id in results


async def test_a_revoked_or_expired_admin_still_makes_the_next_one_no_first(
    catalog: Catalog,
) -> None:
    await catalog.tokens.create("tok_pbx", "acme", "pbx", hash_secret("s0"), "op", T0)
    first = await catalog.tokens.create(
        "tok_1", "acme", "admin", hash_secret("s1"), "op", T0, unless_admin=True,
        expires_at=T0 + timedelta(minutes=1),
    )  # fmt: skip
    await catalog.tokens.revoke("acme", first.id, T0)
    for now in (T0, T0 + timedelta(days=1)):  # revoked; revoked and expired
        with pytest.raises(AdminExists):
            await catalog.tokens.create(
                "tok_2", "acme", "admin", hash_secret("s2"), "op", now, unless_admin=True
            )
    assert {t.id for t in await catalog.tokens.list("acme")} == {"tok_pbx", "tok_1"}


async def test_a_token_whose_audit_fails_is_not_minted(
    catalog: Catalog, failing_audit: Any
) -> None:
    failing_audit("tokens")
    entry = AuditEntry("op", "token.created", "tok_1", {"role": "admin"})
    with pytest.raises(CatalogUnavailable):
        await catalog.tokens.create(
            "tok_1", "acme", "admin", hash_secret("s1"), "op", T0, audit=[entry]
        )
    assert await catalog.tokens.list("acme") == []
    assert await catalog.tokens.find(hash_secret("s1"), now=T0) is None
    assert await catalog.audit.list("acme") == []


async def test_a_revocation_whose_audit_fails_does_not_revoke(
    catalog: Catalog, failing_audit: Any
) -> None:
    await catalog.tokens.create("tok_1", "acme", "pbx", hash_secret("s1"), "op", T0)
    failing_audit("tokens")
    with pytest.raises(CatalogUnavailable):
        await catalog.tokens.revoke("acme", "tok_1", T0, actor="token:tok_0")
    assert (await catalog.tokens.get("tok_1")).revoked_at is None
    assert await catalog.tokens.find(hash_secret("s1"), now=T0) is not None


async def test_expiry_is_checked_against_the_callers_clock(catalog: Catalog) -> None:
    expires_at = T0 + timedelta(minutes=1)
    await catalog.tokens.create(
        "tok_1", "acme", "pbx", hash_secret("s1"), "op", T0, expires_at=expires_at
    )
    assert await catalog.tokens.find(hash_secret("s1"), now=expires_at - timedelta(microseconds=1))
    assert await catalog.tokens.find(hash_secret("s1"), now=expires_at) is None
    assert (await catalog.tokens.get("tok_1")).active(expires_at) is False
    with pytest.raises(ValueError, match="expire after"):
        await catalog.tokens.create(
            "tok_2", "acme", "pbx", hash_secret("s2"), "op", T0, expires_at=T0
        )
    with pytest.raises(NotFound):
        await catalog.tokens.get("tok_2")


# --- the migration -------------------------------------------------------------------------


async def test_the_migration_marks_earlier_env_and_break_glass_tokens(
    database_url: str, tmp_path: Path
) -> None:
    def upgrade(revision: str) -> Callable[[sa.Connection], None]:
        def step(sync: sa.Connection) -> None:
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS_DIR))
            config.attributes["connection"] = sync
            command.upgrade(config, revision)

        return step

    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(upgrade("0006"))
            await conn.execute(
                sa.insert(tenants).values(
                    id="acme", name="Acme", region="eu", created_at=T0, audit_seq=1,
                    audit_head="1" * 64,
                )
            )  # fmt: skip
            for id, tenant, role, by in (
                ("tok_env", None, "operator", ENV_OPERATOR),
                ("tok_boot", None, "operator", "bootstrap"),
                ("tok_glass", "acme", "admin", "token:tok_boot"),
                ("tok_admin", "acme", "admin", "token:tok_boot"),
            ):
                await conn.execute(
                    sa.insert(tokens).values(
                        id=id, tenant_id=tenant, role=role, token_hash=hash_secret(id),
                        created_at=T0, created_by=by, revoked_at=None,
                        expires_at=T0 + timedelta(hours=1) if id == "tok_glass" else None,
                    )
                )  # fmt: skip
            await conn.execute(
                sa.insert(audit_events).values(
                    tenant_id="acme", seq=1, at=T0, actor="token:tok_boot",
                    action="token.break_glass", object="tok_glass", detail={"reason": "r"},
                    prev_hash="0" * 64, hash="1" * 64,
                )
            )  # fmt: skip
            await conn.run_sync(upgrade("head"))
    finally:
        await engine.dispose()
    catalog = await Catalog.open(database_url, audit_keys=audit_keyring(tmp_path / "keys"))
    try:
        marked = {
            t.id: (t.from_env, t.break_glass)
            for t in await catalog.tokens.list(None) + await catalog.tokens.list("acme")
        }
    finally:
        await catalog.close()
    assert marked == {
        "tok_env": (True, False),
        "tok_boot": (False, False),
        "tok_glass": (False, True),
        "tok_admin": (False, False),
    }


# --- the command line ------------------------------------------------------------------------


def cli(data_dir: Path, *args: str) -> Any:
    return callvault("--data-dir", str(data_dir), *args)


async def test_callvault_token_revoke_revokes_any_token_and_names_it(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    async with open_services(settings) as services:
        await services.catalog.tenants.create("acme", "Acme", "eu", T0)
    operator = cli(tmp_path, "token", "create", "--role", "operator")
    admin = cli(tmp_path, "token", "create", "--role", "admin", "--tenant", "acme")
    assert operator.returncode == admin.returncode == 0, operator.stderr + admin.stderr
    operator_id, admin_id = operator.stdout.split()[0], admin.stdout.split()[0]
    operator_secret, admin_secret = operator.stdout.split()[-1], admin.stdout.split()[-1]

    revoked = cli(tmp_path, "token", "revoke", admin_id)
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout.startswith(f"{admin_id}: admin token of tenant acme, revoked at ")
    assert admin_secret not in revoked.stdout + revoked.stderr
    revoked = cli(tmp_path, "token", "revoke", operator_id)
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout.startswith(f"{operator_id}: operator token, revoked at ")
    again = cli(tmp_path, "token", "revoke", operator_id)
    assert again.returncode == 0
    assert "revoked already at" in again.stdout

    unknown = cli(tmp_path, "token", "revoke", "tok_nobody")
    assert unknown.returncode == 1
    assert "tok_nobody" in unknown.stderr
    assert "not_found" in unknown.stderr

    async with open_services(settings) as services:
        now = datetime.now(UTC)
        for secret in (operator_secret, admin_secret):
            with pytest.raises(Unauthorized):
                await authenticate(services.catalog, secret, now=now)
        events = await services.catalog.audit.list("acme")
    assert [(e.actor, e.action, e.object) for e in events] == [
        ("cli", "token.created", admin_id),
        ("cli", "token.revoked", admin_id),
    ]


async def test_callvault_token_create_keeps_the_break_glass_rule(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    async with open_services(settings) as services:
        await services.catalog.tenants.create("acme", "Acme", "eu", T0)
    first = cli(tmp_path, "token", "create", "--role", "admin", "--tenant", "acme")
    assert first.returncode == 0, first.stderr
    second = cli(tmp_path, "token", "create", "--role", "admin", "--tenant", "acme")
    assert second.returncode == 1
    assert "break_glass_required" in second.stderr
    glass = cli(
        tmp_path, "token", "create", "--role", "processor", "--tenant", "acme",
        "--break-glass", "ticket 5",
    )  # fmt: skip
    assert glass.returncode == 0, glass.stderr
    assert ", expires " in glass.stdout
    async with open_services(settings) as services:
        events = await services.catalog.audit.list("acme")
        tokens = await services.catalog.tokens.list("acme")
    assert [e.action for e in events] == ["token.created", "token.created", "token.break_glass"]
    assert events[-1].detail["reason"] == "ticket 5"
    (processor,) = [t for t in tokens if t.role == "processor"]
    assert processor.expires_at is not None
    assert processor.expires_at - processor.created_at == timedelta(hours=1)


async def test_callvault_token_create_refuses_an_expiry_shorter_than_a_microsecond(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path)
    async with open_services(settings) as services:
        await services.catalog.tenants.create("acme", "Acme", "eu", T0)
    for role in (["--role", "operator"], ["--role", "pbx", "--tenant", "acme"]):
        refused = cli(tmp_path, "token", "create", *role, "--expires-in", "PT0.0000001S")
        assert refused.returncode == 1, refused.stderr
        assert refused.stderr == (
            "callvault: bad_request: expires_in: 'PT0.0000001S' is shorter than a microsecond.\n"
        )
        assert refused.stdout == ""
    async with open_services(settings) as services:
        assert await services.catalog.tokens.list("acme") == []
        assert await services.catalog.tokens.list(None) == []


def test_serve_with_a_changed_operator_token_revokes_the_old_one(tmp_path: Path) -> None:
    process, base = start_serve(tmp_path, CALLVAULT_OPERATOR_TOKEN=OLD)
    assert list_tenants(base, OLD) == 200
    stop_serve(process)

    process, base = start_serve(tmp_path, CALLVAULT_OPERATOR_TOKEN=NEW)
    assert list_tenants(base, OLD) == 401
    assert list_tenants(base, NEW) == 200
    assert OLD not in stop_serve(process)

    refused = callvault(
        "--data-dir", str(tmp_path), "serve",
        env=clean_env(CALLVAULT_OPERATOR_TOKEN=OLD, CALLVAULT_HTTP__PORT="0"),
    )  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.startswith(f"callvault: {ENV_OPERATOR}: ")
    assert "revoked" in refused.stderr
    assert OLD not in refused.stderr + refused.stdout

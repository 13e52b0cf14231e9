"""Bearer tokens: minting, hashing, checking, and the role rules of the API.

A token is 256 random bits, shown once when minted; the catalog keeps only its SHA-256. A
request's token is hashed, looked up by hash, and the stored hash compared again in constant
time. Every role except ``operator`` belongs to one tenant, and a resource of another tenant
is reported as unknown (404), never as forbidden, so that a token learns nothing about other
tenants: ``scope`` answers 404 for a foreign tenant *before* it checks the role.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from crypto.errors import ConfigError
from gateway.errors import Forbidden, Unauthorized
from storage.catalog import Catalog, Role, Token
from storage.errors import NotFound

TOKEN_PREFIX = "cv_"  # noqa: S105 - a prefix that makes leaked tokens easy to scan for
TOKEN_BYTES = 32


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's id, role and tenant (``None`` for the operator)."""

    token_id: str
    role: Role
    tenant: str | None

    @property
    def actor(self) -> str:
        """How the audit log names this caller (a token id, never the token)."""
        return f"token:{self.token_id}"


@dataclass(frozen=True, slots=True)
class MintedToken:
    """A new token: ``secret`` exists only in this value and in the one answer that shows it."""

    record: Token
    secret: str


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def bearer_secret(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, ``None`` when absent."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized("The Authorization header must be 'Bearer <token>'.")
    return value.strip()


async def authenticate(catalog: Catalog, secret: str | None) -> Principal:
    """The principal of a token; ``Unauthorized`` for a missing, unknown or revoked one."""
    if not secret:
        raise Unauthorized("A bearer token is required.")
    digest = hash_secret(secret)
    token = await catalog.tokens.find(digest)
    if token is None or not hmac.compare_digest(token.token_hash, digest):
        raise Unauthorized("The token is unknown or revoked.")
    return Principal(token_id=token.id, role=token.role, tenant=token.tenant_id)


async def mint_token(
    catalog: Catalog, *, tenant: str | None, role: Role, created_by: str, now: datetime
) -> MintedToken:
    secret = new_secret()
    record = await catalog.tokens.create(
        id="tok_" + secrets.token_hex(8),
        tenant_id=tenant,
        role=role,
        token_hash=hash_secret(secret),
        created_by=created_by,
        now=now,
    )
    return MintedToken(record=record, secret=secret)


def scope(principal: Principal, tenant: str) -> str:
    """Check that ``principal`` may act on ``tenant``; returns the tenant.

    A tenant token naming another tenant gets ``NotFound`` whatever its role, before any
    role is checked (``require_role``, once the path's resource was found). The operator
    belongs to every tenant; the route's roles say where it may act.
    """
    if principal.role != "operator" and principal.tenant != tenant:
        raise NotFound(f"Tenant {tenant!r} not found.")
    return tenant


ROLE_WORDS: dict[str, str] = {
    "operator": "runs the gateway: tenants and tokens, never tenant audio or transcripts",
    "admin": "a tenant's administrator: instructions, tokens, recordings including audio, "
    "legal holds, erasure and export",
    "pbx": "a tenant's PBX: announces calls, pushes audio, pauses, resumes and ends calls",
    "processor": "a tenant's downstream system: lists recordings, reads transcripts (no audio)",
}
"""What each role is for, in the words of the OpenAPI document."""


def require_role(principal: Principal, roles: Collection[Role]) -> None:
    if principal.role not in roles:
        allowed = " or ".join(sorted(roles))
        article = "An" if principal.role[0] in "aeiou" else "A"
        raise Forbidden(f"{article} {principal.role} token may not do this (needs {allowed}).")


def tenant_of(principal: Principal) -> str:
    """The tenant of a tenant token, for paths that name no tenant (``/v1/recordings/{id}``,
    ``/v1/calls/{id}/...``). Look the resource up in it first (404 when it is not there,
    whoever asks) and only then ``require_role``, so that a token learns nothing about ids
    of other tenants, not even from a 403."""
    if principal.tenant is None:  # the operator names tenants in paths
        raise Forbidden("This endpoint needs a tenant token.")
    return principal.tenant


MIN_OPERATOR_TOKEN_CHARS = 32
"""A configured operator token shorter than this cannot hold 128 random bits (base64)."""


async def ensure_operator_token(
    catalog: Catalog, configured: str | None, *, now: datetime
) -> str | None:
    """Make sure an operator can log in; return a newly minted secret to show once, if any.

    ``CALLVAULT_OPERATOR_TOKEN`` given: its hash is registered (once) and nothing is shown.
    Not given: on the first start (no active operator token exists) one is minted and
    returned for the caller to print; later starts mint nothing.
    """
    if configured is not None:
        if len(configured) < MIN_OPERATOR_TOKEN_CHARS:
            raise ConfigError(
                "CALLVAULT_OPERATOR_TOKEN",
                f"must be at least {MIN_OPERATOR_TOKEN_CHARS} random characters "
                "(e.g. the output of `openssl rand -base64 32`).",
            )
        digest = hash_secret(configured)
        if await catalog.tokens.find(digest) is None:
            await catalog.tokens.create(
                id="tok_env_" + secrets.token_hex(6),  # not derived from the secret
                tenant_id=None,
                role="operator",
                token_hash=digest,
                created_by="CALLVAULT_OPERATOR_TOKEN",
                now=now,
            )
        return None
    if any(token.revoked_at is None for token in await catalog.tokens.list(None)):
        return None
    minted = await mint_token(
        catalog, tenant=None, role="operator", created_by="bootstrap", now=now
    )
    return minted.secret

"""Bearer tokens: minting, hashing, checking, and the role rules of the API.

A token is 256 random bits, shown once when minted; the catalog keeps only its SHA-256. A
request's token is hashed, looked up by hash, and the stored hash compared again in constant
time. Every role except ``operator`` belongs to one tenant, and a resource of another tenant
is reported as unknown (404), never as forbidden, so that a token learns nothing about other
tenants: ``scope`` answers 404 for a foreign tenant *before* it checks the role.

Every token can be revoked and may expire; the catalog is asked on every request (no node
keeps a copy), so either takes effect at the next request on every node. The operator may
mint a tenant's first admin token; once the tenant has had an admin (revoking them all does
not make the next one "first"), an operator-minted admin or processor token is break-glass
access (``mint_tenant_token``): it needs a reason, lives at most ``BREAK_GLASS_LIFETIME``,
the tenant learns of it from its audit log and its webhook, and it mints no token (else its
hour would buy a permanent one the tenant never hears of).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from crypto.errors import ConfigError
from gateway.errors import BadRequest, BreakGlassRequired, Forbidden, Unauthorized
from gateway.webhooks import Event, event_jobs
from storage.catalog import AuditEntry, Catalog, NewJob, Role, Token, iso
from storage.errors import AdminExists, NotFound
from storage.instructions import parse_duration

log = logging.getLogger(__name__)

TOKEN_PREFIX = "cv_"  # noqa: S105 - a prefix that makes leaked tokens easy to scan for
TOKEN_BYTES = 32


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's id, role and tenant (``None`` for the operator), and
    whether the token is the operator's break-glass access to that tenant."""

    token_id: str
    role: Role
    tenant: str | None
    break_glass: bool = False

    @property
    def actor(self) -> str:
        """How the audit log names this caller (a token id, never the token)."""
        return f"token:{self.token_id}"


@dataclass(frozen=True, slots=True)
class MintedToken:
    """A new token: ``secret`` exists only in this value and in the one answer that shows it."""

    record: Token
    secret: str


MAX_LIFETIME = "P1Y"
"""The longest ``expires_in`` a token may be minted with."""
BREAK_GLASS_LIFETIME = "PT1H"
"""How long a break-glass token lives at most, and when it is given no ``expires_in``."""
ENV_OPERATOR = "CALLVAULT_OPERATOR_TOKEN"
"""The ``created_by`` of the operator token registered from that setting."""


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def new_token_id() -> str:
    return "tok_" + secrets.token_hex(8)


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


async def authenticate(catalog: Catalog, secret: str | None, *, now: datetime) -> Principal:
    """The principal of a token; ``Unauthorized`` for a missing, unknown, revoked or
    expired one (at ``now``), without saying which."""
    if not secret:
        raise Unauthorized("A bearer token is required.")
    digest = hash_secret(secret)
    token = await catalog.tokens.find(digest, now=now)
    if token is None or not hmac.compare_digest(token.token_hash, digest):
        raise Unauthorized("The token is unknown, revoked or expired.")
    return Principal(
        token_id=token.id, role=token.role, tenant=token.tenant_id, break_glass=token.break_glass
    )


def token_expiry(
    expires_in: str | None, now: datetime, *, longest: str, default: str | None = None
) -> datetime | None:
    """When a token minted at ``now`` with ``expires_in`` (an ISO-8601 duration; absent:
    ``default``, ``None`` for never) expires; ``BadRequest`` naming ``expires_in`` when it
    is not a duration, is zero or shorter than the catalog's microsecond, or ends later than
    ``longest`` after ``now``."""
    text = expires_in if expires_in is not None else default
    if text is None:
        return None
    try:
        duration = parse_duration(text)
        if duration.is_zero():
            raise ValueError("must be longer than zero")
        expires_at = duration.after(now)
    except ValueError as e:
        raise BadRequest(f"expires_in: {e}.") from None
    if expires_at <= now:  # "PT0.0000001S": not zero, yet it ends before it begins
        raise BadRequest(f"expires_in: {text!r} is shorter than a microsecond.")
    if expires_at > parse_duration(longest).after(now):
        raise BadRequest(f"expires_in: {text!r} is longer than {longest}, the most allowed here.")
    return expires_at


async def mint_token(
    catalog: Catalog,
    *,
    tenant: str | None,
    role: Role,
    created_by: str,
    now: datetime,
    expires_at: datetime | None = None,
    token_id: str | None = None,
    audit: Sequence[AuditEntry] = (),
    jobs: Sequence[NewJob] = (),
    unless_admin: bool = False,
    break_glass: bool = False,
) -> MintedToken:
    """Store a new token (``audit`` and ``jobs`` in the same transaction, see
    ``catalog.tokens.create``) and return it with its secret."""
    secret = new_secret()
    record = await catalog.tokens.create(
        id=token_id or new_token_id(),
        tenant_id=tenant,
        role=role,
        token_hash=hash_secret(secret),
        created_by=created_by,
        now=now,
        expires_at=expires_at,
        audit=audit,
        jobs=jobs,
        unless_admin=unless_admin,
        break_glass=break_glass,
    )
    return MintedToken(record=record, secret=secret)


async def mint_tenant_token(
    catalog: Catalog,
    *,
    actor: str,
    by_operator: bool,
    by_break_glass: bool = False,
    tenant: str,
    role: Role,
    now: datetime,
    expires_in: str | None = None,
    break_glass: str | None = None,
    webhook_attempts: int = 8,
) -> MintedToken:
    """Mint a token of ``tenant`` under the rules of API.md, audited in the tenant's chain
    with the token row (``token.created``: role and expiry).

    The operator (``by_operator``: the API's operator, or the CLI) may mint the tenant's
    first admin token, and pbx tokens, freely. Once the tenant has had an admin token
    (revoked and expired ones count), an admin or processor token of the operator needs
    ``break_glass`` (a reason), else ``BreakGlassRequired``. A break-glass token expires
    within ``BREAK_GLASS_LIFETIME`` (that long when ``expires_in`` is absent; longer is a
    ``BadRequest``), is audited as ``token.break_glass`` (reason, role, expiry, never the
    secret), is sent to the tenant's webhook as ``token.break_glass``, and is marked in the
    catalog: a break-glass token (``by_break_glass``) mints nothing (``Forbidden``). Tenant
    admins need no break-glass."""
    if by_break_glass:
        raise Forbidden(
            "A break-glass token may not mint tokens: it is the operator's access to this "
            f"tenant for at most {BREAK_GLASS_LIFETIME}. The tenant's own admin mints its "
            "tokens; the operator mints another break-glass token if it needs one."
        )
    if break_glass is not None and not by_operator:
        raise BadRequest(
            "break_glass: only the operator mints break-glass tokens; a tenant admin mints "
            "its tenant's tokens without one."
        )
    if break_glass is None:
        expires_at = token_expiry(expires_in, now, longest=MAX_LIFETIME)
    else:
        expires_at = token_expiry(
            expires_in, now, longest=BREAK_GLASS_LIFETIME, default=BREAK_GLASS_LIFETIME
        )
    token_id = new_token_id()
    detail: dict[str, object] = {"role": role, "expires_at": iso(expires_at)}
    if break_glass is None:
        audit = [AuditEntry(actor, "token.created", token_id, detail)]
    else:
        glass = {**detail, "reason": break_glass}
        audit = [
            AuditEntry(actor, "token.created", token_id, {**detail, "break_glass": True}),
            AuditEntry(actor, "token.break_glass", token_id, glass),
        ]
    jobs: list[NewJob] = []
    if break_glass is not None:
        if (await catalog.instructions.current(tenant)).document.webhook.url is not None:
            event = Event("token.break_glass", {"token_id": token_id, "actor": actor, **glass})
            jobs = event_jobs(tenant, [event], now=now, max_attempts=webhook_attempts)
    try:
        return await mint_token(
            catalog,
            tenant=tenant,
            role=role,
            created_by=actor,
            now=now,
            expires_at=expires_at,
            token_id=token_id,
            audit=audit,
            jobs=jobs,
            unless_admin=by_operator and break_glass is None and role in ("admin", "processor"),
            break_glass=break_glass is not None,
        )
    except AdminExists:
        raise BreakGlassRequired(
            f"Tenant {tenant!r} has (or had) an admin: an operator-minted {role} token needs "
            '"break_glass": {"reason": "..."}; it is audited, sent to the tenant\'s webhook '
            f"and expires within {BREAK_GLASS_LIFETIME}."
        ) from None


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

    ``CALLVAULT_OPERATOR_TOKEN`` given: its hash is registered (once), or, when the value is
    an operator token already (the one the first start printed, one the CLI or the API
    minted), that token is taken over as the setting's; either way it is marked
    (``from_env``) and every earlier value's token is revoked (a rotation); nothing is
    shown. A value whose token was revoked (through the API or the CLI) or has expired is
    refused with a ``ConfigError``: it is never silently registered again, nor does the
    gateway start with a value that cannot log in, and the operator sets a new one. Not
    given: when no operator token is active (the first start, or after the operator
    revoked or let expire the last one) one is minted and returned for the caller to print;
    otherwise nothing is minted.
    """
    if configured is not None:
        if len(configured) < MIN_OPERATOR_TOKEN_CHARS:
            raise ConfigError(
                ENV_OPERATOR,
                f"must be at least {MIN_OPERATOR_TOKEN_CHARS} random characters "
                "(e.g. the output of `openssl rand -base64 32`).",
            )
        digest = hash_secret(configured)
        known = await catalog.tokens.by_hash(digest)
        if known is not None and known.role != "operator":
            raise ConfigError(
                ENV_OPERATOR, f"is the secret of {known.role} token {known.id}; set a new value."
            )
        if known is not None and known.revoked_at is not None:
            raise ConfigError(
                ENV_OPERATOR,
                f"this value's token ({known.id}) was revoked; it is not registered again. "
                "Set a new value (e.g. `openssl rand -base64 32`).",
            )
        if known is not None and not known.active(now):
            raise ConfigError(
                ENV_OPERATOR,
                f"this value's token ({known.id}) expired at {iso(known.expires_at)}; it "
                "cannot log in. Set a new value (e.g. `openssl rand -base64 32`).",
            )
        if known is not None and not known.from_env:
            log.info(
                "%s holds operator token %s (created by %s); a later value revokes it",
                ENV_OPERATOR,
                known.id,
                known.created_by,
            )
        if known is None:
            await catalog.tokens.create(
                id="tok_env_" + secrets.token_hex(6),  # not derived from the secret
                tenant_id=None,
                role="operator",
                token_hash=digest,
                created_by=ENV_OPERATOR,
                now=now,
            )
        for old in await catalog.tokens.rotate_env_operator(digest, now=now):
            log.warning(
                "%s changed: the operator token %s registered from its previous value is revoked",
                ENV_OPERATOR,
                old.id,
            )
        return None
    if any(token.active(now) for token in await catalog.tokens.list(None)):
        return None
    minted = await mint_token(
        catalog, tenant=None, role="operator", created_by="bootstrap", now=now
    )
    return minted.secret

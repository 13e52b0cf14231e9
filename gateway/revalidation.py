"""Live calls checked against what another node may change in the catalog meanwhile.

Requests need no such check: every request reads the catalog (its token, the tenant, the
current instructions, the limits), so a change made through any node governs the next
request on every node. A live call is different: its stream authenticated once, at its
start, and its session lives in one node's memory. Two changes must reach it:

* **the tenant was deleted** (through any node): the call ends, as the deleting node ends
  its own calls (reason ``tenant_deleted``): nothing more of a deleted tenant is recorded;
* **the token its WebSocket stream authenticated with was revoked or expired**: the stream's
  audio is refused (close 1008 ``unauthorized``) and the call waits for a reconnect with an
  active token, as after a drop (the audio it sent before stays the tenant's recording).

So each node asks the catalog every ``REVALIDATE`` about the tenants and stream tokens of
its live calls: two small indexed queries per node per interval (none without live calls),
never one per frame. That interval is the bound: a deletion or revocation made through
another node reaches a live call within ``REVALIDATE`` plus one ticker round. AudioSocket
and RTP streams hold no token (a secret id, SRTP keys from the announcement): the tenant's
deletion ends them; a call's own end or its instructions do not change under it (the
instructions version that allowed a call is stored with it, by design).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.session import CallSession
from storage.catalog import Catalog

REVALIDATE = timedelta(seconds=5)
"""How often a node checks its live calls' tenants and stream tokens in the catalog."""


@dataclass(frozen=True)
class Stale:
    """What one check found: calls of deleted tenants, and calls whose stream's token is no
    longer active."""

    deleted: list[CallSession]
    revoked: list[CallSession]


class Revalidation:
    """One node's periodic check of its live calls (``CallRegistry.tick`` runs it)."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self._checked_at: datetime | None = None

    async def check(self, sessions: Sequence[CallSession], now: datetime) -> Stale:
        """Every ``REVALIDATE`` (else nothing found): the live calls whose tenant is deleted,
        and the attached streams whose token was revoked or expired at ``now``; those are
        marked (``token_revoked``) so that their next frame is refused."""
        if self._checked_at is not None and now - self._checked_at < REVALIDATE:
            return Stale([], [])
        self._checked_at = now
        live = [s for s in sessions if not s.ended]
        gone = await self._catalog.tenants.deleted_among({s.tenant for s in live})
        deleted = [s for s in live if s.tenant in gone]
        streams = [s for s in live if s.tenant not in gone and s.token_id is not None]
        inactive = await self._catalog.tokens.inactive_among(
            {s.token_id for s in streams if s.token_id is not None}, now=now
        )
        revoked = [s for s in streams if s.token_id in inactive]
        for session in revoked:
            session.token_revoked = True
        return Stale(deleted, revoked)

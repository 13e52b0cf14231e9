"""Holding a named lease of the catalog for the length of a piece of work.

``catalog.leases`` claims, renews and releases one row at a time; this is the holder's side:
claim the lease before the work, renew it from inside the work's loop often enough that it
never runs out while the holder lives, and release it after, so that the next process need
not wait for it to run out. A holder that dies (or stalls past its lease) stops renewing,
and another process takes the lease over once it ran out.

Time: the lease is claimed at the ``now`` it is given (passed in: a fake clock's in tests);
renewals count on from it by the time that really passed (``elapsed``, a monotonic clock),
so a lease never moves backwards, whatever ``now`` is. Work that claims one lease after
another from one ``now`` (a retention pass over every tenant) claims each at that ``now``
moved on by the same monotonic clock, so that a lease claimed late in a long pass does not
start out already run out.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from crypto.errors import CallvaultError
from storage.catalog import Catalog

log = logging.getLogger(__name__)


def lease_owner(role: str) -> str:
    """A lease owner's name, unique across the fleet's processes and restarts (host, process
    id, ``role``, random): not a secret, it shows who holds what."""
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{role}:{secrets.token_hex(4)}"


class HeldLease:
    """One claimed lease; ``keep()`` renews it when a third of its length has passed."""

    def __init__(
        self,
        catalog: Catalog,
        name: str,
        owner: str,
        *,
        now: datetime,
        ttl: timedelta,
        elapsed: Callable[[], float],
    ) -> None:
        self._catalog = catalog
        self.name = name
        self.owner = owner
        self._now = now
        self._ttl = ttl
        self._elapsed = elapsed
        self._started = elapsed()
        self._renewed = self._started
        self.lost = False
        """Another owner took the lease over; this holder's work must stop."""

    @classmethod
    async def claim(
        cls,
        catalog: Catalog,
        name: str,
        owner: str,
        *,
        now: datetime,
        ttl: timedelta,
        elapsed: Callable[[], float] = time.monotonic,
    ) -> HeldLease | None:
        """The lease ``name``, claimed for ``owner`` at ``now``; ``None`` while another
        owner holds it."""
        if await catalog.leases.claim(name, owner, now=now, ttl=ttl) is None:
            return None
        return cls(catalog, name, owner, now=now, ttl=ttl, elapsed=elapsed)

    def _at(self) -> datetime:
        """The work's ``now`` moved on by the time that passed since the claim."""
        return self._now + timedelta(seconds=self._elapsed() - self._started)

    async def keep(self) -> bool:
        """Renew the lease once a third of its length passed since the last renewal (else
        nothing); whether it is still held. ``False`` (and ``lost``) once another owner took
        it over (this holder stalled past its end): the work stops where it is."""
        if self.lost:
            return False
        if self._elapsed() - self._renewed < self._ttl.total_seconds() / 3:
            return True
        if await self._catalog.leases.renew(self.name, self.owner, now=self._at(), ttl=self._ttl):
            self._renewed = self._elapsed()
            return True
        self.lost = True
        return False

    async def release(self) -> None:
        """Give the lease up. Never raises: a release that fails leaves a lease that runs
        out by itself."""
        try:
            await self._catalog.leases.release(self.name, self.owner)
        except CallvaultError as e:
            log.warning(
                "the lease %s could not be released (it runs out by itself): %s",
                self.name,
                e.code,
            )

"""``Catalog``: the catalog database, one attribute per aggregate.

The queries live in one module per aggregate (``tenants``, ``tokens``, ``instructions``,
``calls``, ``recordings``, ``objects``, ``keys``, ``holds``, ``retention``, ``jobs``,
``audit``, ``checkpoints``, ``leases``, ``nodes``, ``console_sessions``), each a class over
the shared ``CatalogCore`` (the pool, its transactions, the translation of driver errors and
the audit log's keys). This facade opens and closes the core, migrates and checks the
schema, and hands out the aggregates: ``catalog.tenants.create(...)``,
``catalog.jobs.claim(...)``, ``catalog.audit.append(...)``.

Each public method is its own short transaction and returns frozen records
(``storage.catalog.records``), never rows or ORM objects. Time is always passed in (``now``),
never read from the clock here. A write that spans aggregates in one transaction calls the
module-level functions that take the open connection (``audit.append_entries``,
``jobs.insert_jobs``), so that, for example, a recording's end and its audit event commit
together or not at all.
"""

from __future__ import annotations

from crypto.auditkeys import AuditKeyProvider
from storage.catalog.audit import Audit
from storage.catalog.calls import Calls
from storage.catalog.checkpoints import Checkpoints
from storage.catalog.consolesessions import ConsoleSessions
from storage.catalog.core import MIGRATIONS_DIR, CatalogCore
from storage.catalog.holds import Holds
from storage.catalog.instructions import CatalogInstructions
from storage.catalog.jobs import Jobs
from storage.catalog.leases import Leases
from storage.catalog.nodes import Nodes
from storage.catalog.objects import Keys, Objects
from storage.catalog.recordings import Recordings
from storage.catalog.retention import Retention
from storage.catalog.tenants import Tenants
from storage.catalog.tokens import Tokens

__all__ = ["MIGRATIONS_DIR", "Catalog"]


class Catalog:
    """The catalog database: tenants, tokens, instructions, calls, recordings, objects,
    the key table, legal holds, retention, jobs, the audit log and its checkpoints, the
    fleet's named leases, the node registry and the browser console's sessions."""

    def __init__(self, core: CatalogCore) -> None:
        self.core = core
        self.tenants = Tenants(core)
        self.tokens = Tokens(core)
        self.instructions = CatalogInstructions(core)
        self.calls = Calls(core)
        self.recordings = Recordings(core)
        self.objects = Objects(core)
        self.keys = Keys(core)
        self.holds = Holds(core)
        self.retention = Retention(core)
        self.jobs = Jobs(core)
        self.audit = Audit(core)
        self.checkpoints = Checkpoints(core)
        self.leases = Leases(core)
        self.nodes = Nodes(core)
        self.console_sessions = ConsoleSessions(core)

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        audit_keys: AuditKeyProvider,
        pool_size: int = 10,
        connect_timeout_s: float = 10.0,
        busy_timeout_s: float = 10.0,
    ) -> Catalog:
        """Create the engine for ``url`` (any form ``async_database_url`` accepts), whose
        audit log takes its keys from ``audit_keys`` (the keyring's ``AuditKeyring``).

        Nothing is connected yet: ``check()`` tells whether the database answers, and
        ``migrate()`` brings its schema to the current version.
        """
        return cls(
            CatalogCore.open(
                url,
                audit_keys=audit_keys,
                pool_size=pool_size,
                connect_timeout_s=connect_timeout_s,
                busy_timeout_s=busy_timeout_s,
            )
        )

    @property
    def backend(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.core.backend

    async def close(self) -> None:
        """Close every pooled connection."""
        await self.core.close()

    async def migrate(self) -> None:
        """Bring the schema to the newest migration (Alembic ``upgrade head``); safe to run
        from several nodes at once."""
        await self.core.migrate()

    async def check(self) -> None:
        """Raise ``CatalogUnavailable`` unless the database answers and its schema is at the
        newest migration (for readiness probes)."""
        await self.core.check()

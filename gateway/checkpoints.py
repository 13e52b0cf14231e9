"""Making the audit checkpoints: signing each tenant's moved chain head and telling its webhook.

``serve`` runs ``run_checkpoints`` every ``CALLVAULT_AUDIT__CHECKPOINT_INTERVAL``;
``callvault audit checkpoint`` and ``POST /v1/tenants/{tenant}/audit/checkpoints`` make them
on demand. Each checkpoint queues the webhook event ``audit.checkpoint`` in its own
transaction, carrying everything needed to check it later without callvault::

    {"event": "audit.checkpoint", "tenant": "acme",
     "data": {"seq": 42, "hash": "…", "at": "2026-11-27T10:05:00.000000Z",
              "key_id": "ed25519-…", "signature": "<base64>"}}

so that the tenant keeps copies out of the operator's database: a chain cut back behind a
checkpoint the tenant holds is caught even if the checkpoint rows were deleted too.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway.webhooks import Event, event_jobs
from storage.catalog import Catalog, Checkpoint, NewJob
from storage.catalog.auditchain import format_at
from storage.errors import AuditBroken

log = logging.getLogger(__name__)

EVENT = "audit.checkpoint"


def checkpoint_view(checkpoint: Checkpoint) -> dict[str, Any]:
    """A checkpoint as the API and the webhook show it (``at`` exactly as signed)."""
    return {
        "seq": checkpoint.seq,
        "hash": checkpoint.hash,
        "at": format_at(checkpoint.at),
        "key_id": checkpoint.key_id,
        "signature": checkpoint.signature,
    }


def checkpoint_event_id(checkpoint: Checkpoint) -> str:
    """The webhook event id of a checkpoint: derived from it, so it is queued once."""
    digest = hashlib.sha256(f"{checkpoint.tenant_id}\0{checkpoint.seq}".encode()).hexdigest()
    return f"evt_ckpt_{digest[:32]}"


@dataclass
class CheckpointReport:
    """What one round made: the checkpoints, the tenants whose chain was refused, and those
    that failed for another reason (logged; the round went on)."""

    made: list[Checkpoint] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


class Checkpointer:
    """Signs tenants' audit heads through ``catalog.checkpoints`` and queues their events."""

    def __init__(self, catalog: Catalog, *, max_attempts: int) -> None:
        self._catalog = catalog
        self._max_attempts = max_attempts

    async def make(self, tenant: str, now: datetime, *, current: bool = False) -> Checkpoint | None:
        """A checkpoint of the tenant's head if it moved since the latest (None if not, or
        with ``current`` the latest, checked); ``AuditBroken`` if the latest checkpoint is
        not the gateway's or the chain does not extend it."""
        jobs = await self._jobs(tenant, now)
        return await self._catalog.checkpoints.make(tenant, now, jobs=jobs, current=current)

    async def make_due(self, now: datetime) -> CheckpointReport:
        """A checkpoint for every tenant whose head moved since its latest one. A tenant
        whose chain is broken, or whose checkpoint fails for any other reason (a row that
        does not decode, the database), is reported and logged, and the others go on."""
        report = CheckpointReport()
        for tenant in await self._catalog.checkpoints.due():
            try:
                made = await self.make(tenant, now)
            except AuditBroken as e:
                log.error("audit checkpoint of %s refused: %s", tenant, e.message)
                report.broken.append(tenant)
                continue
            except Exception as e:  # one tenant must not stop the others' checkpoints
                # The type only: a message could quote stored content.
                log.error("audit checkpoint of %s failed: %s", tenant, type(e).__name__)
                report.failed.append(tenant)
                continue
            if made is not None:
                report.made.append(made)
        return report

    async def _jobs(
        self, tenant: str, now: datetime
    ) -> Callable[[Checkpoint], list[NewJob]] | None:
        try:
            instructions = await self._catalog.instructions.current(tenant)
        except Exception as e:  # the head is still signed; only its webhook event is lost
            log.error(
                "audit checkpoint of %s: webhook settings unreadable (%s); signed without "
                "queueing audit.checkpoint",
                tenant,
                type(e).__name__,
            )
            return None
        if instructions.document.webhook.url is None:
            return None

        def build(checkpoint: Checkpoint) -> list[NewJob]:
            event = Event(
                EVENT, checkpoint_view(checkpoint), event_id=checkpoint_event_id(checkpoint)
            )
            return event_jobs(tenant, [event], now=now, max_attempts=self._max_attempts)

        return build


async def run_checkpoints(
    checkpointer: Checkpointer, now: Callable[[], datetime], interval: float
) -> None:
    """Make due checkpoints every ``interval`` seconds, the first time right after start."""
    while True:
        try:
            report = await checkpointer.make_due(now())
            if report.made:
                log.info("audit checkpoints: %d made", len(report.made))
        except Exception:  # the loop must outlive any one failure (the catalog was down)
            log.exception("audit checkpoints failed")
        await asyncio.sleep(interval)

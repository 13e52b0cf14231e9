"""The long-lived services of one callvault process, built once from the settings.

``serve``, ``worker`` and the CLI's maintenance commands all open the same services the
same way, so that a setting means one thing everywhere: the catalog (migrated to the
current schema, its audit log keyed by the keyring's audit keys and any legacy chain
re-keyed), the object store, the keyring (refusing a wrong master key) and the media vault
that ties them together.
"""

from __future__ import annotations

import functools
import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

from prometheus_client import CollectorRegistry

from ai.models import resolve_model
from ai.pipeline import Analyzer
from ai.transcribe import Transcriber, WhisperOptions, WhisperTranscriber
from ai.worker import AnalysisWorker, WorkerMetrics
from crypto.auditkeys import AuditKeyring
from crypto.errors import ConfigError
from crypto.keys import KeyProvider, LocalKeyring, load_master_key
from gateway.clock import Clock
from gateway.settings import Settings
from gateway.webhooks import WebhookSender, deletion_notifier, queue_event
from storage.catalog import Catalog
from storage.retention import RetentionSweeper
from storage.spool import Spool
from storage.store import ObjectStore
from storage.stores import open_store
from storage.vault import MediaVault


@dataclass(frozen=True)
class Services:
    catalog: Catalog
    store: ObjectStore
    keys: KeyProvider
    vault: MediaVault
    audit_keys: AuditKeyring


def open_keyring(settings: Settings) -> LocalKeyring:
    """The local keyring, or a ``ConfigError`` naming the setting that is wrong."""
    secret = settings.master_key.get_secret_value() if settings.master_key else None
    master_key = load_master_key(secret, settings.data_dir)
    return LocalKeyring.open(settings.data_dir, master_key)


def open_configured_store(settings: Settings) -> ObjectStore:
    """The object store the settings name, or a ``ConfigError`` naming the bad setting."""
    s3 = settings.store
    try:
        return open_store(
            settings.store_url,
            endpoint_url=s3.endpoint_url,
            access_key=s3.access_key.get_secret_value() if s3.access_key else None,
            secret_key=s3.secret_key.get_secret_value() if s3.secret_key else None,
            region=s3.region,
            part_size=s3.part_size,
        )
    except ValueError as e:
        raise ConfigError("CALLVAULT_STORE__URL", str(e)) from None


@asynccontextmanager
async def open_services(
    settings: Settings, *, registry: CollectorRegistry | None = None, clock: Clock | None = None
) -> AsyncIterator[Services]:
    """The services of one process. The catalog's audit log always takes its keys from the
    keyring; at the keyring's first start with audit keys, every chain written before they
    existed is re-keyed here, once, before anything else can append to it (``clock`` dates
    its ``audit.rekeyed`` event)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    keys = open_keyring(settings)
    audit_keys = AuditKeyring(keys)
    catalog = await Catalog.open(settings.catalog_url, audit_keys=audit_keys)
    try:
        await catalog.migrate()
        now = (clock or Clock()).now()
        # The first start with audit keys re-keys every legacy chain and closes the door:
        # later, only a re-keying that was started and not finished is completed.
        closed = await audit_keys.legacy_closed()
        await catalog.audit.rekey_legacy(now, only_pending=closed)
        if not closed:
            await audit_keys.close_legacy(now)
        store = open_configured_store(settings)
        spool = Spool(settings.data_dir / "spool", store)
        try:
            vault = MediaVault(
                catalog=catalog,
                store=store,
                keys=keys,
                segment_size=settings.crypto.segment_size,
                registry=registry,
                spool=spool,
            )
            yield Services(
                catalog=catalog, store=store, keys=keys, vault=vault, audit_keys=audit_keys
            )
        finally:
            await spool.close()
            await store.close()
    finally:
        await catalog.close()


def build_analyzer(settings: Settings) -> Analyzer:
    """The AI pipeline of one worker; its model (verified against its pinned sha256) loads
    in the analyzer's inference thread on first use, once."""
    ai = settings.ai

    def load() -> Transcriber:
        model = resolve_model(ai.model, cache_dir=settings.model_cache_dir)
        options = WhisperOptions(
            device=ai.device,
            compute_type=ai.compute_type,
            cpu_threads=ai.cpu_threads,
            beam_size=ai.beam_size,
        )
        return WhisperTranscriber(model, options)

    return Analyzer(load)


def build_worker(
    settings: Settings,
    services: Services,
    *,
    now: Callable[[], datetime],
    metrics: WorkerMetrics | None = None,
    analyzer: Analyzer | None = None,
) -> AnalysisWorker:
    """An AI worker on the settings' lease, poll interval and backoff."""
    ai = settings.ai
    return AnalysisWorker(
        catalog=services.catalog,
        vault=services.vault,
        analyzer=analyzer or build_analyzer(settings),
        now=now,
        lease=ai.lease,
        poll_interval=ai.poll_interval,
        retry_backoff=ai.retry_backoff,
        notify=functools.partial(
            queue_event, services.catalog, max_attempts=settings.webhooks.max_attempts
        ),
        metrics=metrics,
    )


def build_sender(
    settings: Settings,
    services: Services,
    *,
    now: Callable[[], datetime],
    registry: CollectorRegistry | None = None,
) -> WebhookSender:
    """The webhook sender of one process (deliveries are jobs: never on the ingest path)."""
    owner = f"{socket.gethostname()}:{os.getpid()}:webhooks:{secrets.token_hex(3)}"
    return WebhookSender(services.catalog, settings.webhooks, now, owner=owner, registry=registry)


def build_sweeper(
    settings: Settings, services: Services, *, registry: CollectorRegistry | None = None
) -> RetentionSweeper:
    """The retention sweeper (it reads each tenant's windows from its current
    instructions), events to the tenant's webhook."""
    return RetentionSweeper(
        catalog=services.catalog,
        store=services.store,
        notify=deletion_notifier(services.catalog, max_attempts=settings.webhooks.max_attempts),
        registry=registry,
    )

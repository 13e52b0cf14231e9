"""The long-lived services of one callvault process, built once from the settings.

``serve``, ``worker`` and the CLI's maintenance commands all open the same services the
same way, so that a setting means one thing everywhere: the catalog (migrated to the
current schema, its webhook secrets sealed, its audit log keyed by the keyring's audit keys
and any legacy chain re-keyed), the object store, the keyring (refusing a wrong master key),
the key provider that wraps the DEKs (the keyring itself, or OpenBao/Vault transit with
``CALLVAULT_KEYS__PROVIDER=vault``, refused at start when it is unreachable or its token
cannot do the work) and the media vault that ties them together.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import secrets
import shutil
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from prometheus_client import CollectorRegistry

from ai.models import resolve_model
from ai.pipeline import Analyzer
from ai.transcribe import Transcriber, WhisperOptions, WhisperTranscriber
from ai.worker import AnalysisWorker, WorkerMetrics
from crypto.auditkeys import AuditKeyring
from crypto.errors import ConfigError
from crypto.keyfile import NEW
from crypto.keys import MASTER_KEY_FILE, KeyProvider, LocalKeyring, admin_lock
from crypto.masterkey import KeyFileRotation, load_master_key, master_key_source, read_key_file
from crypto.vaultkeys import VaultConfig, VaultTransitKeys
from gateway.catalogkeys import keyring_in_catalog, open_catalog_keyring
from gateway.clock import Clock
from gateway.nodes import node_id_of
from gateway.settings import KeysSettings, Settings
from gateway.webhooks import WebhookSender, deletion_notifier, queue_event
from storage.catalog import Catalog
from storage.retention import RetentionSweeper
from storage.spool import Spool
from storage.store import ObjectStore
from storage.stores import open_store
from storage.vault import MediaVault
from storage.webhooksecret import seal_clear_secrets

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Services:
    catalog: Catalog
    store: ObjectStore
    keys: KeyProvider
    vault: MediaVault
    audit_keys: AuditKeyring


def open_keyring(settings: Settings) -> LocalKeyring:
    """The keyring ``CALLVAULT_KEYS__PROVIDER`` names, or a ``ConfigError`` naming the
    setting that is wrong: the fleet's keyring in the catalog (``gateway.catalogkeys``) for
    ``catalog``, and for ``vault`` on a PostgreSQL catalog (there it keeps only the audit
    keys and the signing key, which every node of the fleet must share); else the keyring
    file in the data dir (``local``, and ``vault`` on one node's SQLite catalog).

    A master key kept in the data dir's file is read again from it when the keyring stops
    opening with the one in hand (``callvault keys rotate-master`` replaced both), so that
    running processes go on; one from ``CALLVAULT_MASTER_KEY`` takes a restart. A rotation
    of the file's key that stopped after the new key reached the file is finished here."""
    if keyring_in_catalog(settings):
        return open_catalog_keyring(settings)
    secret = settings.master_key.get_secret_value() if settings.master_key else None
    master_key = load_master_key(secret, settings.data_dir)
    if secret is not None:
        return LocalKeyring.open(settings.data_dir, master_key)
    path = settings.data_dir / MASTER_KEY_FILE
    keyring = LocalKeyring.open(
        settings.data_dir,
        master_key,
        source=master_key_source(path),
        reload_master=lambda: read_key_file(path),
    )
    if keyring.rotation_side == NEW:
        _finish_file_rotation(settings.data_dir)
    return keyring


async def open_key_provider(settings: Settings, keyring: LocalKeyring) -> KeyProvider:
    """What wraps the DEKs: ``keyring`` itself (``local``), or OpenBao/Vault transit
    (``vault``), checked reachable with a token that may do what it must (else a
    ``ConfigError`` naming the setting). ``close_key_provider`` closes it."""
    if settings.keys.provider == "vault":
        return await VaultTransitKeys.open(vault_config(settings.keys))
    return keyring  # local, or the catalog's (``open_keyring``)


def close_key_provider(keys: KeyProvider) -> None:
    """Close what ``open_key_provider`` opened (the local keyring holds nothing open)."""
    if isinstance(keys, VaultTransitKeys):
        keys.close()


def vault_config(keys: KeysSettings) -> VaultConfig:
    """The transit provider's settings, ``CALLVAULT_KEYS__VAULT_*``."""
    return VaultConfig(
        addr=keys.vault_addr or "",
        token=keys.vault_token.get_secret_value() if keys.vault_token else "",
        mount=keys.vault_mount,
        key_prefix=keys.vault_key_prefix,
        timeout_s=keys.vault_timeout.total_seconds(),
    )


def _finish_file_rotation(data_dir: Path) -> None:
    """The file holds the new key, the keyring both: drop the old wraps now (values that
    processes with the old key added are re-wrapped from ``master.key.old``), unless a key
    command is running: the rotation is its business then."""
    with admin_lock(data_dir, wait=False) as free:
        if free:
            KeyFileRotation(data_dir).run()
            log.warning("finished the master-key rotation of %s that had stopped", data_dir)


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


def spool_bound(settings: Settings) -> int:
    """The spool's bound: ``CALLVAULT_INGEST__SPOOL_MAX_BYTES``, or half the space free on
    the data dir's disk now. Half, because the bound only stops *new* calls: the other half
    is what the calls already recording (and the catalog, on SQLite) write on into while
    the store stays down, so that a full disk does not cut them off."""
    if settings.ingest.spool_max_bytes is not None:
        return settings.ingest.spool_max_bytes
    return shutil.disk_usage(settings.data_dir).free // 2


@asynccontextmanager
async def open_services(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    clock: Clock | None = None,
    spooled: bool = False,
) -> AsyncIterator[Services]:
    """The services of one process. The catalog's audit log always takes its keys from the
    keyring; at the keyring's first start with audit keys, every chain written before they
    existed is re-keyed here, once, before anything else can append to it (``clock`` dates
    its ``audit.rekeyed`` event). ``spooled``: the vault gets the node's spool (``serve``,
    which records and publishes it); other processes (AI worker children, CLI commands)
    neither measure nor touch it while ``serve`` runs."""
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # The keyring keeps the audit keys and the checkpoint signing key (its sections) with
    # every provider; with `vault` only the DEKs are wrapped elsewhere. Opening it blocks
    # (the catalog keyring's engine, its migration under an advisory lock, the row's lock;
    # a file lock): in a thread, so the loop of a process that runs more goes on.
    keyring = await asyncio.to_thread(open_keyring, settings)
    try:
        audit_keys = AuditKeyring(keyring)
        keys = await open_key_provider(settings, keyring)
        try:
            async with _services(settings, keys, audit_keys, registry, clock, spooled) as services:
                yield services
        finally:
            close_key_provider(keys)
    finally:
        keyring.close()


@asynccontextmanager
async def _services(
    settings: Settings,
    keys: KeyProvider,
    audit_keys: AuditKeyring,
    registry: CollectorRegistry | None,
    clock: Clock | None,
    spooled: bool,
) -> AsyncIterator[Services]:
    """``open_services`` on the keyring and key provider it opened (and closes)."""
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
        # A catalog from before webhook secrets were sealed holds them in clear; the
        # migrations cannot reach the keys, so this is done here (a no-op once done).
        await seal_clear_secrets(catalog, keys, now=now)
        store = open_configured_store(settings)
        spool = (
            Spool(
                settings.data_dir / "spool",
                store,
                max_bytes=spool_bound(settings),
                node_id=node_id_of(settings),
            )
            if spooled
            else None
        )
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
            if spool is not None:
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
        node_dead_after=settings.node.dead_after,
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
    return WebhookSender(
        services.catalog, services.keys, settings.webhooks, now, owner=owner, registry=registry
    )


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

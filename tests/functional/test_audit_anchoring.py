"""The anchored audit log against real databases (SQLite and PostgreSQL): the keyed chain and
its signed checkpoints, attacked through a second engine with raw SQL, as a database writer
(who has neither the keyring nor the master key) would; and the one-time re-keying of chains
written with the old plain SHA-256 formula."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from crypto.auditkeys import AuditKeyring
from crypto.errors import KeyUnavailable
from crypto.keys import LocalKeyring
from gateway.checkpoints import Checkpointer
from storage.catalog import AuditCheck, Catalog
from storage.catalog.auditchain import GENESIS_HASH, event_hash, legacy_event_hash
from storage.errors import AuditBroken
from tests.gateway import FakeClock
from tests.keyring import MASTER

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


@pytest.fixture
def keyring(tmp_path: Path) -> LocalKeyring:
    return LocalKeyring.open(tmp_path / "keys", MASTER)


@pytest.fixture
async def catalog(database_url: str, keyring: LocalKeyring) -> AsyncIterator[Catalog]:
    catalog = await Catalog.open(database_url, audit_keys=AuditKeyring(keyring))
    try:
        await catalog.migrate()
        yield catalog
    finally:
        await catalog.close()


@pytest.fixture
async def raw(database_url: str) -> AsyncIterator[AsyncEngine]:
    """The attacker's engine: write access to the database, nothing else."""
    engine = create_async_engine(database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


async def execute(raw: AsyncEngine, sql: str, **params: Any) -> int:
    async with raw.begin() as conn:
        return (await conn.execute(sa.text(sql), params)).rowcount


async def rows(raw: AsyncEngine, tenant: str = "acme") -> list[Any]:
    async with raw.connect() as conn:
        result = await conn.execute(
            sa.text("SELECT * FROM audit_events WHERE tenant_id = :t ORDER BY seq"), {"t": tenant}
        )
        return list(result.all())


def stored_at(catalog: Catalog, at: datetime) -> datetime:
    """A time as raw SQL must bind it (SQLite's column holds naive UTC)."""
    return at if catalog.backend == "postgresql" else at.replace(tzinfo=None)


def detail_of(row: Any) -> dict[str, Any]:
    return row.detail if isinstance(row.detail, dict) else dict(json.loads(row.detail))


def aware(value: datetime | str) -> datetime:
    """A stored event time, as raw SQL reads it (SQLite: naive UTC text), made aware."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


async def add_events(catalog: Catalog, n: int, tenant: str = "acme") -> None:
    for i in range(n):
        await catalog.audit.append(
            tenant, f"tok_{i}", "audio.read", f"rec-{i}", {"bytes": i}, T0 + timedelta(seconds=i)
        )


async def rewrite_from(
    catalog: Catalog,
    raw: AsyncEngine,
    seq: int,
    rehash: Any,
    *,
    edit: dict[str, Any] | None = None,
    tenant: str = "acme",
) -> None:
    """The attack: change event ``seq`` (``edit``), recompute every hash from it on with
    ``rehash(prev, row, detail)`` and move the tenant's head to the new last hash."""
    found = await rows(raw, tenant)
    prev = GENESIS_HASH if seq == 1 else found[seq - 2].hash
    for row in found[seq - 1 :]:
        detail = detail_of(row)
        if edit is not None and row.seq == seq:
            detail = edit
        digest = rehash(prev, row, detail)
        await execute(
            raw,
            "UPDATE audit_events SET detail = :d, prev_hash = :p, hash = :h"
            " WHERE tenant_id = :t AND seq = :s",
            d=json.dumps(detail),
            p=prev,
            h=digest,
            t=tenant,
            s=row.seq,
        )
        prev = digest
    await execute(raw, "UPDATE tenants SET audit_head = :h WHERE id = :t", h=prev, t=tenant)


def legacy(prev: str, row: Any, detail: dict[str, Any]) -> str:
    """The chain's old, unkeyed formula: what a database writer can compute."""
    return legacy_event_hash(
        prev,
        seq=row.seq,
        at=aware(row.at),
        actor=row.actor,
        action=row.action,
        object=row.object,
        detail=detail,
    )


def keyed(key: bytes) -> Any:
    def rehash(prev: str, row: Any, detail: dict[str, Any]) -> str:
        return event_hash(
            key,
            prev,
            seq=row.seq,
            at=aware(row.at),
            actor=row.actor,
            action=row.action,
            object=row.object,
            detail=detail,
        )

    return rehash


# --- the keyed chain ----------------------------------------------------------------------


async def test_an_edit_rehashed_with_the_old_formula_is_found(
    catalog: Catalog, raw: AsyncEngine
) -> None:
    await catalog.tenants.create("acme", "Acme", "eu", T0)
    await add_events(catalog, 6)
    assert await catalog.audit.verify("acme") == AuditCheck(True, None, 6)
    # Event 3 edited, and every hash from it on and the head recomputed with SHA-256: under
    # the old chain this verified; now the first edited event is named.
    await rewrite_from(catalog, raw, 3, legacy, edit={"bytes": 999})
    assert await catalog.audit.verify("acme") == AuditCheck(False, 3, 6, reason="chain")
    # The whole chain recomputed with SHA-256 from the first event: broken at the first.
    await rewrite_from(catalog, raw, 1, legacy)
    assert await catalog.audit.verify("acme") == AuditCheck(False, 1, 6, reason="chain")


async def test_an_edit_rehashed_under_a_wrong_key_is_found(
    catalog: Catalog, raw: AsyncEngine
) -> None:
    await catalog.tenants.create("acme", "Acme", "eu", T0)
    await add_events(catalog, 6)
    await rewrite_from(catalog, raw, 4, keyed(bytes(32)), edit={"bytes": -1})
    assert await catalog.audit.verify("acme") == AuditCheck(False, 4, 6, reason="chain")


async def test_a_chain_keyed_by_the_keyring_cannot_be_declared_legacy(
    catalog: Catalog, raw: AsyncEngine
) -> None:
    # Nothing in the database says whether a chain is keyed: a database writer who rewrites
    # it with SHA-256 gets no re-keying that would launder it.
    await catalog.tenants.create("acme", "Acme", "eu", T0)
    await add_events(catalog, 3)
    await rewrite_from(catalog, raw, 1, legacy, edit={"forged": True})
    assert await catalog.audit.rekey_legacy(T0) == []
    assert await catalog.audit.verify("acme") == AuditCheck(False, 1, 3, reason="chain")


# --- checkpoints ----------------------------------------------------------------------------


async def test_checkpoints_are_made_when_the_head_moved_and_verify_with_the_public_key(
    catalog: Catalog,
) -> None:
    clock = FakeClock(T0)
    await catalog.tenants.create("acme", "Acme", "eu", T0)
    await add_events(catalog, 2)
    assert await catalog.checkpoints.due() == ["acme"]
    first = await catalog.checkpoints.make("acme", clock.now())
    assert first is not None and (first.seq, first.at) == (2, T0)
    assert await catalog.checkpoints.due() == []
    clock.advance(300)
    assert await catalog.checkpoints.make("acme", clock.now()) is None  # the head stayed
    await add_events(catalog, 1)
    assert await catalog.checkpoints.due() == ["acme"]
    second = await catalog.checkpoints.make("acme", clock.now())
    assert second is not None and (second.seq, second.at) == (3, T0 + timedelta(seconds=300))
    assert await catalog.checkpoints.list("acme") == [first, second]
    assert await catalog.checkpoints.latest("acme") == second
    head = (await catalog.audit.list("acme"))[-1]
    assert second.hash == head.hash

    # The signature, checked with cryptography alone over the documented message.
    signer = await catalog.core.audit_keys.checkpoint_signer()
    message = b"callvault-audit-checkpoint/v1\n" + json.dumps(
        {
            "at": "2026-11-27T10:05:00.000000Z",
            "hash": head.hash,
            "key_id": signer.key_id,
            "seq": 3,
            "tenant": "acme",
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode("utf-8")
    public = Ed25519PublicKey.from_public_bytes(signer.public_key)
    public.verify(base64.b64decode(second.signature), message)
    assert await catalog.audit.verify("acme") == AuditCheck(True, None, 3, checkpoint=3)


async def test_a_chain_cut_back_behind_its_checkpoint_is_found(
    catalog: Catalog, raw: AsyncEngine
) -> None:
    await catalog.tenants.create("acme", "Acme", "eu", T0)
    await add_events(catalog, 6)
    await catalog.checkpoints.make("acme", T0)
    # The last two events removed and the head moved back to the fourth: a valid chain.
    fourth = (await rows(raw))[3]
    await execute(raw, "DELETE FROM audit_events WHERE tenant_id = 'acme' AND seq > 4")
    await execute(
        raw, "UPDATE tenants SET audit_seq = 4, audit_head = :h WHERE id = 'acme'", h=fourth.hash
    )
    check = await catalog.audit.verify("acme")
    assert check == AuditCheck(False, 5, 4, reason="behind_checkpoint", checkpoint=6)
    # The gateway signs no new checkpoint over it either.
    await add_events(catalog, 3)  # the head moves past the checkpoint again
    with pytest.raises(AuditBroken) as refused:
        await catalog.checkpoints.make("acme", T0)
    assert refused.value.seq == 6
    assert [c.seq for c in await catalog.checkpoints.list("acme")] == [6]


async def test_a_chain_rewritten_before_its_checkpoint_is_found(
    catalog: Catalog, raw: AsyncEngine
) -> None:
    # Even someone who stole a tenant's audit key (but not the signing key) and rewrote
    # the chain consistently is caught by the checkpoint.
    await catalog.tenants.create("acme", "Acme", "eu", T0)
    await add_events(catalog, 6)
    await catalog.checkpoints.make("acme", T0)
    found = await catalog.core.audit_keys.audit_key("acme")
    assert found is not None
    await rewrite_from(catalog, raw, 3, keyed(found.key), edit={"bytes": 999})
    check = await catalog.audit.verify("acme")
    assert check == AuditCheck(False, 6, 6, reason="checkpoint_mismatch", checkpoint=6)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("hash", "ab" * 32),
        ("signature", base64.b64encode(bytes(64)).decode()),
        ("key_id", "ed25519-0000000000000000"),
        ("at", T0 + timedelta(days=1)),
    ],
)
async def test_a_tampered_checkpoint_row_is_found(
    catalog: Catalog, raw: AsyncEngine, column: str, value: Any
) -> None:
    await catalog.tenants.create("acme", "Acme", "eu", T0)
    await add_events(catalog, 3)
    await catalog.checkpoints.make("acme", T0)
    if isinstance(value, datetime):
        value = stored_at(catalog, value)
    changed = await execute(
        raw,
        f"UPDATE audit_checkpoints SET {column} = :v WHERE tenant_id = 'acme'",  # noqa: S608 - a column of the list above
        v=value,
    )
    assert changed == 1
    check = await catalog.audit.verify("acme")
    assert check == AuditCheck(False, None, 3, reason="checkpoint_signature", checkpoint=3)


async def test_a_checkpoint_of_another_tenant_does_not_vouch_for_this_one(
    catalog: Catalog, raw: AsyncEngine
) -> None:
    for tenant in ("acme", "beta"):
        await catalog.tenants.create(tenant, tenant, "eu", T0)
    await add_events(catalog, 3, "acme")
    await add_events(catalog, 3, "beta")
    await catalog.checkpoints.make("beta", T0)
    await execute(
        raw,
        "INSERT INTO audit_checkpoints (tenant_id, seq, hash, at, key_id, signature)"
        " SELECT 'acme', seq, hash, at, key_id, signature FROM audit_checkpoints"
        " WHERE tenant_id = 'beta'",
    )
    assert (await catalog.audit.verify("acme")).reason == "checkpoint_signature"


# --- legacy chains --------------------------------------------------------------------------


async def legacy_chain(catalog: Catalog, raw: AsyncEngine, n: int, tenant: str = "acme") -> str:
    """A tenant whose chain was written by the old code: ``n`` events hashed with SHA-256
    and no audit key in the keyring. Returns the old head."""
    await catalog.tenants.create(tenant, tenant, "eu", T0)  # no event: no key yet
    prev = GENESIS_HASH
    for seq in range(1, n + 1):
        at = T0 + timedelta(seconds=seq)
        detail = {"n": seq}
        digest = legacy_event_hash(
            prev, seq=seq, at=at, actor="tok_1", action="audio.read", object=None, detail=detail
        )
        await execute(
            raw,
            "INSERT INTO audit_events (tenant_id, seq, at, actor, action, object, detail,"
            " prev_hash, hash) VALUES (:t, :s, :at, 'tok_1', 'audio.read', NULL, :d, :p, :h)",
            t=tenant,
            s=seq,
            at=stored_at(catalog, at),
            d=json.dumps(detail),
            p=prev,
            h=digest,
        )
        prev = digest
    await execute(
        raw,
        "UPDATE tenants SET audit_seq = :s, audit_head = :h WHERE id = :t",
        s=n,
        h=prev,
        t=tenant,
    )
    return prev


async def test_a_legacy_chain_is_rekeyed_once_from_its_first_event(
    catalog: Catalog, raw: AsyncEngine, keyring: LocalKeyring
) -> None:
    old_head = await legacy_chain(catalog, raw, 4)
    before = await catalog.audit.list("acme")
    assert await catalog.audit.verify("acme") == AuditCheck(False, None, 4, reason="not_keyed")
    with pytest.raises(KeyUnavailable, match="not keyed yet"):
        await catalog.audit.append("acme", "x", "y", None, {}, T0)
    assert await catalog.checkpoints.make("acme", T0) is None  # not signed before re-keying

    later = T0 + timedelta(hours=1)
    assert await catalog.audit.rekey_legacy(later) == ["acme"]
    assert await catalog.audit.verify("acme") == AuditCheck(True, None, 5)
    after = await catalog.audit.list("acme")
    # Every event kept as it was, re-linked by HMAC from the first; then the record of it.
    assert [(e.seq, e.at, e.actor, e.action, e.detail) for e in after[:4]] == [
        (e.seq, e.at, e.actor, e.action, e.detail) for e in before
    ]
    assert all(a.hash != b.hash for a, b in zip(after, before, strict=False))
    rekeyed = after[4]
    assert (rekeyed.action, rekeyed.actor, rekeyed.at) == ("audit.rekeyed", "gateway", later)
    assert rekeyed.detail == {
        "old_seq": 4,
        "old_head": old_head,
        "events": 4,
        "legacy_ok": True,
        "legacy_broken_at": None,
    }
    found = await AuditKeyring(keyring).audit_key("acme")  # another process sees it active
    assert found is not None and found.active
    assert after[0].hash == keyed(found.key)(GENESIS_HASH, await first_row(raw), {"n": 1})

    # Once: a second start re-keys nothing, and appends go on.
    assert await catalog.audit.rekey_legacy(later) == []
    await catalog.audit.append("acme", "x", "y", None, {}, later)
    assert await catalog.audit.verify("acme") == AuditCheck(True, None, 6)


async def first_row(raw: AsyncEngine) -> Any:
    return (await rows(raw))[0]


async def test_a_legacy_chain_broken_before_rekeying_stays_on_record(
    catalog: Catalog, raw: AsyncEngine
) -> None:
    await legacy_chain(catalog, raw, 4)
    await execute(
        raw, "UPDATE audit_events SET detail = :d WHERE tenant_id = 'acme' AND seq = 2", d="{}"
    )
    assert await catalog.audit.rekey_legacy(T0) == ["acme"]
    rekeyed = (await catalog.audit.list("acme"))[-1]
    assert (rekeyed.detail["legacy_ok"], rekeyed.detail["legacy_broken_at"]) == (False, 2)


async def test_a_crash_between_rekeying_and_activating_the_key_is_finished_at_next_start(
    catalog: Catalog, raw: AsyncEngine, keyring: LocalKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    await legacy_chain(catalog, raw, 3)

    async def crash(tenant: str) -> None:
        raise OSError("killed before the keyring was written")

    keys = catalog.core.audit_keys
    assert isinstance(keys, AuditKeyring)
    with monkeypatch.context() as patch:
        patch.setattr(keys, "activate_audit_key", crash)
        with pytest.raises(OSError, match="killed"):
            await catalog.audit.rekey("acme", T0)
    pending = await AuditKeyring(keyring).audit_key("acme")
    assert pending is not None and not pending.active  # the chain is keyed, the key pending
    # The next start: the head already carries the pending key's HMAC; only activated.
    assert await catalog.audit.rekey_legacy(T0) == []
    assert [e.action for e in await catalog.audit.list("acme")].count("audit.rekeyed") == 1
    assert await catalog.audit.verify("acme") == AuditCheck(True, None, 4)


async def test_a_deleted_tenants_legacy_chain_is_rekeyed_and_its_key_kept(
    catalog: Catalog, raw: AsyncEngine, keyring: LocalKeyring
) -> None:
    await legacy_chain(catalog, raw, 2)
    await catalog.tenants.mark_deleted("acme", T0)
    await keyring.destroy_tenant("acme")  # its KEKs go with it...
    assert await catalog.audit.rekey_legacy(T0) == ["acme"]
    await catalog.audit.append("acme", "op", "tenant.deleted", "acme", {}, T0)
    assert await catalog.audit.verify("acme") == AuditCheck(True, None, 4)  # ...not its log


async def crash_after_rekeying(catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-key the legacy chain of acme and crash before its key is activated."""

    async def crash(tenant: str) -> None:
        raise OSError("killed before the keyring was written")

    with monkeypatch.context() as patch:
        patch.setattr(catalog.core.audit_keys, "activate_audit_key", crash)
        with pytest.raises(OSError, match="killed"):
            await catalog.audit.rekey("acme", T0)


async def test_a_chain_rewritten_while_its_rekeying_was_unfinished_is_not_rekeyed_at_start(
    catalog: Catalog, raw: AsyncEngine, keyring: LocalKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    await legacy_chain(catalog, raw, 3)
    await crash_after_rekeying(catalog, monkeypatch)
    # Before the next start, a database writer edits event 2 and recomputes the whole chain
    # and the head with plain SHA-256 (which the pending key's HMAC no longer matches).
    await rewrite_from(catalog, raw, 1, legacy)
    await rewrite_from(catalog, raw, 2, legacy, edit={"n": 999})
    assert await catalog.audit.rekey_legacy(T0, only_pending=True) == []
    assert await catalog.audit.verify("acme") == AuditCheck(False, None, 4, reason="not_keyed")
    pending = await AuditKeyring(keyring).audit_key("acme")
    assert pending is not None and not pending.active
    # The operator's explicit word re-keys it, and the record says what the old chain was.
    assert await catalog.audit.rekey("acme", T0, operator=True)
    assert (await catalog.audit.verify("acme")).ok


async def test_a_crash_before_the_chain_was_rewritten_is_finished_at_next_start(
    catalog: Catalog, raw: AsyncEngine
) -> None:
    old_head = await legacy_chain(catalog, raw, 3)
    keys = catalog.core.audit_keys
    await keys.create_audit_key("acme", pending=True, legacy_head=(3, old_head))
    # The process died here: the key is pending, the chain still the legacy one it was for.
    assert await catalog.audit.rekey_legacy(T0, only_pending=True) == ["acme"]
    assert await catalog.audit.verify("acme") == AuditCheck(True, None, 4)


async def test_a_pending_key_without_its_legacy_head_rekeys_nothing_on_its_own(
    catalog: Catalog, raw: AsyncEngine
) -> None:
    await legacy_chain(catalog, raw, 3)
    await catalog.core.audit_keys.create_audit_key("acme", pending=True)
    assert await catalog.audit.rekey_legacy(T0, only_pending=True) == []
    assert (await catalog.audit.verify("acme")).reason == "not_keyed"


# --- what a database writer can make up --------------------------------------------------


async def test_a_made_up_checkpoint_row_is_refused_loudly_not_obeyed(
    catalog: Catalog, raw: AsyncEngine
) -> None:
    await catalog.tenants.create("acme", "Acme", "eu", T0)
    await add_events(catalog, 3)
    assert await catalog.checkpoints.make("acme", T0) is not None
    # An unsigned row far past the head: before, the tenant was never due nor signed again.
    await execute(
        raw,
        "INSERT INTO audit_checkpoints (tenant_id, seq, hash, at, key_id, signature)"
        " SELECT tenant_id, 2147483647, hash, at, key_id, 'AAAA' FROM audit_checkpoints"
        " WHERE tenant_id = 'acme'",
    )
    await add_events(catalog, 2)
    assert await catalog.checkpoints.due() == ["acme"]
    with pytest.raises(AuditBroken, match="signature"):
        await catalog.checkpoints.make("acme", T0 + timedelta(hours=1))
    with pytest.raises(AuditBroken):
        await catalog.checkpoints.make("acme", T0 + timedelta(hours=1), current=True)
    assert [c.seq for c in await catalog.checkpoints.list("acme")] == [3, 2147483647]


async def test_a_checkpoint_row_resigned_at_the_head_is_not_handed_out(
    catalog: Catalog, raw: AsyncEngine
) -> None:
    await catalog.tenants.create("acme", "Acme", "eu", T0)
    await add_events(catalog, 3)
    made = await catalog.checkpoints.make("acme", T0)
    assert await catalog.checkpoints.make("acme", T0, current=True) == made
    forged = base64.b64encode(bytes(64)).decode()
    await execute(raw, "UPDATE audit_checkpoints SET signature = :s", s=forged)
    with pytest.raises(AuditBroken):
        await catalog.checkpoints.make("acme", T0, current=True)


async def test_one_tenants_unreadable_instructions_stop_no_checkpoint(
    catalog: Catalog, raw: AsyncEngine
) -> None:
    for tenant in ("aaa", "bbb"):
        await catalog.tenants.create(tenant, tenant, "eu", T0)
        await add_events(catalog, 2, tenant)
    await catalog.instructions.add("aaa", {"recording": {"enabled": True}}, "adm", T0)
    await execute(
        raw,
        "UPDATE instructions SET document = :d WHERE tenant_id = 'aaa'",
        d=json.dumps({"webhook": 5}),
    )
    report = await Checkpointer(catalog, max_attempts=3).make_due(T0)
    # aaa's head is signed all the same (only its webhook event is lost, logged); bbb too.
    assert sorted(c.tenant_id for c in report.made) == ["aaa", "bbb"]
    assert (report.broken, report.failed) == ([], [])


async def test_one_tenants_broken_chain_stops_no_other_checkpoint(
    catalog: Catalog, raw: AsyncEngine
) -> None:
    for tenant in ("aaa", "bbb"):
        await catalog.tenants.create(tenant, tenant, "eu", T0)
        await add_events(catalog, 2, tenant)
    # SQLite takes any text (the row does not even decode); PostgreSQL only JSON.
    bad = "not json" if catalog.backend == "sqlite" else '"not the detail"'
    await execute(
        raw, "UPDATE audit_events SET detail = :d WHERE tenant_id = 'aaa' AND seq = 2", d=bad
    )
    report = await Checkpointer(catalog, max_attempts=3).make_due(T0)
    assert [c.tenant_id for c in report.made] == ["bbb"]
    assert report.broken + report.failed == ["aaa"]


# SQLite only: it keeps times and details as text a database writer can make anything;
# PostgreSQL's column types refuse these values.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_rows_that_do_not_decode_are_breaks_not_crashes(
    catalog: Catalog, raw: AsyncEngine
) -> None:
    assert catalog.backend == "sqlite"
    await legacy_chain(catalog, raw, 3, "leg")
    await execute(raw, "UPDATE audit_events SET detail = '{bad' WHERE tenant_id='leg' AND seq=2")
    assert await catalog.audit.rekey_legacy(T0) == ["leg"]  # the start goes on
    rekeyed = (await catalog.audit.list("leg", since_seq=3))[-1]
    assert (rekeyed.detail["legacy_ok"], rekeyed.detail["legacy_broken_at"]) == (False, 2)
    assert await catalog.audit.verify("leg") == AuditCheck(False, 2, 4, reason="chain")

    await catalog.tenants.create("acme", "Acme", "eu", T0)
    await add_events(catalog, 2)
    await catalog.checkpoints.make("acme", T0)
    await execute(raw, "UPDATE audit_events SET at = 'yesterday' WHERE tenant_id='acme' AND seq=1")
    await execute(raw, "UPDATE audit_checkpoints SET at = 'yesterday' WHERE tenant_id='acme'")
    assert await catalog.audit.verify("acme") == AuditCheck(
        False, 1, 2, reason="chain", checkpoint=2
    )
    with pytest.raises(AuditBroken):
        await catalog.checkpoints.make("acme", T0, current=True)


async def test_a_detail_whose_json_round_trip_changes_it_still_verifies(catalog: Catalog) -> None:
    await catalog.tenants.create("acme", "Acme", "eu", T0)
    event = await catalog.audit.append("acme", "x", "y", None, {"m": {2: "a", 10: "b"}}, T0)
    assert event.detail == {"m": {"2": "a", "10": "b"}}
    await catalog.audit.append("acme", "x", "y", None, {"t": (1, 2)}, T0)
    assert await catalog.audit.verify("acme") == AuditCheck(True, None, 2)

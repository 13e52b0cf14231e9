"""Retention on a fleet: two nodes (two ``Catalog`` instances, two sweepers) on one catalog
database (a SQLite file, and PostgreSQL), one object store and one keyring.

What is proven: the named leases of ``catalog.leases`` go to one owner at a time (racing
claims included) and can be taken over once they ran out; a sweeper skips a tenant whose
retention lease another node holds, renews its own while a long sweep runs, and stops when
another node took it over; and whatever the interleaving, with or without the lease, every
expired object is deleted once, its deletion audited once, and the tenant's chain verifies.

Seeding, the parts and the inspection helpers are those of ``test_retention``; the sweeps
run on a fake clock (``now``), and the lease renewals on a fake monotonic clock where a test
needs time to pass.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from storage.catalog import Lease
from storage.filestore import FileStore
from storage.retention import LEASE_PREFIX, RetentionSweeper
from tests.functional.test_retention import (
    ALL_AT_ONCE,
    DAY,
    END,
    GONE,
    Parts,
    Seeded,
    add_tenant,
    audit_ok,
    content,
    open_parts,
    seed_call,
)

NOW = END + DAY
"""When the sweeps run: every object of an ``ALL_AT_ONCE`` tenant has expired."""
TTL = timedelta(seconds=60)
SECOND = timedelta(seconds=1)


@asynccontextmanager
async def open_two_nodes(database_url: str, tmp_path: Path) -> AsyncIterator[tuple[Parts, Parts]]:
    """Two nodes: each its own catalog engine, object store client and keyring handle, on
    one database, one store directory and one keyring file."""
    stores = [FileStore(tmp_path / "objects"), FileStore(tmp_path / "objects")]
    try:
        async with (
            open_parts(database_url, stores[0], tmp_path / "keys") as a,
            open_parts(database_url, stores[1], tmp_path / "keys") as b,
        ):
            yield a, b
    finally:
        for store in stores:
            await store.close()


@pytest.fixture
async def nodes(database_url: str, tmp_path: Path) -> AsyncIterator[tuple[Parts, Parts]]:
    async with open_two_nodes(database_url, tmp_path) as pair:
        yield pair


async def seed(parts: Parts, tenant: str, calls: int) -> list[Seeded]:
    """The tenant (everything expires a day after its calls) and ``calls`` analysed calls."""
    await add_tenant(parts, tenant, ALL_AT_ONCE)
    return [await seed_call(parts, tenant, f"call-{i}") for i in range(calls)]


async def assert_deleted_once(parts: Parts, tenant: str, seeded: Sequence[Seeded]) -> None:
    """Every object of ``seeded`` is gone, named by exactly one ``data.deleted`` receipt,
    every recording has one ``recording.deleted``, and the tenant's chain verifies."""
    objects = [o for call in seeded for o in call.objects.values()]
    assert await content(parts, objects) == [GONE] * len(objects)
    events = await parts.catalog.audit.list(tenant, limit=10_000)
    named = Counter(i for e in events if e.action == "data.deleted" for i in e.detail["object_ids"])
    assert named == Counter(o.id for o in objects)
    counted = sum(e.detail["objects"] for e in events if e.action == "data.deleted")
    assert counted == len(objects)
    completed = Counter(e.object for e in events if e.action == "recording.deleted")
    assert completed == Counter(call.recording_id for call in seeded)
    assert await audit_ok(parts, tenant) == len(events)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


class Gate:
    """Holds every ``delete_many`` of one node's store until opened: a sweep stalls there,
    in the middle of a tenant, holding its lease."""

    def __init__(self, parts: Parts, monkeypatch: pytest.MonkeyPatch) -> None:
        self.open = asyncio.Event()
        self.arrived = 0
        self._arrivals = asyncio.Condition()
        real = parts.store.delete_many

        async def delete_many(keys: Sequence[str]) -> None:
            async with self._arrivals:
                self.arrived += 1
                self._arrivals.notify_all()
            await self.open.wait()
            await real(keys)

        monkeypatch.setattr(parts.store, "delete_many", delete_many)

    async def wait_for(self, arrivals: int) -> None:
        async with self._arrivals:
            await asyncio.wait_for(
                self._arrivals.wait_for(lambda: self.arrived >= arrivals), timeout=30
            )


class FakeElapsed:
    """A monotonic clock that moves only when a test moves it."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self) -> float:
        return self.seconds


# --- the lease repository ---------------------------------------------------------------------


async def test_a_lease_goes_to_one_owner_until_it_runs_out(nodes: tuple[Parts, Parts]) -> None:
    a, b = (parts.catalog.leases for parts in nodes)
    name = "retention:acme"
    assert await a.claim(name, "node-a", now=NOW, ttl=TTL) == Lease(name, "node-a", NOW + TTL)
    # Another owner, on the other node, while it runs: refused, up to its last microsecond.
    assert await b.claim(name, "node-b", now=NOW, ttl=TTL) is None
    assert await b.claim(name, "node-b", now=NOW + TTL - timedelta(microseconds=1), ttl=TTL) is None
    assert await b.renew(name, "node-b", now=NOW, ttl=TTL) is None
    assert not await b.release(name, "node-b")
    assert await b.get(name) == Lease(name, "node-a", NOW + TTL)
    # Its owner claims it again (a new sweep) or renews it: moved on.
    assert await a.claim(name, "node-a", now=NOW + 10 * SECOND, ttl=TTL) == Lease(
        name, "node-a", NOW + 10 * SECOND + TTL
    )
    assert await a.renew(name, "node-a", now=NOW + 50 * SECOND, ttl=TTL) == Lease(
        name, "node-a", NOW + 50 * SECOND + TTL
    )
    assert await b.claim(name, "node-b", now=NOW + TTL, ttl=TTL) is None
    # Run out (its owner stopped renewing): taken over, and the old owner can no longer
    # renew or release it.
    later = NOW + 50 * SECOND + TTL
    assert await b.claim(name, "node-b", now=later, ttl=TTL) == Lease(name, "node-b", later + TTL)
    assert await a.renew(name, "node-a", now=later, ttl=TTL) is None
    assert not await a.release(name, "node-a")
    assert await a.get(name) == Lease(name, "node-b", later + TTL)
    # Released by its owner: free at once, whatever its end.
    assert await b.release(name, "node-b")
    assert await b.get(name) is None
    assert await a.claim(name, "node-a", now=later, ttl=TTL) == Lease(name, "node-a", later + TTL)
    # Names are independent.
    assert await b.claim("retention:globex", "node-b", now=later, ttl=TTL) is not None


@pytest.mark.parametrize("existing", ["absent", "run_out"])
async def test_racing_claims_on_two_nodes_make_one_owner(
    nodes: tuple[Parts, Parts], existing: str
) -> None:
    """Twenty owners on two nodes claim one name at once, when it has no row (the INSERT
    race) and when its row ran out (the UPDATE race): exactly one gets it."""
    name = "retention:acme"
    if existing == "run_out":
        assert await nodes[0].catalog.leases.claim(name, "gone", now=NOW - TTL, ttl=TTL)

    async def claim(i: int) -> Lease | None:
        return await nodes[i % 2].catalog.leases.claim(name, f"owner-{i}", now=NOW, ttl=TTL)

    won = [lease for lease in await asyncio.gather(*(claim(i) for i in range(20))) if lease]
    assert len(won) == 1
    assert await nodes[1].catalog.leases.get(name) == won[0]


# --- sweepers on two nodes ----------------------------------------------------------------


async def test_a_tenant_another_node_sweeps_is_skipped_and_each_object_goes_once(
    nodes: tuple[Parts, Parts], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = nodes
    acme = await seed(a, "acme", 3)
    globex = await seed(a, "globex", 2)
    gate = Gate(a, monkeypatch)

    # Node A stalls in the middle of acme's sweep (its bytes being deleted), holding the
    # lease; node B sweeps meanwhile: it skips acme and sweeps globex.
    first = asyncio.create_task(a.sweeper.sweep(NOW))
    await gate.wait_for(1)
    lease = await b.catalog.leases.get(LEASE_PREFIX + "acme")
    assert lease is not None and lease.owner == a.sweeper.owner
    second = await b.sweeper.sweep(NOW)
    assert second.skipped_tenants == ["acme"]
    assert (second.objects_deleted, second.recordings_deleted) == (8, 2)
    assert second.failed_tenants == []
    assert b.sweeper.metrics.skipped._value.get() == 1

    gate.open.set()
    report = await first
    assert (report.objects_deleted, report.recordings_deleted) == (12, 3)
    assert (report.skipped_tenants, report.failed_tenants) == ([], [])
    await assert_deleted_once(b, "acme", acme)
    await assert_deleted_once(b, "globex", globex)
    # Both released their leases: the next sweep of either node takes every tenant.
    for tenant in ("acme", "globex"):
        assert await b.catalog.leases.get(LEASE_PREFIX + tenant) is None
    again = await b.sweeper.sweep(NOW + SECOND)
    assert (again.skipped_tenants, again.objects_deleted) == ([], 0)


async def test_two_sweeps_at_once_delete_and_audit_each_object_once(
    nodes: tuple[Parts, Parts],
) -> None:
    """Both nodes sweep every tenant at the same moment, in small batches; whoever gets a
    tenant's lease, each object is deleted and audited once."""
    a, b = nodes
    seeded = {tenant: await seed(a, tenant, 4) for tenant in ("acme", "globex", "initech")}
    sweepers = [a.new_sweeper(batch_size=3), b.new_sweeper(batch_size=3)]
    reports = await asyncio.gather(*(sweeper.sweep(NOW) for sweeper in sweepers))
    assert sum(r.objects_deleted for r in reports) == 3 * 4 * 4
    assert sum(r.recordings_deleted for r in reports) == 3 * 4
    assert [r.failed_tenants for r in reports] == [[], []]
    for tenant, calls in seeded.items():
        await assert_deleted_once(a, tenant, calls)


async def test_without_the_lease_the_steps_still_delete_each_object_once(
    nodes: tuple[Parts, Parts], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What protects the data when two sweeps do meet (the immediate sweep of a deleted
    tenant beside a node's sweep, a holder that stalled past its lease): both read the same
    due objects before either deletes any, and every step after is a conditional transition,
    so each object is marked deleted, and audited, by one of them."""
    a, b = nodes
    seeded = await seed(a, "acme", 3)
    both_read = asyncio.Barrier(2)
    for parts in nodes:
        real: Callable[..., Awaitable[Any]] = parts.catalog.retention.due_objects
        calls = [0]

        async def due_objects(*args: Any, real: Any = real, calls: list[int] = calls,
                              **kwargs: Any) -> Any:  # fmt: skip
            found = await real(*args, **kwargs)
            calls[0] += 1
            if calls[0] == 1:
                await asyncio.wait_for(both_read.wait(), timeout=30)
            return found

        monkeypatch.setattr(parts.catalog.retention, "due_objects", due_objects)
    tenant = await a.catalog.tenants.get("acme")
    reports = await asyncio.gather(
        a.sweeper.sweep_tenant(tenant, NOW), b.sweeper.sweep_tenant(tenant, NOW)
    )
    assert sum(r.objects_deleted for r in reports) == 12
    assert sum(r.recordings_deleted for r in reports) == 3
    await assert_deleted_once(a, "acme", seeded)


async def test_a_long_sweep_renews_its_lease(
    nodes: tuple[Parts, Parts], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep that runs past its lease's length keeps it: another node that tries after
    the first lease's end (but within the renewed one) is refused."""
    a, b = nodes
    seeded = await seed(a, "acme", 3)
    elapsed = FakeElapsed()
    sweeper = a.new_sweeper(batch_size=1, lease_ttl=TTL, elapsed=elapsed)
    name = LEASE_PREFIX + "acme"
    refused: list[Lease | None] = []
    real = a.store.delete_many

    async def slow_delete(keys: Sequence[str]) -> None:
        # Each batch's deletion takes half a lease; after the third, another node tries.
        elapsed.seconds += TTL.total_seconds() / 2
        if len(refused) < 1 and elapsed.seconds > TTL.total_seconds():
            refused.append(
                await b.catalog.leases.claim(name, "node-b", now=NOW + TTL + SECOND, ttl=TTL)
            )
            held = await b.catalog.leases.get(name)
            assert held is not None and held.owner == sweeper.owner
            assert held.until > NOW + TTL + SECOND
        await real(keys)

    monkeypatch.setattr(a.store, "delete_many", slow_delete)
    report = await sweeper.sweep(NOW)
    assert refused == [None]
    assert (report.objects_deleted, report.skipped_tenants) == (12, [])
    assert await b.catalog.leases.get(name) is None  # released at the end
    await assert_deleted_once(b, "acme", seeded)


async def test_a_tenant_swept_late_in_a_long_pass_gets_a_lease_that_runs(
    nodes: tuple[Parts, Parts], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One pass over two tenants, the first of which takes three leases' length to sweep:
    the second tenant's lease is claimed at the pass's ``now`` moved on by that time, so it
    runs a whole lease from when it was claimed, and another node is refused it then."""
    a, b = nodes
    acme = await seed(a, "acme", 2)
    globex = await seed(a, "globex", 2)
    elapsed = FakeElapsed()
    sweeper = a.new_sweeper(lease_ttl=TTL, elapsed=elapsed)
    name = LEASE_PREFIX + "globex"
    seen: list[tuple[Lease | None, Lease | None]] = []
    real = a.store.delete_many

    async def slow_delete(keys: Sequence[str]) -> None:
        if all(key.startswith("acme/") for key in keys):
            elapsed.seconds += 3 * TTL.total_seconds()  # acme's sweep is long
        elif not seen:
            # Sweeping globex: the wall clock is the pass's now and the time it took.
            at = NOW + timedelta(seconds=elapsed.seconds) + SECOND
            held = await b.catalog.leases.get(name)
            seen.append((held, await b.catalog.leases.claim(name, "node-b", now=at, ttl=TTL)))
        await real(keys)

    monkeypatch.setattr(a.store, "delete_many", slow_delete)
    report = await sweeper.sweep(NOW)
    ((held, taken),) = seen
    assert held is not None and held.owner == sweeper.owner
    assert held.until > NOW + timedelta(seconds=elapsed.seconds)  # not run out at claim
    assert taken is None  # another node is refused while globex is swept
    assert (report.skipped_tenants, report.failed_tenants) == ([], [])
    await assert_deleted_once(b, "acme", acme)
    await assert_deleted_once(b, "globex", globex)


async def test_a_run_out_lease_is_taken_over_and_its_old_holder_stops(
    nodes: tuple[Parts, Parts], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node A stalls past its lease mid-sweep; node B takes the lease over and sweeps. When
    A wakes, its next renewal finds the lease lost: it stops (the tenant skipped, not
    failed) and leaves the rest to B; each object is still deleted and audited once."""
    a, b = nodes
    seeded = await seed(a, "acme", 3)
    elapsed = FakeElapsed()
    stalled = a.new_sweeper(batch_size=1, lease_ttl=TTL, elapsed=elapsed)
    gate = Gate(a, monkeypatch)
    first = asyncio.create_task(stalled.sweep(NOW))
    await gate.wait_for(2)

    # While A holds it, B may not take it.
    assert (await b.sweeper.sweep(NOW + TTL - SECOND)).skipped_tenants == ["acme"]
    # Past its end, B takes it over (its sweep starts by claiming it).
    taken = await b.catalog.leases.claim(
        LEASE_PREFIX + "acme", b.sweeper.owner, now=NOW + TTL + SECOND, ttl=TTL
    )
    assert taken is not None

    elapsed.seconds = TTL.total_seconds() / 2  # A wakes: its next page renews, and fails
    gate.open.set()
    report = await first
    assert (report.skipped_tenants, report.failed_tenants) == (["acme"], [])
    assert report.recordings_deleted == 0
    assert stalled.metrics.skipped._value.get() == 1
    lease = await b.catalog.leases.get(LEASE_PREFIX + "acme")
    assert lease is not None and lease.owner == b.sweeper.owner  # A released nothing of B's

    rest = await b.sweeper.sweep(NOW + TTL + SECOND)
    assert rest.skipped_tenants == []
    assert report.objects_deleted + rest.objects_deleted == 12
    assert rest.recordings_deleted == 3
    await assert_deleted_once(b, "acme", seeded)


async def test_the_sweeper_names_itself_per_process(nodes: tuple[Parts, Parts]) -> None:
    a, b = nodes
    assert a.sweeper.owner != b.sweeper.owner
    assert ":retention:" in a.sweeper.owner
    named = RetentionSweeper(catalog=a.catalog, store=a.store, owner="node-a/retention")
    assert named.owner == "node-a/retention"

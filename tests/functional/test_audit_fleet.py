"""One audit chain per tenant, written by several nodes at once: no gap, no fork.

Two OS processes (``tests/auditwriter.py``), each with its own ``Catalog`` on one catalog
database (a SQLite file, and PostgreSQL) and the audit keys of one keyring file, append
events to the same two tenants at the same moment (single appends, batches, and signed
checkpoints between them). Afterwards the chain of each tenant verifies (HMACs, links, the
head on the tenant row, the latest checkpoint), its sequence numbers are 1..N with no gap
and no repeat, and it holds exactly the events written, each once.

The tenants are created with no event, so that the first append of either process makes the
tenant's audit key (in the keyring file, under its lock) while the other process may be
waiting to append too: both must chain under that one key.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from crypto.auditkeys import AuditKeyring
from crypto.keys import LocalKeyring
from storage.catalog import AuditEvent, Catalog
from tests.functional.test_retention import MASTER, T0
from tests.leaks import WATCH

REPO = Path(__file__).resolve().parents[2]
EVENTS = 200
"""Events each process appends to the first tenant (a quarter as many to the second)."""
TENANTS = ("acme", "globex")


@pytest.fixture
async def catalog(database_url: str, tmp_path: Path) -> AsyncIterator[Catalog]:
    """The test's own view of the catalog (a third node), with the tenants made."""
    keyring = LocalKeyring.open(tmp_path / "keys", MASTER)
    opened = await Catalog.open(database_url, audit_keys=AuditKeyring(keyring))
    try:
        await opened.migrate()
        for tenant in TENANTS:
            await opened.tenants.create(tenant, tenant.title(), "eu", T0)
        yield opened
    finally:
        await opened.close()


async def run_writers(database_url: str, keys: Path, writers: list[str]) -> None:
    """Start one process per writer, wait until each is ready, release them all at once,
    and wait for them to finish (each must exit 0)."""
    env = {**os.environ, "CALLVAULT_TEST_MASTER_HEX": MASTER.hex()}
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.auditwriter",
            "--database",
            database_url,
            "--keys",
            str(keys),
            "--writer",
            writer,
            "--events",
            str(EVENTS),
            "--tenants",
            ",".join(TENANTS),
            cwd=REPO,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        for writer in writers
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), timeout=60)
            if line != b"ready\n":
                _, err = await process.communicate()
                pytest.fail(f"a writer did not start: {line!r} {err.decode(errors='replace')}")
        for process in processes:
            assert process.stdin is not None
            process.stdin.write(b"go\n")
            await process.stdin.drain()
        for writer, process in zip(writers, processes, strict=True):
            out, err = await asyncio.wait_for(process.communicate(), timeout=90)
            WATCH.watch_output(err.decode(errors="replace"), f"audit writer {writer}")
            assert (process.returncode, out) == (0, b"done\n"), err.decode(errors="replace")
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def chain_of(catalog: Catalog, tenant: str) -> list[AuditEvent]:
    return await catalog.audit.list(tenant, limit=100_000)


def switches(events: list[AuditEvent]) -> int:
    """How often the writer changes along the chain: proof that the writes interleaved."""
    writers = [event.detail["writer"] for event in events]
    return sum(1 for a, b in zip(writers, writers[1:], strict=False) if a != b)


async def test_two_processes_append_to_one_chain_without_gap_or_fork(
    catalog: Catalog, database_url: str, tmp_path: Path
) -> None:
    writers = ["node-a", "node-b"]
    await run_writers(database_url, tmp_path / "keys", writers)
    for tenant, per_writer in (("acme", EVENTS), ("globex", EVENTS // 4)):
        events = await chain_of(catalog, tenant)
        # Exactly the events written, each once.
        expected = Counter(f"{w}:{tenant}:{i}" for w in writers for i in range(per_writer))
        assert Counter(event.object for event in events) == expected
        # No gap, no repeat: 1..N, each event linked to the one before.
        assert [event.seq for event in events] == list(range(1, len(events) + 1))
        assert [event.prev_hash for event in events[1:]] == [event.hash for event in events[:-1]]
        # Each writer's own events kept their order.
        for writer in writers:
            mine = [e.detail["i"] for e in events if e.detail["writer"] == writer]
            assert mine == list(range(per_writer))
        # The chain verifies under the one audit key, up to its latest signed checkpoint.
        check = await catalog.audit.verify(tenant)
        assert (check.ok, check.broken_at, check.reason, check.count) == (
            True,
            None,
            None,
            len(events),
        )
        assert check.checkpoint is not None
        checkpoints = await catalog.checkpoints.list(tenant)
        # One checkpoint per head signed, never two: each writer tries one every 50 of its
        # events, and a try at a head another already signed makes none. So acme (four
        # tries by each writer, at four heads each) has at least four; globex (one try by
        # each) has one, or two when the writers' tries fell at different heads.
        least = 4 if tenant == "acme" else 1
        assert len({c.seq for c in checkpoints}) == len(checkpoints) >= least
    # The two processes really wrote at the same time.
    assert switches(await chain_of(catalog, "acme")) >= 2

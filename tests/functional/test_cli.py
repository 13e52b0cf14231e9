"""The ``callvault`` command as a user runs it: real processes, real data dir."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.services import open_services
from gateway.settings import Settings
from tests.gateway import alive, free_port, wait_until_ready, worker_children
from tests.leaks import WATCH

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLVAULT_")}
    return {**env, **extra}


def callvault(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env or clean_env(),
        check=False,
    )
    command = " ".join(args)
    WATCH.watch_output(result.stderr, command)
    if " token create " not in f" {command} ":  # whose stdout is the minted token, by design
        WATCH.watch_output(result.stdout, command)
    return result


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    process = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "gateway.cli", "--data-dir", str(tmp_path), "serve"],
        env=clean_env(CALLVAULT_HTTP__PORT=str(port), CALLVAULT_AUDIOSOCKET__PORT="0"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(
            base,
            process,
            lambda: process.stdout.read() if process.stdout else "",
            timeout_s=30,
        )
        yield process, base
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        if process.stdout:
            WATCH.watch_output(process.stdout.read(), "serve")
            process.stdout.close()


def test_serve_answers_and_stops_cleanly_on_sigterm(
    server: tuple[subprocess.Popen[str], str],
) -> None:
    process, base = server
    with urllib.request.urlopen(f"{base}/healthz", timeout=5) as response:  # noqa: S310
        assert response.status == 200
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:  # noqa: S310
        assert b"callvault_bytes_sealed_total" in response.read()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0


@pytest.mark.parametrize("value", ["not-base64!!", base64.b64encode(b"sixteen byte key").decode()])
def test_malformed_master_key_refuses_to_start_naming_the_setting(
    tmp_path: Path, value: str
) -> None:
    result = callvault(
        "--data-dir", str(tmp_path), "serve", env=clean_env(CALLVAULT_MASTER_KEY=value)
    )
    assert result.returncode == 2
    assert result.stderr.startswith("callvault: CALLVAULT_MASTER_KEY: ")
    assert value not in result.stderr + result.stdout
    assert not (tmp_path / "catalog.sqlite3").exists()


def test_wrong_master_key_for_an_existing_keyring_refuses_to_start(tmp_path: Path) -> None:
    first = base64.b64encode(bytes(32)).decode()
    second = base64.b64encode(bytes(range(32))).decode()
    result = callvault(
        "--data-dir", str(tmp_path), "keys", "rotate", "--tenant", "acme",
        env=clean_env(CALLVAULT_MASTER_KEY=first),
    )  # fmt: skip
    assert (tmp_path / "keyring.json").exists()
    result = callvault(
        "--data-dir", str(tmp_path), "serve", env=clean_env(CALLVAULT_MASTER_KEY=second)
    )
    assert result.returncode == 2
    assert "CALLVAULT_MASTER_KEY" in result.stderr
    assert "not the master key" in result.stderr


def test_malformed_setting_names_the_variable(tmp_path: Path) -> None:
    result = callvault(
        "--data-dir", str(tmp_path), "serve", env=clean_env(CALLVAULT_HTTP__PORT="eighty")
    )
    assert result.returncode == 2
    assert "CALLVAULT_HTTP__PORT" in result.stderr


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_a_model_that_is_not_one_refuses_to_start_naming_the_setting(
    tmp_path: Path, command: str
) -> None:
    not_a_model = tmp_path / "models" / "whisper"
    not_a_model.mkdir(parents=True)
    (not_a_model / "config.json").write_text("{}")
    result = callvault(
        "--data-dir",
        str(tmp_path / "var"),
        command,
        env=clean_env(CALLVAULT_AI__MODEL=str(not_a_model), CALLVAULT_HTTP__PORT="0"),
    )
    assert result.returncode == 2, result.stderr
    assert "CALLVAULT_AI__MODEL" in result.stderr
    assert "neither a packaged model" in result.stderr
    assert "Traceback" not in result.stderr


def test_flags_are_validated_like_the_environment(tmp_path: Path) -> None:
    result = callvault("--data-dir", str(tmp_path), "serve", "--port", "99999")
    assert result.returncode == 2
    assert "CALLVAULT_HTTP__PORT" in result.stderr
    assert "65535" in result.stderr


def test_a_busy_port_is_one_sentence_not_a_traceback(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = callvault("--data-dir", str(tmp_path), "serve", "--port", str(port))
    assert result.returncode == 2
    assert f"callvault: CALLVAULT_HTTP__PORT: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


async def test_keys_rotate_rewraps_a_tenants_deks_and_objects_still_open(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path)
    async with open_services(settings) as services:
        await services.catalog.tenants.create("acme", "Acme", "eu", T0)
        record = await services.vault.put_object(
            b"sealed before rotation", tenant="acme", kind="audio",
            data_class="recordings", now=T0,
        )  # fmt: skip
    result = callvault("--data-dir", str(tmp_path), "keys", "rotate", "--tenant", "acme")
    assert result.returncode == 0, result.stderr
    assert "version 2; 1 DEK(s) re-wrapped" in result.stdout
    async with open_services(settings) as services:
        row = await services.catalog.keys.get(record.id, tenant_id="acme")
        assert row.kek_version == 2
        assert await services.vault.read_object("acme", record.id) == b"sealed before rotation"
        after = await services.vault.put_object(
            b"sealed after", tenant="acme", kind="audio", data_class="recordings", now=T0
        )
        assert (await services.catalog.keys.get(after.id, "acme")).kek_version == 2
        actions = [e.action for e in await services.catalog.audit.list("acme")]
        assert actions == ["keys.rotated"]


def test_keys_rotate_of_an_unknown_tenant_fails_clearly(tmp_path: Path) -> None:
    result = callvault("--data-dir", str(tmp_path), "keys", "rotate", "--tenant", "nobody")
    assert result.returncode == 1
    assert "not_found" in result.stderr
    assert "nobody" in result.stderr


def start_serve(data_dir: Path, **env: str) -> tuple[subprocess.Popen[str], str]:
    """``callvault serve`` on free ports, ready; its stdout is a pipe the caller reads."""
    port = free_port()
    process = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "gateway.cli", "--data-dir", str(data_dir), "serve"],
        env=clean_env(
            CALLVAULT_HTTP__PORT=str(port), CALLVAULT_AUDIOSOCKET__PORT=str(free_port()), **env
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    wait_until_ready(base, process, lambda: "(its output goes to the test)", timeout_s=30)
    return process, base


def stop_serve(process: subprocess.Popen[str], *, workers: int = 1) -> str:
    """SIGTERM ``serve``: it exits 0 and its ``workers`` AI worker children with it."""
    children = worker_children(process.pid)
    assert len(children) == workers
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0
    assert not [pid for pid in children if alive(pid)]
    assert process.stdout is not None
    output = process.stdout.read()
    process.stdout.close()
    WATCH.watch_output(output, "serve")
    return output


def list_tenants(base: str, token: str) -> int:
    request = urllib.request.Request(  # noqa: S310
        f"{base}/v1/tenants", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as e:
        return e.code


def test_first_start_prints_an_operator_token_once(tmp_path: Path) -> None:
    process, base = start_serve(tmp_path)
    output = stop_serve(process)
    tokens = [word for word in output.split() if word.startswith("cv_")]
    assert len(set(tokens)) == 1, output
    (token,) = set(tokens)
    assert len(token) >= 3 + 43  # 256 random bits, base64url
    assert token.encode() not in (tmp_path / "catalog.sqlite3").read_bytes()

    minted = callvault("--data-dir", str(tmp_path), "token", "create", "--role", "operator")
    assert minted.returncode == 0, minted.stderr
    second_token = minted.stdout.split()[-1]

    process, base = start_serve(tmp_path)
    assert list_tenants(base, token) == 200
    assert list_tenants(base, second_token) == 200
    assert list_tenants(base, "cv_" + "x" * 43) == 401
    assert "cv_" not in stop_serve(process)  # not printed again


def test_a_configured_operator_token_is_used_and_never_printed(tmp_path: Path) -> None:
    secret = "an-operator-token-from-the-secret-store-0123456789"
    process, base = start_serve(tmp_path, CALLVAULT_OPERATOR_TOKEN=secret)
    assert list_tenants(base, secret) == 200
    assert "cv_" not in stop_serve(process)


def test_a_short_operator_token_or_a_busy_audiosocket_port_refuse_to_start(
    tmp_path: Path,
) -> None:
    result = callvault(
        "--data-dir", str(tmp_path), "serve",
        env=clean_env(CALLVAULT_OPERATOR_TOKEN="short", CALLVAULT_HTTP__PORT=str(free_port())),
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("callvault: CALLVAULT_OPERATOR_TOKEN: ")
    assert "short" not in result.stderr.replace("CALLVAULT", "")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = callvault(
            "--data-dir", str(tmp_path), "serve",
            env=clean_env(
                CALLVAULT_HTTP__PORT=str(free_port()),
                CALLVAULT_AUDIOSOCKET__PORT=str(busy.getsockname()[1]),
            ),
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "CALLVAULT_AUDIOSOCKET__PORT" in result.stderr

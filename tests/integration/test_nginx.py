"""The shipped nginx configuration (docs/deploy/nginx.conf), run by Debian's nginx in front
of a plaintext ``callvault serve`` with ``CALLVAULT_HTTP__TLS_OFFLOADED``: a Twilio call
streamed over WSS with its token in the URL is recorded exactly, and no nginx log holds the
token or any query string.

The file is used as shipped except for the lines it marks ``EDIT`` (addresses, ports,
certificate and log paths), each replaced exactly once. nginx runs as this user's process
(``-p`` prefix, ``-c`` a generated main file that includes the shipped one, ``daemon off``),
on free ports, with its logs and temporary files in the test's directory. callvault binds
this machine's non-loopback address when it has one, so that its peer (nginx) is not
loopback and only ``TLS_OFFLOADED`` lets the URL token through.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp import WSMsgType

from tests.gateway import (
    RECORD,
    ULAW,
    Gateway,
    bearer,
    free_port,
    read_wav,
    serve,
    tone,
    twilio_call,
    twilio_connected,
    twilio_start,
    twilio_stop,
)
from tests.parts import require_part
from tests.tls import Pki, local_address, make_pki

pytestmark = pytest.mark.integration

SHIPPED = Path(__file__).resolve().parents[2] / "docs" / "deploy" / "nginx.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
READY_TIMEOUT_S = 30.0
NO_AI = {"CALLVAULT_AI__WORKERS": "0", "CALLVAULT_RETENTION__SWEEP_INTERVAL": "PT0S"}


def site_config(pki: Pki, listen: int, upstream: str, logs: Path) -> tuple[str, dict[str, str]]:
    """The shipped file with its ``EDIT`` values replaced (each must occur exactly once, so
    that an edit of the shipped file cannot silently leave the test on other values)."""
    text = SHIPPED.read_text()
    replacements = {
        "server 127.0.0.1:8080;": f"server {upstream};",
        "listen 443 ssl;": f"listen 127.0.0.1:{listen} ssl;",
        "/etc/ssl/callvault/fullchain.pem": str(pki.cert_file),
        "/etc/ssl/callvault/privkey.pem": str(pki.key_file),
        "/var/log/nginx/callvault.access.log": str(logs / "access.log"),
        "/var/log/nginx/callvault.error.log": str(logs / "error.log"),
    }
    for old, new in replacements.items():
        assert text.count(old) == 1, f"docs/deploy/nginx.conf no longer has {old!r} once"
        text = text.replace(old, new)
    edited = [line for line in text.splitlines() if "# EDIT" in line]
    assert all(any(new in line for new in replacements.values()) for line in edited
               if "server_name" not in line), edited  # fmt: skip
    return text, replacements


def main_config(root: Path, site: Path) -> str:
    """A main nginx.conf around the site file, everything under ``root`` (nginx runs as
    this user: a root test run keeps its workers root, since they read the test's files)."""
    user = f"user {pwd.getpwuid(0).pw_name};\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {kind}_temp_path {root / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{user}worker_processes 1;
pid {root / "nginx.pid"};
error_log {root / "logs" / "main-error.log"} error;
events {{ worker_connections 64; }}
http {{
    access_log {root / "logs" / "main-access.log"};
{temp}
    include {site};
}}
"""


@contextmanager
def nginx(root: Path, site_text: str, listen: int, trust: ssl.SSLContext) -> Iterator[Path]:
    """nginx with ``site_text`` for the ``with`` block, answering on ``listen``; yields its
    log folder. Stopped gracefully (SIGQUIT: connections finish, logs are complete)."""
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    site = root / "callvault.conf"
    site.write_text(site_text)
    main = root / "nginx.conf"
    main.write_text(main_config(root, site))
    command = [NGINX, "-p", str(root), "-c", str(main), "-e", str(logs / "startup.log")]
    checked = subprocess.run(  # noqa: S603
        [*command, "-t"], capture_output=True, text=True, timeout=30, check=False
    )
    assert checked.returncode == 0, checked.stderr
    with (logs / "stderr.log").open("wb") as stderr:
        process = subprocess.Popen(  # noqa: S603
            [*command, "-g", "daemon off;"], stdout=stderr, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(  # noqa: S310
                    f"https://127.0.0.1:{listen}/healthz", timeout=2, context=trust
                ) as response:
                    if response.status == 200:
                        break
            except (OSError, urllib.error.URLError):
                assert process.poll() is None, (logs / "stderr.log").read_text()
                assert time.monotonic() < deadline, "nginx did not answer /healthz"
                time.sleep(0.1)  # polling another process's readiness
        yield logs
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGQUIT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


async def test_nginx_config_proxies_wss_ingest_and_logs_no_query_string(tmp_path: Path) -> None:
    require_part(
        os.access(NGINX, os.X_OK), "nginx is not installed (Debian: apt-get install nginx)"
    )
    pki = make_pki(tmp_path / "pki")
    address = local_address() or "127.0.0.1"
    offloaded = {"CALLVAULT_HTTP__HOST": address, "CALLVAULT_HTTP__TLS_OFFLOADED": "true"}
    listen = free_port()
    with serve(tmp_path, "var", reach=address, **NO_AI, **offloaded) as server:
        site, _ = site_config(pki, listen, f"{address}:{server.port}", tmp_path / "nginx" / "logs")
        inbound = ULAW.encode(tone(1.5, 440, seed=21))
        outbound = ULAW.encode(tone(1.5, 660, seed=22))
        with nginx(tmp_path / "nginx", site, listen, pki.client()) as logs:
            connector = aiohttp.TCPConnector(ssl=pki.client())
            async with aiohttp.ClientSession(
                f"https://127.0.0.1:{listen}", connector=connector
            ) as client:
                gateway = Gateway(client=client, operator=server.operator)  # type: ignore[arg-type]
                acme = await gateway.tenant("acme", RECORD)
                call = await gateway.announce(acme)
                # Over WSS through nginx, the token in the URL (as a PBX that cannot set
                # headers sends it).
                async with client.ws_connect(f"/v1/ingest/twilio?token={acme.pbx}") as ws:
                    await ws.send_str(twilio_connected())
                    await ws.send_str(twilio_start(call["call_id"]))
                    for message in twilio_call(inbound, outbound):
                        await ws.send_str(message)
                    await ws.send_str(twilio_stop())
                    closing = await ws.receive()
                assert (closing.type, closing.data, closing.extra) == (
                    WSMsgType.CLOSE, 1000, "stop"
                )  # fmt: skip
                async with client.get(
                    f"/v1/recordings/{call['recording_id']}/audio", headers=bearer(acme.admin)
                ) as response:
                    assert response.status == 200, await response.text()
                    wav = await response.read()
                # A query string on the API too (a refused ?token=: the API takes headers).
                async with client.get(f"/v1/tenants?token={acme.admin}") as response:
                    assert response.status == 401
        # nginx has stopped: its logs are complete.
        channels, _, pcm = read_wav(wav)
        assert channels == 2
        np.testing.assert_array_equal(pcm[:, 0], ULAW.decode(inbound))
        np.testing.assert_array_equal(pcm[:, 1], ULAW.decode(outbound))

        access = (logs / "access.log").read_text()
        assert '"GET /v1/ingest/twilio HTTP/1.1" 101 ' in access, access
        assert '"GET /v1/tenants HTTP/1.1" 401 ' in access, access
        every_log = {path.name: path.read_text() for path in logs.iterdir()}
        for name, text in every_log.items():
            for secret in (acme.pbx, acme.admin, server.operator):
                assert secret not in text, name
            assert "token=" not in text, name
        assert "?" not in access

        # callvault saw nginx's connection (its peer) and the client nginx forwarded.
        log = server.process.log()
        assert acme.pbx not in log and acme.admin not in log
        assert f'"remote": "{address}"' in log
        assert '"forwarded_for": "127.0.0.1"' in log

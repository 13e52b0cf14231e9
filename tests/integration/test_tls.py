"""``callvault serve`` with TLS, end to end, as a process: the API over HTTPS, a Twilio call
over WSS recorded exactly, the demo over https, clients that trust another CA or speak TLS
below 1.2 refused, a SIGHUP that renews the certificate under a live stream (and one that
fails and changes nothing), and the refusal to serve plaintext beyond loopback.

Certificates are made at test time (tests/tls.py): a CA, a server certificate for
127.0.0.1/::1/localhost signed by it, and an unrelated CA.
"""

from __future__ import annotations

import asyncio
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp import WSMsgType

from gateway.demo import load_sample_call, run_demo
from tests.gateway import (
    RECORD,
    ULAW,
    Gateway,
    Server,
    bearer,
    callvault_env,
    read_wav,
    record_call,
    serve,
    tone,
    twilio_call,
    twilio_connected,
    twilio_start,
    twilio_stop,
)
from tests.tls import Pki, local_address, make_pki, served_certificate

NO_AI = {"CALLVAULT_AI__WORKERS": "0", "CALLVAULT_RETENTION__SWEEP_INTERVAL": "PT0S"}
"""No model to load at start and no background sweep: these tests are about the socket."""
LOG_WAIT_S = 30.0
"""How long a test waits for the server to log that it handled a signal."""
REFUSAL_SETTINGS = (
    "CALLVAULT_HTTP__HOST",
    "CALLVAULT_HTTP__TLS_CERT",
    "CALLVAULT_HTTP__TLS_KEY",
    "CALLVAULT_HTTP__TLS_OFFLOADED",
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Server]:
    """One TLS server for the tests that do not change its certificate."""
    with serve(
        tmp_path_factory.mktemp("tls"), "var", trust=pki.client(), **NO_AI, **pki.settings()
    ) as server:
        yield server


def session(server: Server, trust: ssl.SSLContext) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(server.base, connector=aiohttp.TCPConnector(ssl=trust))


def the_served(pki: Pki) -> bytes:
    """The DER certificate ``pki`` holds in its cert file now (the first of the chain)."""
    first = pki.cert_file.read_text().split("-----END CERTIFICATE-----")[0]
    return ssl.PEM_cert_to_DER_cert(first + "-----END CERTIFICATE-----\n")


async def export(client: aiohttp.ClientSession, admin: str, recording_id: str) -> np.ndarray:
    async with client.get(f"/v1/recordings/{recording_id}/audio", headers=bearer(admin)) as r:
        assert r.status == 200, await r.text()
        channels, rate, pcm = read_wav(await r.read())
    assert (channels, rate) == (2, 8000)
    return pcm


def status(url: str, context: ssl.SSLContext | None = None) -> int:
    """The status of a GET of ``url`` (blocking: run it in a thread from a test's loop)."""
    with urllib.request.urlopen(url, timeout=10, context=context) as response:  # noqa: S310
        return int(response.status)


def run_cli(data_dir: Path, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """``callvault *args`` to its end, in a clean environment with ``settings``."""
    return subprocess.run(  # noqa: S603
        [sys.executable, "-m", "gateway.cli", *args],
        env=callvault_env(data_dir, **settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# --- (a) the API over HTTPS, (b) Twilio over WSS -----------------------------------------


async def test_the_api_answers_over_https_and_not_in_plaintext(server: Server, pki: Pki) -> None:
    assert f"callvault serving on https://127.0.0.1:{server.port}" in server.process.log()
    assert await asyncio.to_thread(status, f"{server.base}/healthz", pki.client()) == 200
    async with session(server, pki.client()) as client:
        async with client.get("/v1/tenants", headers=bearer(server.operator)) as response:
            assert response.status == 200, await response.text()
            assert response.url.scheme == "https"
        async with client.get("/v1/tenants") as response:
            assert response.status == 401
    # The port speaks nothing but TLS: a plaintext request gets no HTTP answer.
    async with aiohttp.ClientSession() as plain:
        with pytest.raises(aiohttp.ClientError):
            async with plain.get(f"http://127.0.0.1:{server.port}/healthz") as response:
                await response.read()


async def test_a_twilio_call_over_wss_is_recorded_exactly(server: Server, pki: Pki) -> None:
    async with session(server, pki.client()) as client:
        gateway = Gateway(client=client, operator=server.operator)  # type: ignore[arg-type]
        acme = await gateway.tenant("acme", RECORD)
        call = await record_call(gateway, acme, seconds=1.5, seed=3)  # 1000 after stop
        pcm = await export(client, acme.admin, call.recording_id)
    assert call.outbound is not None
    np.testing.assert_array_equal(pcm[:, 0], ULAW.decode(call.inbound))
    np.testing.assert_array_equal(pcm[:, 1], ULAW.decode(call.outbound))
    assert acme.pbx not in server.process.log()


async def test_the_demo_runs_over_https_with_its_cafile(
    server: Server, pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo-call.wav"
    assert (
        await run_demo(server.base, server.operator, out=out, cafile=pki.ca_file, analysis_wait_s=0)
        == 0
    )
    assert f"callvault demo against {server.base}" in capsys.readouterr().out
    sample = load_sample_call()
    _, _, pcm = read_wav(out.read_bytes())
    np.testing.assert_array_equal(pcm[:, 0], ULAW.decode(ULAW.encode(sample.inbound)))

    # The CLI's --cafile with the wrong CA: one sentence, exit 1, nothing saved.
    wrong = await asyncio.to_thread(
        run_cli,
        tmp_path / "unused",
        "demo", "--url", server.base, f"--token={server.operator}",  # it may begin with -
        "--out", str(tmp_path / "no.wav"), "--cafile", str(pki.other_ca_file),
    )  # fmt: skip
    assert wrong.returncode == 1, wrong.stderr
    assert "is not trusted" in wrong.stderr and "--cafile" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "no.wav").exists()


# --- (c) a client that trusts another CA, (d) TLS below 1.2 --------------------------------


async def test_a_client_trusting_another_ca_is_refused(server: Server, pki: Pki) -> None:
    other = pki.client(trust=pki.other_ca_file)
    with pytest.raises(ssl.SSLCertVerificationError):
        served_certificate("127.0.0.1", server.port, other)
    with pytest.raises(urllib.error.URLError) as refused:
        await asyncio.to_thread(status, f"{server.base}/healthz", other)
    assert isinstance(refused.value.reason, ssl.SSLCertVerificationError)
    async with session(server, other) as client:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await client.ws_connect("/v1/ingest/twilio")
    # ... while ours verifies it, for each name in the certificate.
    assert served_certificate("127.0.0.1", server.port, pki.client()) == the_served(pki)
    assert served_certificate(
        "127.0.0.1", server.port, pki.client(), server_name="localhost"
    ) == the_served(pki)


def test_tls_below_1_2_is_refused_and_1_2_is_served(server: Server, pki: Pki) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0 and 1.1 are deprecated
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.load_verify_locations(pki.ca_file)
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("DEFAULT:@SECLEVEL=0")  # so that this client offers them at all
    # The server drops the handshake (asyncio closes without sending the alert, so the
    # client sees an EOF; tests/unit/test_tls.py sees the alert itself).
    with pytest.raises(ssl.SSLError):
        served_certificate("127.0.0.1", server.port, old)
    tls12 = pki.client()
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    assert served_certificate("127.0.0.1", server.port, tls12) == the_served(pki)


# --- (e) SIGHUP ------------------------------------------------------------------------


def wait_for_log(server: Server, text: str, count: int = 1) -> None:
    """Poll the server's log (another process's progress) until ``text`` is in it
    ``count`` times; fail after LOG_WAIT_S."""
    deadline = time.monotonic() + LOG_WAIT_S
    while server.process.log().count(text) < count:
        assert server.process.process.poll() is None, server.process.log()
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{server.process.log()}"
        time.sleep(0.05)  # polling the server's log, not waiting for time


async def test_sighup_renews_the_certificate_under_a_live_stream(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")  # this test changes the files: a set of its own
    first = the_served(pki)
    with serve(tmp_path, "var", trust=pki.client(), **NO_AI, **pki.settings()) as server:
        assert served_certificate("127.0.0.1", server.port, pki.client()) == first
        async with session(server, pki.client()) as client:
            gateway = Gateway(client=client, operator=server.operator)  # type: ignore[arg-type]
            acme = await gateway.tenant("acme", RECORD)
            announced = await gateway.announce(acme)
            inbound = ULAW.encode(tone(2.0, 440, seed=11))
            outbound = ULAW.encode(tone(2.0, 660, seed=12))
            messages = list(twilio_call(inbound, outbound))
            half = len(messages) // 2

            ws = await client.ws_connect("/v1/ingest/twilio", headers=bearer(acme.pbx))
            await ws.send_str(twilio_connected())
            await ws.send_str(twilio_start(announced["call_id"]))
            for message in messages[:half]:
                await ws.send_str(message)

            # Renewal: new files, then SIGHUP. New handshakes get the new certificate.
            second = pki.install(common_name="renewed")
            server.process.process.send_signal(signal.SIGHUP)
            await asyncio.to_thread(wait_for_log, server, "TLS certificate reloaded")
            assert (
                await asyncio.to_thread(served_certificate, "127.0.0.1", server.port, pki.client())
                == second
            )

            # The stream opened before goes on over its own TLS session to the end.
            for message in messages[half:]:
                await ws.send_str(message)
            await ws.send_str(twilio_stop())
            closing = await ws.receive()
            await ws.close()
            assert (closing.type, closing.data) == (WSMsgType.CLOSE, 1000), closing
            pcm = await export(client, acme.admin, announced["recording_id"])
        np.testing.assert_array_equal(pcm[:, 0], ULAW.decode(inbound))
        np.testing.assert_array_equal(pcm[:, 1], ULAW.decode(outbound))

        # A renewal caught half-way (the key of another certificate): logged, and the
        # certificate that works goes on being served.
        stray = pki.ca.issue()[1]
        pki.key_file.write_bytes(stray)
        server.process.process.send_signal(signal.SIGHUP)
        wait_for_log(server, "TLS reload failed")
        assert served_certificate("127.0.0.1", server.port, pki.client()) == second
        log = server.process.log()
        assert "CALLVAULT_HTTP__TLS_KEY" in log
        for line in stray.decode().splitlines()[1:-1]:
            assert line not in log

        server.process.process.send_signal(signal.SIGTERM)  # shutdown is as graceful as ever
        assert server.process.process.wait(timeout=30) == 0, server.process.log()
        assert "Traceback" not in server.process.log()


# --- (f) no plaintext beyond loopback ----------------------------------------------------


@pytest.mark.parametrize("how", ["env", "flag"])
@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.2", "gateway.internal"])  # noqa: S104
def test_serve_refuses_a_plaintext_non_loopback_host_naming_the_settings(
    tmp_path: Path, host: str, how: str
) -> None:
    data_dir = tmp_path / "var"
    if how == "flag":
        result = run_cli(data_dir, "serve", "--host", host, **NO_AI)
    else:
        result = run_cli(data_dir, "serve", CALLVAULT_HTTP__HOST=host, **NO_AI)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("callvault: CALLVAULT_HTTP__HOST: ")
    assert all(name in lines[0] for name in REFUSAL_SETTINGS)
    assert result.stdout == ""  # no operator token minted, nothing served
    assert not data_dir.exists()  # nothing opened or stored


def test_serve_starts_on_a_non_loopback_host_when_tls_is_offloaded(tmp_path: Path) -> None:
    host = local_address() or "0.0.0.0"  # noqa: S104 - the wildcard is non-loopback too
    reach = host if host != "0.0.0.0" else "127.0.0.1"  # noqa: S104
    offloaded = {"CALLVAULT_HTTP__HOST": host, "CALLVAULT_HTTP__TLS_OFFLOADED": "true"}
    with serve(tmp_path, "var", reach=reach, **NO_AI, **offloaded) as server:
        assert status(f"{server.base}/healthz") == 200
        assert f"callvault serving on http://{host}:{server.port}" in server.process.log()


def test_a_cert_without_a_key_is_refused_naming_both(tmp_path: Path, pki: Pki) -> None:
    result = run_cli(
        tmp_path / "var", "serve", CALLVAULT_HTTP__TLS_CERT=str(pki.cert_file), **NO_AI
    )
    assert result.returncode == 2
    assert "CALLVAULT_HTTP__TLS_CERT" in result.stderr
    assert "CALLVAULT_HTTP__TLS_KEY" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_key_that_does_not_match_refuses_to_start(tmp_path: Path, pki: Pki) -> None:
    stray = tmp_path / "stray.key"
    stray.write_bytes(pki.ca.issue()[1])
    result = run_cli(
        tmp_path / "var",
        "serve",
        CALLVAULT_HTTP__TLS_CERT=str(pki.cert_file),
        CALLVAULT_HTTP__TLS_KEY=str(stray),
        **NO_AI,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("callvault: CALLVAULT_HTTP__TLS_KEY: ")
    assert "is not the private key" in result.stderr
    assert stray.read_text().splitlines()[1] not in result.stderr
    assert not (tmp_path / "var").exists()

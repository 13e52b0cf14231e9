"""TLS settings and context: both files or neither, one sentence naming the setting for every
bad file, TLS 1.2 at least, an all-or-nothing reload, and the two exposure rules (no
plaintext beyond loopback unless offloaded; no token in a plaintext URL from elsewhere)."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import ssl
import threading
import warnings
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError

from crypto.errors import ConfigError
from gateway.settings import HttpSettings, Settings, is_loopback
from gateway.tls import (
    ServerTls,
    check_exposure,
    load_context,
    peer_is_loopback,
    token_in_url_allowed,
)
from tests.tls import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def http(pki: Pki, *, cert: Path | None = None, key: Path | None = None) -> HttpSettings:
    return HttpSettings(tls_cert=cert or pki.cert_file, tls_key=key or pki.key_file)


# --- settings ---------------------------------------------------------------------------


def test_tls_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, pki: Pki) -> None:
    monkeypatch.setenv("CALLVAULT_HTTP__TLS_CERT", str(pki.cert_file))
    monkeypatch.setenv("CALLVAULT_HTTP__TLS_KEY", str(pki.key_file))
    monkeypatch.setenv("CALLVAULT_HTTP__TLS_OFFLOADED", "true")
    settings = Settings()
    assert (settings.http.tls_cert, settings.http.tls_key) == (pki.cert_file, pki.key_file)
    assert settings.http.tls and settings.http.tls_offloaded


def test_tls_is_off_by_default() -> None:
    http = HttpSettings()
    assert (http.tls_cert, http.tls_key, http.tls_offloaded, http.tls) == (None, None, False, False)


@pytest.mark.parametrize("given", ["CALLVAULT_HTTP__TLS_CERT", "CALLVAULT_HTTP__TLS_KEY"])
def test_a_cert_without_a_key_or_a_key_without_a_cert_is_refused_naming_both(
    monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    monkeypatch.setenv(given, "/etc/ssl/callvault/file.pem")
    with pytest.raises(ValidationError) as refused:
        Settings()
    message = str(refused.value)
    assert "CALLVAULT_HTTP__TLS_CERT" in message and "CALLVAULT_HTTP__TLS_KEY" in message


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("LOCALHOST.", True),
        ("0.0.0.0", False),  # noqa: S104 - the wildcard is the case under test
        ("::", False),
        ("192.0.2.2", False),
        ("10.0.0.5", False),
        ("fd00::2", False),
        ("::ffff:10.0.0.5", False),
        ("gateway.internal", False),
        ("localhost.example.com", False),
        ("", False),
    ],
)
def test_loopback_is_127_8_and_1_and_localhost_only(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    assert HttpSettings(host=host).loopback is loopback


# --- the refusal to expose plaintext ----------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.2", "gateway.internal"])  # noqa: S104
def test_a_non_loopback_host_without_tls_is_refused_naming_the_settings(host: str) -> None:
    with pytest.raises(ConfigError) as refused:
        check_exposure(HttpSettings(host=host))
    assert refused.value.setting == "CALLVAULT_HTTP__HOST"
    message = refused.value.message
    for name in (
        "CALLVAULT_HTTP__HOST",
        "CALLVAULT_HTTP__TLS_CERT",
        "CALLVAULT_HTTP__TLS_KEY",
        "CALLVAULT_HTTP__TLS_OFFLOADED",
    ):
        assert name in message
    assert host in message
    assert message.count(". ") == 0  # one sentence


def test_loopback_tls_or_offloaded_may_listen(pki: Pki) -> None:
    check_exposure(HttpSettings())
    check_exposure(HttpSettings(host="localhost"))
    check_exposure(HttpSettings(host="0.0.0.0", tls_offloaded=True))  # noqa: S104
    check_exposure(HttpSettings(host="0.0.0.0", tls_cert=pki.cert_file, tls_key=pki.key_file))  # noqa: S104


# --- ?token= -----------------------------------------------------------------------------


def test_a_token_in_the_url_needs_tls_an_offloading_proxy_or_a_loopback_peer() -> None:
    decisions = {
        (secure, offloaded, loopback): token_in_url_allowed(
            secure=secure, offloaded=offloaded, peer_loopback=loopback
        )
        for secure in (False, True)
        for offloaded in (False, True)
        for loopback in (False, True)
    }
    refused = [case for case, allowed in decisions.items() if not allowed]
    assert refused == [(False, False, False)]


@pytest.mark.parametrize(
    ("peername", "loopback"),
    [
        (("127.0.0.1", 5555), True),
        (("::1", 5555, 0, 0), True),
        (("::ffff:127.0.0.1", 5555, 0, 0), True),
        (("192.0.2.2", 5555), False),
        (("fd00::2", 5555, 0, 0), False),
        (None, False),  # a closed transport: not known to be local
        ("", False),
    ],
)
def test_the_peer_of_a_socket_is_loopback_only_from_this_machine(
    peername: object, loopback: bool
) -> None:
    assert peer_is_loopback(peername) is loopback


# --- the context --------------------------------------------------------------------------


def test_the_context_serves_tls_1_2_and_later_with_the_given_certificate(pki: Pki) -> None:
    context = load_context(http(pki))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE  # no client certificates asked for
    stats = context.cert_store_stats()
    assert stats["x509"] == 0  # the chain is served, not trusted


def test_a_missing_cert_or_key_is_one_sentence_naming_its_setting(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist") as refused:
        load_context(http(pki, cert=tmp_path / "nope.pem"))
    assert refused.value.setting == "CALLVAULT_HTTP__TLS_CERT"
    with pytest.raises(ConfigError, match="does not exist") as refused:
        load_context(http(pki, key=tmp_path / "nope.key"))
    assert refused.value.setting == "CALLVAULT_HTTP__TLS_KEY"
    with pytest.raises(ConfigError, match="directory") as refused:
        load_context(http(pki, key=tmp_path))
    assert refused.value.setting == "CALLVAULT_HTTP__TLS_KEY"


def test_an_unreadable_key_names_its_setting(pki: Pki, tmp_path: Path) -> None:
    """A key this user may not read; as root (CI), which reads any file, a file whose read
    fails all the same (``/proc/self/mem`` answers EIO)."""
    if os.geteuid() == 0:
        key, problem = Path("/proc/self/mem"), "cannot be read"
    else:
        key, problem = tmp_path / "locked.key", "permission denied"
        key.write_bytes(pki.key_file.read_bytes())
        key.chmod(0)
    with pytest.raises(ConfigError, match=problem) as refused:
        load_context(http(pki, key=key))
    assert refused.value.setting == "CALLVAULT_HTTP__TLS_KEY"


def test_files_that_are_not_pem_name_their_setting(pki: Pki, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="no PEM certificate") as refused:
        load_context(http(pki, cert=garbage))
    assert refused.value.setting == "CALLVAULT_HTTP__TLS_CERT"
    with pytest.raises(ConfigError, match="no unencrypted PEM private key") as refused:
        load_context(http(pki, key=garbage))
    assert refused.value.setting == "CALLVAULT_HTTP__TLS_KEY"
    # A key given as the certificate: it names the certificate setting, not the key's.
    with pytest.raises(ConfigError) as refused:
        load_context(http(pki, cert=pki.key_file))
    assert refused.value.setting == "CALLVAULT_HTTP__TLS_CERT"
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match="OpenSSL can load") as refused:
        load_context(http(pki, cert=broken))
    assert refused.value.setting == "CALLVAULT_HTTP__TLS_CERT"


def test_a_key_of_another_certificate_is_refused_as_not_matching(pki: Pki, tmp_path: Path) -> None:
    other = tmp_path / "other.key"
    other.write_bytes(pki.ca.issue()[1])
    with pytest.raises(ConfigError, match="is not the private key of the certificate") as refused:
        load_context(http(pki, key=other))
    assert refused.value.setting == "CALLVAULT_HTTP__TLS_KEY"
    assert other.read_text() not in refused.value.message


def test_an_encrypted_key_is_refused_without_asking_for_a_passphrase(
    pki: Pki, tmp_path: Path
) -> None:
    key = serialization.load_pem_private_key(pki.key_file.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    with pytest.raises(ConfigError, match="encrypted key cannot be used") as refused:
        load_context(http(pki, key=encrypted))
    assert refused.value.setting == "CALLVAULT_HTTP__TLS_KEY"


# --- reload -------------------------------------------------------------------------------


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> tuple[bytes | None, str]:
    """One handshake over a socket pair, the server end wrapped by ``server``: (the DER
    certificate the client got, or ``None`` if the client failed; the server's error)."""
    left, right = socket.socketpair()
    server_error: list[str] = []

    def accept() -> None:
        try:
            with server.wrap_socket(right, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError) as e:
            server_error.append(str(e))

    thread = threading.Thread(target=accept)
    thread.start()
    served: bytes | None = None
    try:
        with client.wrap_socket(left, server_hostname="127.0.0.1") as tls:
            served = tls.getpeercert(binary_form=True)
    except ssl.SSLError as e:
        server_error.append(f"client: {e}")
    finally:
        left.close()
        thread.join(timeout=10)
        right.close()
    return served, " ".join(server_error)


def der(pki: Pki) -> bytes:
    pem = pki.cert_file.read_text().split("-----END CERTIFICATE-----")[0]
    return ssl.PEM_cert_to_DER_cert(pem + "-----END CERTIFICATE-----\n")


def test_a_reload_hands_new_handshakes_the_new_certificate(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    tls = ServerTls(http(pki))
    first = der(pki)
    assert handshake(tls.context, pki.client())[0] == first
    assert tls.fingerprint.replace(":", "").lower() == hashlib.sha256(first).hexdigest()
    second = pki.install()
    assert handshake(tls.context, pki.client())[0] == first  # not before the signal
    assert tls.reload() is True
    assert handshake(tls.context, pki.client())[0] == second
    assert tls.fingerprint.replace(":", "").lower() == hashlib.sha256(second).hexdigest()


def test_a_reload_that_fails_changes_nothing_and_logs_no_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pki = make_pki(tmp_path)
    tls = ServerTls(http(pki))
    first, fingerprint = der(pki), tls.fingerprint
    # A renewal caught half-way: the key of another certificate, then no key at all.
    stray_key = pki.ca.issue()[1]
    pki.key_file.write_bytes(stray_key)
    with caplog.at_level(logging.INFO, logger="gateway.tls"):
        assert tls.reload() is False
        pki.key_file.unlink()
        assert tls.reload() is False
    assert handshake(tls.context, pki.client())[0] == first
    assert tls.fingerprint == fingerprint
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 2
    assert all(fingerprint in r.getMessage() for r in failures)
    assert "not the private key" in failures[0].getMessage()
    assert "does not exist" in failures[1].getMessage()
    assert all(r.__dict__["setting"] == "CALLVAULT_HTTP__TLS_KEY" for r in failures)
    for line in stray_key.decode().splitlines()[1:-1]:
        assert line not in caplog.text


def test_old_clients_are_refused_and_tls_1_2_is_served(pki: Pki) -> None:
    server = load_context(http(pki))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1 and 1.1 are deprecated
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.load_verify_locations(pki.ca_file)
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("DEFAULT:@SECLEVEL=0")  # so that the client offers them at all
    served, errors = handshake(server, old)
    assert served is None
    # The server refused the version (the client did offer it).
    assert "UNSUPPORTED_PROTOCOL" in errors and "PROTOCOL_VERSION" in errors
    tls12 = pki.client()
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    assert handshake(server, tls12)[0] == der(pki)

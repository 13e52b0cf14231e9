"""TLS for the API and WebSocket ingest, and the two rules that keep secrets off plaintext.

The announcement's answer carries SRTP keys and every request a bearer token, so anything
that leaves this machine must be encrypted: ``serve`` speaks HTTPS/WSS itself from
``CALLVAULT_HTTP__TLS_CERT``/``__TLS_KEY``, or says (``CALLVAULT_HTTP__TLS_OFFLOADED``) that a
proxy in front terminates TLS. Without either it refuses to listen beyond loopback
(``check_exposure``), and a WebSocket token in the URL, which proxies and browsers log, is
refused on a plaintext socket whose peer is not this machine (``token_in_url_allowed``).

Certificates are renewed while calls are live (ACME every 60 days or so), so the certificate
is reloaded on SIGHUP without closing a connection. The listening ``SSLContext`` stays the
one the server was started with; a reload builds and checks a fresh context, and the
listening context's SNI callback (OpenSSL calls it on every handshake, with or without a
server name) hands each new handshake the newest one. A reload is therefore all or
nothing: a certificate and key that do not load, or do not match, never reach a handshake,
and the previous ones go on serving. (Loading the new files into the listening context
itself would not be: OpenSSL swaps the certificate in before it checks the key, so a bad
key would leave the live context with no usable key.)
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import signal
import ssl
from pathlib import Path

from aiohttp import web

from crypto.errors import ConfigError
from gateway.settings import HttpSettings, is_loopback

log = logging.getLogger(__name__)

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
"""The oldest TLS the server speaks (TLS 1.0 and 1.1 are deprecated by RFC 8996)."""
CERT_SETTING = "CALLVAULT_HTTP__TLS_CERT"
KEY_SETTING = "CALLVAULT_HTTP__TLS_KEY"
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\s.*?-----END CERTIFICATE-----", re.S)


# --- the exposure rules ---------------------------------------------------------------


def check_exposure(http: HttpSettings) -> None:
    """Refuse (``ConfigError``: exit 2) to serve plaintext on a non-loopback address unless
    a proxy in front terminates TLS."""
    if http.loopback or http.tls or http.tls_offloaded:
        return
    raise ConfigError(
        "CALLVAULT_HTTP__HOST",
        f"{http.host} is not a loopback address and TLS is off, so tokens and SRTP keys would "
        f"cross the network in clear: set {CERT_SETTING} and {KEY_SETTING} to serve "
        "HTTPS/WSS, or set CALLVAULT_HTTP__TLS_OFFLOADED=true if a proxy in front of "
        "callvault terminates TLS.",
    )


def peer_is_loopback(peername: object) -> bool:
    """Whether a socket's ``peername`` (``(host, port, ...)``) is this machine."""
    return isinstance(peername, tuple) and bool(peername) and is_loopback(str(peername[0]))


def token_in_url_allowed(*, secure: bool, offloaded: bool, peer_loopback: bool) -> bool:
    """Whether a WebSocket upgrade may carry its token as ``?token=``: on TLS, behind a
    proxy that terminated TLS (``offloaded``: the operator says every connection arrived
    encrypted, and the proxy must not log query strings), or from this machine."""
    return secure or offloaded or peer_loopback


# --- the server's context -------------------------------------------------------------


def load_context(http: HttpSettings) -> ssl.SSLContext:
    """A server ``SSLContext`` (TLS 1.2 or later) holding ``tls_cert`` and ``tls_key``;
    ``ConfigError`` naming the setting when a file is missing, unreadable, not PEM, or the
    key is not the certificate's."""
    if http.tls_cert is None or http.tls_key is None:
        raise ConfigError(CERT_SETTING, f"TLS needs both {CERT_SETTING} and {KEY_SETTING}.")
    cert, key = http.tls_cert, http.tls_key
    certs = _read(CERT_SETTING, cert)
    _read(KEY_SETTING, key)
    if not _PEM_CERT.search(certs):
        raise ConfigError(CERT_SETTING, f"{cert} holds no PEM certificate (BEGIN CERTIFICATE).")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as e:
        if "KEY_VALUES_MISMATCH" in str(e):
            raise ConfigError(
                KEY_SETTING, f"{key} is not the private key of the certificate in {cert}."
            ) from None
        if _has_private_key(key):
            raise ConfigError(
                CERT_SETTING, f"{cert} is not a PEM certificate chain OpenSSL can load ({e})."
            ) from None
        raise ConfigError(
            KEY_SETTING,
            f"{key} holds no unencrypted PEM private key (an encrypted key cannot be used: "
            "callvault cannot ask for its passphrase).",
        ) from None
    return context


def fingerprint(http: HttpSettings) -> str:
    """SHA-256 of the served certificate (the first of ``tls_cert``), as ``openssl x509
    -fingerprint -sha256`` prints it: a public value that tells which certificate is live."""
    assert http.tls_cert is not None  # noqa: S101
    found = _PEM_CERT.search(_read(CERT_SETTING, http.tls_cert))
    assert found is not None  # noqa: S101 - load_context checked it
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(found.group().decode())).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2)).upper()


def _read(setting: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(setting, f"{path} does not exist.") from None
    except IsADirectoryError:
        raise ConfigError(setting, f"{path} is a directory, not a PEM file.") from None
    except PermissionError:
        raise ConfigError(
            setting, f"{path} cannot be read by this user (permission denied)."
        ) from None
    except OSError as e:
        raise ConfigError(setting, f"{path} cannot be read: {e.strerror or e}.") from None


def _has_private_key(path: Path) -> bool:
    """Whether the key file holds an unencrypted PEM private key (so a failed load was the
    certificate's fault)."""
    text = _read(KEY_SETTING, path)
    found = re.search(rb"-----BEGIN (RSA |EC )?PRIVATE KEY-----", text) is not None
    return found and b"ENCRYPTED" not in text


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key's
    # passphrase and block the start; an empty one makes the load fail instead.
    return b""


class ServerTls:
    """The listening context of ``serve`` and the certificate it hands out now."""

    def __init__(self, http: HttpSettings) -> None:
        self._http = http
        self.context = load_context(http)
        self._current = self.context
        self.context.sni_callback = self._select
        self.fingerprint = fingerprint(http)

    def _select(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        """Each handshake (before the certificate is sent): the newest loaded context."""
        if self._current is not self.context:
            connection.context = self._current

    def reload(self) -> bool:
        """Load the certificate and key files again; new handshakes get them, open
        connections keep theirs. A failure is logged and changes nothing."""
        try:
            fresh = load_context(self._http)
            fresh_fingerprint = fingerprint(self._http)
        except ConfigError as e:
            log.error(
                "TLS reload failed; still serving the certificate %s: %s",
                self.fingerprint,
                e.message,
                extra={"setting": e.setting},
            )
            return False
        self._current, self.fingerprint = fresh, fresh_fingerprint
        log.info("TLS certificate reloaded: now serving %s", fresh_fingerprint)
        return True

    def reload_on_sighup(self, app: web.Application) -> None:
        """Install the SIGHUP handler on the app's running loop while it serves."""

        async def install(app: web.Application) -> None:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload)

        async def remove(app: web.Application) -> None:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)

        app.on_startup.append(install)
        app.on_cleanup.append(remove)

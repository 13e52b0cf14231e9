"""Certificates for TLS tests, made with ``cryptography`` at test time (nothing checked in
expires or leaks): a CA, a server certificate it signs for this machine (``127.0.0.1``,
``::1`` and ``localhost`` in its subjectAltName), a second, unrelated CA, and client
contexts that trust one or the other.

Every tier reuses these: ``make_pki(tmp_path)`` writes the PEM files and hands back their
paths and the settings that point ``callvault serve`` at them.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_NAMES = ("127.0.0.1", "::1", "localhost")
"""What the server certificate is valid for: how the tests reach ``serve``."""


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "callvault tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class Authority:
    """A CA: its certificate and key, able to issue server certificates."""

    name: str
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, name: str) -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(name, cert, key)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self, names: tuple[str, ...] = SERVER_NAMES, *, common_name: str = "callvault test server"
    ) -> tuple[x509.Certificate, bytes]:
        """A fresh server certificate for ``names`` (IP addresses or DNS names) and its
        private key as unencrypted PEM."""
        key = ec.generate_private_key(ec.SECP256R1())
        alt: list[x509.GeneralName] = []
        for name in names:
            try:
                alt.append(x509.IPAddress(ip_address(name)))
            except ValueError:
                alt.append(x509.DNSName(name))
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
            .sign(self.key, hashes.SHA256())
        )
        return cert, _pem_key(key)


@dataclass(frozen=True)
class Pki:
    """The PEM files of one test's TLS set-up (all under ``directory``)."""

    directory: Path
    ca: Authority
    other_ca: Authority
    """A CA that signed nothing the server serves: a client trusting it must refuse."""
    ca_file: Path
    other_ca_file: Path
    cert_file: Path
    """The server's certificate chain (its certificate, then the CA's)."""
    key_file: Path

    def install(self, names: tuple[str, ...] = SERVER_NAMES, *, common_name: str = "") -> bytes:
        """Issue a new server certificate and key and write them over ``cert_file`` and
        ``key_file`` (each replaced atomically, key first, as a renewal tool does); its DER."""
        cert, key = self.ca.issue(names, common_name=common_name or "callvault test server")
        chain = cert.public_bytes(serialization.Encoding.PEM) + self.ca.pem
        _replace(self.key_file, key)
        _replace(self.cert_file, chain)
        return cert.public_bytes(serialization.Encoding.DER)

    def settings(self) -> dict[str, str]:
        """The environment that makes ``callvault serve`` speak TLS with these files."""
        return {
            "CALLVAULT_HTTP__TLS_CERT": str(self.cert_file),
            "CALLVAULT_HTTP__TLS_KEY": str(self.key_file),
        }

    def client(self, *, trust: Path | None = None) -> ssl.SSLContext:
        """A client context that verifies the server against ``trust`` (default: our CA)."""
        return ssl.create_default_context(cafile=str(trust or self.ca_file))


def make_pki(directory: Path, names: tuple[str, ...] = SERVER_NAMES) -> Pki:
    """A CA, a server certificate for ``names`` (default: this machine's loopback names) and
    an unrelated CA, written as PEM files into ``directory`` (created)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, other = Authority.create("callvault test CA"), Authority.create("unrelated test CA")
    pki = Pki(
        directory=directory,
        ca=ca,
        other_ca=other,
        ca_file=directory / "ca.pem",
        other_ca_file=directory / "other-ca.pem",
        cert_file=directory / "server.pem",
        key_file=directory / "server.key",
    )
    pki.ca_file.write_bytes(ca.pem)
    pki.other_ca_file.write_bytes(other.pem)
    pki.install(names)
    return pki


def _replace(path: Path, data: bytes) -> None:
    scratch = path.with_name(path.name + ".new")
    scratch.write_bytes(data)
    scratch.chmod(0o600)
    scratch.replace(path)


def served_certificate(
    host: str, port: int, context: ssl.SSLContext, *, server_name: str | None = None
) -> bytes:
    """The DER certificate a TLS server at ``host:port`` presents to a new connection
    (verified by ``context``; raises ``ssl.SSLError`` if the handshake fails)."""
    with (
        socket.create_connection((host, port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_name or host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def local_address() -> str | None:
    """A non-loopback IPv4 address of this machine (the one its default route leaves from),
    or ``None`` when it has none: tests of what a peer on another machine gets bind to it.
    Nothing is sent: connecting a UDP socket only picks the route."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: routed like any remote address
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    if ip_address(address).is_loopback or address == "0.0.0.0":  # noqa: S104
        return None
    try:  # the address must be bindable here (not a NAT's outside address)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as check:
            check.bind((address, 0))
    except OSError:
        return None
    return address

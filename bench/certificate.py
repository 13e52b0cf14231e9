"""A throw-away certificate for benchmarks that serve TLS on loopback: a CA and a server
certificate it signs for 127.0.0.1 (ECDSA P-256, what ACME clients issue by default), as
PEM files, and a client context that trusts the CA."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    signer: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
) -> x509.Certificate:
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ip_address("127.0.0.1"))]), False
        )
    return builder.sign(signer, hashes.SHA256())


def make_certificate(directory: Path) -> tuple[Path, Path, ssl.SSLContext]:
    """(chain PEM path, key PEM path, a client context that trusts them) in ``directory``."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate(
        "bench CA",
        ca_key,
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")]),
        ca_key,
        ca=True,
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = _certificate("127.0.0.1", key, ca.subject, ca_key, ca=False)
    pem = serialization.Encoding.PEM
    chain, key_path = directory / "chain.pem", directory / "key.pem"
    chain.write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    key_path.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    client = ssl.create_default_context(cadata=ca.public_bytes(pem).decode())
    return chain, key_path, client

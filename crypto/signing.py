"""Ed25519 signatures of the audit log's checkpoints.

Why this module exists: a keyed audit chain (``storage.catalog.auditchain``) stops a
database writer from forging events, but not from cutting the chain's tail off and moving
the head back. The gateway therefore signs the chain's head now and then (a *checkpoint*)
with a key that lives in the keyring, not in the database, and publishes the signatures
(API, webhook) and the public key, so that anyone can check later that the chain still
holds every event it held when a checkpoint was made. Only this module touches the
signature primitive; the rest of callvault sees ``CheckpointSigner`` and
``verify_signature``.

The key id is ``ed25519-`` and the first 16 hex digits of SHA-256 of the raw public key: it
names the key in each checkpoint without a lookup table, and a verifier recomputes it.
"""

from __future__ import annotations

import base64
import hashlib
import secrets

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SEED_SIZE = 32
"""The raw private key (seed) of Ed25519, wrapped in the keyring like a KEK."""
SIGNATURE_SIZE = 64
ALGORITHM = "Ed25519"


def new_seed() -> bytes:
    """A fresh random Ed25519 private key (its 32-byte seed)."""
    return secrets.token_bytes(SEED_SIZE)


def key_id_of(public_key: bytes) -> str:
    """The id of a raw 32-byte Ed25519 public key: ``ed25519-`` + 16 hex digits of its
    SHA-256."""
    return "ed25519-" + hashlib.sha256(public_key).hexdigest()[:16]


class CheckpointSigner:
    """The gateway's signing key: signs checkpoint messages, and tells its public key."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_SIZE:
            raise ValueError("an Ed25519 seed is 32 bytes")
        self._private = Ed25519PrivateKey.from_private_bytes(seed)
        public = self._private.public_key()
        self.public_key: bytes = public.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        """The raw 32-byte public key."""
        self.public_key_pem: str = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
        """The public key as a PEM ``PUBLIC KEY`` (SubjectPublicKeyInfo), for OpenSSL."""
        self.key_id = key_id_of(self.public_key)

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message``."""
        return self._private.sign(message)

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is this key's signature of ``message``."""
        return verify_signature(self.public_key, message, signature)


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is a valid Ed25519 signature of ``message`` under the raw
    ``public_key``; anything malformed is simply not valid."""
    if len(public_key) != 32 or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def encode_signature(signature: bytes) -> str:
    """The form signatures are stored and published in: standard base64."""
    return base64.b64encode(signature).decode()


def decode_signature(value: str) -> bytes:
    """Reverse ``encode_signature``; malformed text gives bytes that fail verification."""
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        return b""

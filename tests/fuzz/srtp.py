"""Fuzz SRTP ingest: ``tests.fuzz.rtp`` with each track keyed (libsrtp's unprotect through
pylibsrtp with fixed keys, the replay window, re-latching to a new address)."""

from __future__ import annotations

from tests.fuzz.rtp import run


def fuzz_one(data: bytes) -> None:
    run(data, srtp=True)

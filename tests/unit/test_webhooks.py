"""The webhook signature scheme (sign/verify, no I/O) and the retry schedule (the address
policy that keeps webhooks off private networks is tests/unit/test_egress.py's)."""

from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta

import pytest

from gateway.webhooks import MAX_RETRY_DELAY, retry_delay, sign, verify

SECRET = "whsec_test_0123456789"
T = 1_700_000_000
BODY = b'{"id":"evt_1","event":"analysis.completed"}'
# Computed once with `hmac.new(SECRET, b"1700000000." + BODY, sha256).hexdigest()`; kept as a
# literal so that a change of the scheme (what is signed, how) fails here.
KNOWN_V1 = "af46030739840c1f74ab8d05e5ffe0bfb63bbf0e9dfd7c2d1c57a11210e97ad0"


# --- sign -----------------------------------------------------------------------------------


def test_sign_known_answer() -> None:
    assert sign(SECRET, T, BODY) == f"t={T},v1={KNOWN_V1}"


def test_sign_matches_an_independent_hmac() -> None:
    for secret, timestamp, body in [
        (SECRET, T, BODY),
        ("another-secret-of-some-length", 0, b""),
        ("ünïcode-secret-0123456789", 4_102_444_800, bytes(range(256))),
    ]:
        expected = hmac.new(
            secret.encode("utf-8"), str(timestamp).encode() + b"." + body, hashlib.sha256
        ).hexdigest()
        assert sign(secret, timestamp, body) == f"t={timestamp},v1={expected}"


def test_the_timestamp_is_signed_too() -> None:
    assert sign(SECRET, T, BODY) != sign(SECRET, T + 1, BODY)
    moved = sign(SECRET, T, BODY).replace(f"t={T}", f"t={T + 1}")
    assert not verify(SECRET, moved, BODY, now=T + 1)


# --- verify ---------------------------------------------------------------------------------


def test_verify_accepts_its_own_signature_within_tolerance() -> None:
    header = sign(SECRET, T, BODY)
    assert verify(SECRET, header, BODY, now=T)
    assert verify(SECRET, header, BODY, now=T + 300)  # the boundary is inclusive
    assert verify(SECRET, header, BODY, now=T - 300)  # a receiver's clock may lag
    assert verify(SECRET, header, BODY, now=T + 3600, tolerance_s=3600)
    assert verify(SECRET, f"t={T}, v1={KNOWN_V1}", BODY, now=T)  # spaces after commas


def test_verify_refuses_a_tampered_body() -> None:
    header = sign(SECRET, T, BODY)
    assert not verify(SECRET, header, BODY.replace(b"completed", b"failed"), now=T)
    assert not verify(SECRET, header, BODY + b" ", now=T)
    assert not verify(SECRET, header, b"", now=T)


def test_verify_refuses_a_wrong_secret() -> None:
    header = sign(SECRET, T, BODY)
    assert not verify("whsec_test_0123456788", header, BODY, now=T)
    assert not verify(SECRET.upper(), header, BODY, now=T)


def test_verify_refuses_stale_and_future_timestamps() -> None:
    header = sign(SECRET, T, BODY)
    assert not verify(SECRET, header, BODY, now=T + 301)
    assert not verify(SECRET, header, BODY, now=T - 301)
    assert not verify(SECRET, header, BODY, now=T + 10, tolerance_s=5)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        f"v1={KNOWN_V1}",  # no timestamp
        f"t={T}",  # no signature
        f"t={T},v1=",
        f"t=abc,v1={KNOWN_V1}",
        f"t=+{T},v1={KNOWN_V1}",
        f"t={T}.0,v1={KNOWN_V1}",
        f"t=,v1={KNOWN_V1}",
        f"t={T},t={T},v1={KNOWN_V1}",  # two timestamps: ambiguous
        f"t={T},v1={KNOWN_V1.upper()}",
        f"t={T},v1={KNOWN_V1[:-1]}",
        f"t={T},v0={KNOWN_V1}",  # only an unknown scheme
        f"t={T};v1={KNOWN_V1}",
        f"t={T},{KNOWN_V1}",
        f"t=١٧٠٠٠٠٠٠٠٠,v1={KNOWN_V1}",  # non-ASCII digits int() would take
        f"t={'9' * 5000},v1={KNOWN_V1}",  # more digits than int() converts
    ],
)
def test_verify_refuses_malformed_headers(header: str) -> None:
    assert not verify(SECRET, header, BODY, now=T)


def test_verify_accepts_any_matching_v1_and_ignores_other_schemes() -> None:
    # A receiver may get two signatures during a secret rotation, or a future scheme.
    other = sign("the-previous-secret-value", T, BODY).split("v1=")[1]
    assert verify(SECRET, f"t={T},v1={other},v1={KNOWN_V1}", BODY, now=T)
    assert verify(SECRET, f"t={T},v0=abc,v1={KNOWN_V1},v2=xyz", BODY, now=T)
    assert not verify(SECRET, f"t={T},v1={other},v1={other}", BODY, now=T)


# --- retries --------------------------------------------------------------------------------


def test_retry_delay_doubles_per_attempt_and_is_capped_at_an_hour() -> None:
    backoff = timedelta(seconds=10)
    delays = [retry_delay(backoff, attempts) for attempts in range(1, 11)]
    assert delays[:5] == [timedelta(seconds=s) for s in (10, 20, 40, 80, 160)]
    assert delays[8] == timedelta(seconds=2560)
    assert delays[9] == MAX_RETRY_DELAY == timedelta(hours=1)  # 5120 s capped
    assert retry_delay(backoff, 50) == MAX_RETRY_DELAY  # no timedelta overflow
    assert retry_delay(timedelta(0), 5) == timedelta(0)
    assert retry_delay(timedelta(hours=2), 1) == MAX_RETRY_DELAY

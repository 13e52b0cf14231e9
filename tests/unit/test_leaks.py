"""The secret watch itself (tests/leaks.py): it must find what it is there to find, or the
run's "no leaks" would prove nothing."""

from __future__ import annotations

import base64
import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from crypto.keys import LocalKeyring
from gateway import auth, calls
from gateway.ingest.rtp import SrtpKey
from storage import webhooksecret
from tests.leaks import WATCH, SecretWatch, install

T0 = datetime(2026, 12, 6, tzinfo=UTC)
LOG = logging.getLogger("callvault.leak-test")
"""The logger these tests leak into on purpose: cut off from the root's, which the session's
watch searches."""


@pytest.fixture
def watch() -> SecretWatch:
    """A watch of its own on ``LOG``, installed for the test (beside the session's)."""
    watch = SecretWatch()
    undo = install(watch, logger=LOG.name)
    yield watch
    undo()


def test_a_minted_token_in_a_log_message_is_a_leak(watch: SecretWatch) -> None:
    secret = auth.new_secret()
    LOG.info("the request had %s", secret)
    assert [leak.kind for leak in watch.leaks()] == ["token"]


def test_a_token_in_an_extra_field_or_a_traceback_is_a_leak(watch: SecretWatch) -> None:
    secret = auth.new_secret()[3:]  # not token-shaped: found because it was minted
    watch.remember("token", secret)
    LOG.warning("refused", extra={"header": secret})
    assert len(watch.leaks()) == 1
    other = SecretWatch()
    undo = install(other, logger=LOG.name)
    try:
        try:
            raise ValueError(f"bad {auth.new_secret()}")
        except ValueError:
            LOG.exception("failed")
    finally:
        undo()
    assert [leak.kind for leak in other.leaks()] == ["token"]


def test_an_srtp_key_in_any_written_form_is_a_leak(watch: SecretWatch) -> None:
    key = SrtpKey.generate()
    LOG.info("key %s", key.material.hex())
    assert [leak.kind for leak in watch.leaks()] == ["SRTP key"]
    quiet = SecretWatch()
    undo = install(quiet, logger=LOG.name)
    try:
        key = SrtpKey.generate()
        LOG.info("key=%s.", base64.b64encode(key.material))
    finally:
        undo()
    assert [leak.kind for leak in quiet.leaks()] == ["SRTP key"]


def test_a_minted_audiosocket_id_is_a_leak_where_a_call_id_is_not(watch: SecretWatch) -> None:
    LOG.info("call %s attached", "3f2a8c1e-5b7d-4e09-8a6f-2c1d0e9b7a54")
    assert watch.leaks() == []
    LOG.info("call attached with %s", calls.new_audiosocket_id())
    assert [leak.kind for leak in watch.leaks()] == ["AudioSocket id"]


async def test_a_sealed_webhook_secret_is_watched_for(watch: SecretWatch, tmp_path: Path) -> None:
    keys = LocalKeyring.open(tmp_path, b"k" * 32)
    await webhooksecret.seal_secret(keys, "acme", "a webhook secret of acme", now=T0)
    LOG.info("delivering with a webhook secret of acme")
    assert [leak.kind for leak in watch.leaks()] == ["webhook secret"]


def test_a_secret_chosen_by_a_test_is_found_even_with_spaces(watch: SecretWatch) -> None:
    watch.remember("webhook secret", "correct horse battery staple")
    LOG.info("sig with correct horse battery staple")
    assert [leak.kind for leak in watch.leaks()] == ["webhook secret"]


def test_secret_shapes_are_found_in_subprocess_output_whoever_made_them(tmp_path: Path) -> None:
    watch = SecretWatch()
    output = tmp_path / "serve.log"
    output.write_text('{"message": "key AES_CM_128_HMAC_SHA1_80 inline:' + "A" * 40 + '"}\n')
    watch.watch_file(output)
    watch.watch_output("Authorization: Bearer cv_" + "x" * 43, "demo")
    assert sorted(leak.kind for leak in watch.leaks()) == ["SRTP key", "token"]


def test_the_first_start_banner_is_the_one_place_a_token_is_shown(tmp_path: Path) -> None:
    token = "cv_" + "b" * 43
    banner = (
        "callvault: first start: this is the operator token. It is shown once and "
        f"stored only as a hash; keep it now.\n    {token}\n"
        f"Try it: CALLVAULT_OPERATOR_TOKEN={token} callvault demo\n"
    )
    watch = SecretWatch()
    watch.watch_output(banner + "callvault serving on http://127.0.0.1:8080\n", "serve")
    assert watch.leaks() == []
    watch.watch_output(banner + f"later: {token}\n", "serve")
    assert [leak.kind for leak in watch.leaks()] == ["token"]


def test_ordinary_log_lines_are_not_leaks(watch: SecretWatch) -> None:
    auth.new_secret()
    SrtpKey.generate()
    LOG.info("call %s recorded", "6f1c1d52-4b59-4f7e-9f0e-9a1c7b4f2d11", extra={"recv_bytes": 10})
    assert watch.leaks() == []


def test_the_session_watch_is_installed_and_collecting() -> None:
    before = WATCH.counts[0]
    auth.new_secret()
    assert WATCH.counts[0] > before

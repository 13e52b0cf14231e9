"""What ``serve`` hands its AI worker children (gateway.workers): its own settings, secrets
included, whatever the child's environment says, and never on a command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import Settings
from gateway.workers import settings_from_payload, settings_payload


def test_a_child_gets_serves_settings_whatever_its_own_environment_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(
        data_dir=tmp_path / "flagged",  # as `--data-dir` gives it: not in the environment
        master_key="bWFzdGVyLWtleS1vZi10aGUtdGVzdC0zMi1ieXRlcyE=",
        operator_token="an-operator-token-for-the-payload-test-0123",
        store={"url": "s3://bucket", "access_key": "AKIA-TEST", "secret_key": "s3-secret"},
        ai={"workers": 2, "lease": "PT3S", "model": "tiny.en"},
        audiosocket={"allow_networks": ["10.0.0.0/8"]},
    )
    payload = settings_payload(settings)
    assert b"s3-secret" in payload  # in clear: the child needs them (over a pipe, not argv)
    monkeypatch.setenv("CALLVAULT_DATA_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("CALLVAULT_AI__LEASE", "PT99S")
    monkeypatch.setenv("CALLVAULT_STORE__SECRET_KEY", "not-this-one")
    child = settings_from_payload(payload)
    assert child == settings
    assert child.data_dir == tmp_path / "flagged"
    assert child.store.secret_key is not None
    assert child.store.secret_key.get_secret_value() == "s3-secret"
    assert child.master_key is not None
    assert child.master_key.get_secret_value() == "bWFzdGVyLWtleS1vZi10aGUtdGVzdC0zMi1ieXRlcyE="

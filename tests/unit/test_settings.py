"""The settings object: the contract's variable names, parsing, and no secrets in repr."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import BaseModel

from gateway.settings import Settings

README = Path(__file__).resolve().parent.parent.parent / "README.md"


def variable_names(model: type[BaseModel], prefix: str = "CALLVAULT_") -> list[str]:
    names = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names += variable_names(annotation, f"{prefix}{name.upper()}__")
        else:
            names.append(f"{prefix}{name.upper()}")
    return names


def test_every_setting_is_in_the_readme_table() -> None:
    readme = README.read_text()
    names = variable_names(Settings)
    assert "CALLVAULT_STORE__ENDPOINT_URL" in names
    missing = [name for name in names if f"`{name}`" not in readme]
    assert missing == []


def test_nested_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLVAULT_HTTP__PORT", "9000")
    monkeypatch.setenv("CALLVAULT_STORE__URL", "s3://recordings/eu")
    monkeypatch.setenv("CALLVAULT_RETENTION__SWEEP_INTERVAL", "PT30S")
    monkeypatch.setenv("CALLVAULT_DATABASE_URL", "postgresql://127.0.0.1:5432/callvault")
    settings = Settings()
    assert settings.http.port == 9000
    assert settings.store_url == "s3://recordings/eu"
    assert settings.retention.sweep_interval == timedelta(seconds=30)
    assert settings.catalog_url == "postgresql+asyncpg://127.0.0.1:5432/callvault"


def test_the_maximum_call_duration_is_four_hours_unless_set_and_positive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().calls.max_duration == timedelta(hours=4)
    monkeypatch.setenv("CALLVAULT_CALLS__MAX_DURATION", "PT30M")
    assert Settings().calls.max_duration == timedelta(minutes=30)
    monkeypatch.setenv("CALLVAULT_CALLS__MAX_DURATION", "PT0S")
    with pytest.raises(ValueError, match="max_duration"):
        Settings()


def test_defaults_are_the_embedded_ones(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert settings.store_url == (tmp_path / "var" / "objects").as_uri()
    assert settings.catalog_url.startswith("sqlite+aiosqlite:///")
    assert settings.catalog_url.endswith("var/catalog.sqlite3")
    assert (settings.http.host, settings.http.port) == ("127.0.0.1", 8080)


def test_secrets_never_appear_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLVAULT_MASTER_KEY", "c2VjcmV0LW1hc3Rlci1rZXktdmFsdWUtMzItYnl0ZXM=")
    monkeypatch.setenv("CALLVAULT_OPERATOR_TOKEN", "operator-token-value")
    monkeypatch.setenv("CALLVAULT_STORE__SECRET_KEY", "s3-secret-value")
    text = repr(Settings()) + str(Settings().model_dump())
    for secret in ("c2VjcmV0LW1hc3Rlci1rZXktdmFsdWUtMzItYnl0ZXM=", "operator-token-value",
                   "s3-secret-value"):  # fmt: skip
        assert secret not in text


def test_an_inverted_rtp_range_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLVAULT_RTP__PORT_MIN", "41000")
    monkeypatch.setenv("CALLVAULT_RTP__PORT_MAX", "40000")
    with pytest.raises(ValueError, match="must hold an even port and the next"):
        Settings()


def test_the_event_loop_is_auto_unless_named_and_only_a_known_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().http.loop == "auto"
    for name in ("uvloop", "asyncio", "auto"):
        monkeypatch.setenv("CALLVAULT_HTTP__LOOP", name)
        assert Settings().http.loop == name
    monkeypatch.setenv("CALLVAULT_HTTP__LOOP", "trio")
    with pytest.raises(ValueError, match="loop"):
        Settings()


@pytest.mark.parametrize("interval", ["-PT0.01S", "PT0.201S", "PT1S"])
def test_the_rtp_read_interval_is_bounded(interval: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``rtp.read_interval``: 0 to 200 ms (a longer wait would hold datagrams past what
    the reorder timer and the socket buffers are sized for); outside, a refusal that
    names the field."""
    monkeypatch.setenv("CALLVAULT_RTP__READ_INTERVAL", interval)
    with pytest.raises(ValueError, match="read_interval"):
        Settings()


def test_the_rtp_read_interval_defaults_to_100_ms_and_zero_is_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().rtp.read_interval == timedelta(milliseconds=100)
    monkeypatch.setenv("CALLVAULT_RTP__READ_INTERVAL", "PT0S")
    assert Settings().rtp.read_interval == timedelta(0)

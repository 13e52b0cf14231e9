"""The event loop ``serve`` runs on (``CALLVAULT_HTTP__LOOP``) and the loop lag probe."""

from __future__ import annotations

import asyncio

import pytest

from crypto.errors import ConfigError
from gateway import loops


def test_auto_is_uvloop_when_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert loops.loop_kind("auto") == "uvloop"  # pinned and installed
    monkeypatch.setattr(loops, "uvloop_available", lambda: False)
    assert loops.loop_kind("auto") == "asyncio"
    assert loops.loop_kind("asyncio") == "asyncio"


@pytest.mark.parametrize("kind", ["uvloop", "asyncio"])
def test_run_runs_on_the_loop_named(kind: loops.LoopKind) -> None:
    async def which() -> tuple[str, str]:
        return loops.running_kind(), type(asyncio.get_running_loop()).__module__

    running, module = loops.run(which(), kind)
    assert running == kind
    assert module.startswith(kind)


async def test_the_lag_probe_observes_how_late_each_wake_up_came() -> None:
    # A fake loop clock: each sleep "takes" its interval plus the next lag of the script.
    now = [100.0]
    lags = iter([0.0, 0.004, 0.25, 0.0])
    observed: list[float] = []

    async def sleep(seconds: float) -> None:
        try:
            now[0] += seconds + next(lags)
        except StopIteration:
            raise asyncio.CancelledError from None

    with pytest.raises(asyncio.CancelledError):
        await loops.probe_lag(observed.append, time=lambda: now[0], sleep=sleep, interval=0.05)
    assert observed == pytest.approx([0.0, 0.004, 0.25, 0.0])


async def test_an_early_wake_up_counts_as_no_lag() -> None:
    now = [0.0]
    observed: list[float] = []

    async def sleep(seconds: float) -> None:
        if observed:
            raise asyncio.CancelledError
        now[0] += seconds - 0.001  # a loop may wake a little early (clock resolution)

    with pytest.raises(asyncio.CancelledError):
        await loops.probe_lag(observed.append, time=lambda: now[0], sleep=sleep)
    assert observed == [0.0]


def test_uvloop_asked_for_where_it_cannot_be_imported_is_a_sentence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(loops, "uvloop_available", lambda: False)
    with pytest.raises(ConfigError, match="CALLVAULT_HTTP__LOOP") as refused:
        loops.loop_kind("uvloop")
    assert "cannot be imported" in str(refused.value)
    assert loops.loop_kind("asyncio") == "asyncio"

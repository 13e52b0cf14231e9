"""``callvault serve`` on each event loop it supports (``CALLVAULT_HTTP__LOOP``): it starts,
says at start which loop it runs, answers ``/healthz``, samples its loop's lag into
``/metrics``, and stops cleanly on SIGTERM (its signal handlers are the loop's)."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from tests.gateway import serve

LAG_COUNT = "callvault_event_loop_lag_seconds_count"


def scrape(base: str) -> str:
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:  # noqa: S310
        return str(response.read().decode())


def lag_samples(text: str) -> float:
    for line in text.splitlines():
        if line.startswith(LAG_COUNT + " "):
            return float(line.split()[1])
    raise AssertionError(f"{LAG_COUNT} is not in /metrics")


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_serve_runs_on_the_loop_named_and_says_so(tmp_path: Path, loop: str) -> None:
    with serve(tmp_path, loop, CALLVAULT_HTTP__LOOP=loop, CALLVAULT_AI__WORKERS="0") as server:
        with urllib.request.urlopen(f"{server.base}/healthz", timeout=5) as response:  # noqa: S310
            assert response.status == 200
            assert json.loads(response.read()) == {"status": "ok"}
        deadline = time.monotonic() + 30
        while lag_samples(scrape(server.base)) < 1:  # the probe wakes 20 times a second
            assert time.monotonic() < deadline, "the loop lag probe never observed"
            time.sleep(0.05)  # polling another process, not waiting for time
        process = server.process.process
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        records = [
            json.loads(line) for line in server.process.log().splitlines() if line.startswith("{")
        ]
    said = [r["message"] for r in records if r.get("message", "").startswith("event loop:")]
    assert said == [f"event loop: {loop}"]
    assert [r["loop"] for r in records if "loop" in r] == [loop]

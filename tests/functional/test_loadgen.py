"""bench/loadgen.py against a real ``callvault serve`` and against bench/bare.py: every
transport's calls are announced, streamed at live pace and checked (sample-exact through
the export, or by bare.py's count), with nothing lost. (Timings are never asserted here;
bench/README.md holds the measured figures.)"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.functional.test_ingest_rtp import free_udp_range
from tests.gateway import free_port
from tests.leaks import WATCH
from tests.paced import gateway_process

BENCH = Path(__file__).resolve().parent.parent.parent / "bench"
OPERATOR = "a-long-operator-token-for-the-loadgen-tests-0123456789"
CALLS = 8
"""Two calls of each transport in a ``mixed`` run (twilio, fork, audiosocket, srtp)."""
SECONDS = 2.0


def loadgen(base: str, *args: str) -> tuple[int, dict[str, Any], str]:
    result = subprocess.run(  # noqa: S603
        [sys.executable, str(BENCH / "loadgen.py"), "--base", base, "--calls", str(CALLS),
         "--seconds", str(SECONDS), "--ramp", "0.5", "--json", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout.strip().splitlines()[-1]), result.stdout


def assert_nothing_lost(code: int, report: dict[str, Any], text: str) -> None:
    frames = int(SECONDS * 50)
    # audiosocket calls carry one track, the others two.
    assert report["frames_sent"] == CALLS // 4 * frames * 7, text
    assert report["frames_checked"] == report["frames_sent"], text
    assert (report["frames_lost"], report["calls_failed"], report["failures"]) == (0, 0, [])
    assert code == 0
    assert set(report["by_transport"]) == {"twilio", "fork", "audiosocket", "srtp"}
    for row in report["by_transport"].values():
        assert row["calls"] == CALLS // 4 and row["calls_failed"] == 0
    assert report["steady_from"] < report["steady_until"]
    for key in ("send_lag_ms_p99", "send_lag_ms_max", "loadgen_cpu_s", "wall_s"):
        assert report[key] >= 0


def serve_settings() -> dict[str, str]:
    """``callvault serve`` for the load generator: its operator token, no AI worker, and
    RTP ports of a free range, two pairs for each of ``CALLS`` calls."""
    rtp = free_udp_range(4 * CALLS)
    return {
        "CALLVAULT_OPERATOR_TOKEN": WATCH.remember_value("token", OPERATOR),
        "CALLVAULT_AI__WORKERS": "0",
        "CALLVAULT_RTP__PORT_MIN": str(rtp),
        "CALLVAULT_RTP__PORT_MAX": str(rtp + 4 * CALLS - 1),
    }


def test_every_transport_against_callvault_loses_nothing(tmp_path: Path) -> None:
    settings = serve_settings()
    with gateway_process(tmp_path, "serve", tmp_path / "var", **settings) as (_, endpoint):
        code, report, text = loadgen(
            endpoint.base, "--transport", "mixed", "--setup-token", OPERATOR
        )
        assert_nothing_lost(code, report, text)
        assert not report["bare"]
        assert report["loop"] == "uvloop"
        for row in report["by_transport"].values():
            assert row["frames_checked"] == row["frames_sent"] > 0


def test_srtp_datagrams_of_several_frames_are_checked_frame_by_frame(tmp_path: Path) -> None:
    """``--ptime 60``: three 20 ms frames per datagram (the memory step packs five), each
    frame still found at its place in the export; 1.9 s is 95 frames, 31 datagrams of three
    and a last one of two."""
    settings = serve_settings()
    with gateway_process(tmp_path, "serve", tmp_path / "var", **settings) as (_, endpoint):
        code, report, text = loadgen(
            endpoint.base, "--transport", "srtp", "--calls", "2", "--seconds", "1.9",
            "--ptime", "60", "--setup-token", OPERATOR,
        )  # fmt: skip
    assert report["frames_sent"] == 2 * 95 * 2, text  # calls x frames x tracks
    assert report["frames_checked"] == report["frames_sent"], text
    assert (report["frames_lost"], report["calls_failed"], report["failures"]) == (0, 0, [])
    assert code == 0


@pytest.fixture
def bare(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    with (tmp_path / "bare.log").open("wb") as log:
        process = subprocess.Popen(  # noqa: S603
            [sys.executable, str(BENCH / "bare.py"), "--port", str(port), "--loop", "asyncio"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{base}/bare/stats", timeout=1):  # noqa: S310
                    break
            except OSError:
                assert process.poll() is None, (tmp_path / "bare.log").read_text()
                assert time.monotonic() < deadline, "bare.py did not answer"
                time.sleep(0.1)  # another process starting: polled
        yield base
    finally:
        process.kill()
        process.wait(timeout=10)


def stats(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base}/bare/stats", timeout=5) as response:  # noqa: S310
        return dict(json.loads(response.read()))


def test_every_transport_against_the_bare_receivers_loses_nothing(bare: str) -> None:
    code, report, text = loadgen(bare, "--transport", "mixed", "--bare", "--loop", "asyncio")
    assert_nothing_lost(code, report, text)
    assert report["bare"]
    after = stats(bare)
    assert after["frames"] == report["frames_sent"]
    assert after["loop_lag_samples"] > 0
    request = urllib.request.Request(f"{bare}/bare/stats/reset", method="POST")  # noqa: S310
    with urllib.request.urlopen(request, timeout=5):  # noqa: S310
        pass
    assert stats(bare)["frames"] == 0


def test_a_usage_or_setup_error_exits_2(bare: str) -> None:
    result = subprocess.run(  # noqa: S603
        [sys.executable, str(BENCH / "loadgen.py"), "--base", bare, "--transport", "mixed",
         "--calls", "1", "--seconds", "1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--setup-token" in result.stderr
    gone = subprocess.run(  # noqa: S603
        [sys.executable, str(BENCH / "loadgen.py"), "--base", f"http://127.0.0.1:{free_port()}",
         "--transport", "fork", "--calls", "1", "--seconds", "1", "--bare"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert gone.returncode == 2
    assert "Cannot connect" in gone.stderr


def test_a_soak_starts_a_new_call_as_one_ends(bare: str) -> None:
    result = subprocess.run(  # noqa: S603
        [sys.executable, str(BENCH / "loadgen.py"), "--base", bare, "--transport", "mixed",
         "--calls", "2", "--seconds", "0.5", "--minutes", "0.03", "--bare", "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0, result.stdout
    assert report["calls_started"] >= 4  # two lanes, 1.8 s of 0.5 s calls
    assert sum(row["calls"] for row in report["by_transport"].values()) == report["calls_started"]
    assert report["frames_checked"] == report["frames_sent"] > 0
    assert report["frames_lost"] == 0

"""bench/capacity.py's step runs against a real ``callvault serve`` and a real bare receiver
(each a fresh process pinned to a core, the load generator on the other) and yields a
complete record, and the plot of such records is written. The figures themselves are not
asserted (timings go in bench/README.md), only that they were measured."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.capacity import StepOptions, cores, run_step
from bench.capacity_report import plot

FIELDS = (
    "frames_sent", "frames_lost", "calls_failed", "send_lag_ms_p99", "window_s", "core_share",
    "calls_per_core", "us_per_frame", "lag_ms_p99", "rss_idle_kib", "rss_steady_kib",
    "rss_per_call_kib", "frames_counted", "verdict", "why",
)  # fmt: skip


@pytest.mark.timeout(90)
def test_a_step_of_each_contestant_measures_every_figure_and_the_plot_is_written(
    tmp_path: Path,
) -> None:
    options = StepOptions(loop="uvloop", seconds=4.0, ramp=0.5, cores=cores())
    records = {kind: run_step(options, kind, "twilio", 2) for kind in ("callvault", "bare")}
    for kind, record in records.items():
        missing = [key for key in FIELDS if record.get(key) is None]
        assert not missing, (kind, missing, record)
        assert record["contestant"] == kind and record["calls"] == 2
        # Nothing lost, and the verdict is one of the three (whether it passed is a timing).
        assert record["frames_lost"] == 0 and record["calls_failed"] == 0, record
        assert record["frames_sent"] >= 2 * 2 * 50 * 3  # 2 stereo calls, >= 3 s of 4 each
        assert record["verdict"] in ("pass", "fail", "loadgen-bound")
        assert 0 < record["core_share"] <= 1.5
        assert record["us_per_frame"] > 0 and record["window_s"] > 0
        assert record["rss_idle_kib"] > 0 and record["rss_steady_kib"] > 0
        assert record["frames_counted"] > 0
    callvault = records["callvault"]
    # The gateway flushed inside the window: its ingest-to-durable histogram moved.
    assert callvault["durable_ms_p99"] is not None and callvault["durable_ms_p50"] is not None
    assert callvault["lag_ms_p50"] is not None
    # The bare receiver's lag is its own over the same window, not since its start.
    assert records["bare"]["lag_scope"] == "window"

    path = tmp_path / "capacity.png"
    rows = [{"transport": "twilio", **{k: {"steps": [r]} for k, r in records.items()}}]
    plot(rows, path, "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

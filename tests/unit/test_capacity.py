"""bench/capacity.py's pure parts: quantiles from histogram bucket deltas, the verdict of a
step, and the search for the most calls that pass (driven by fake steps)."""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import loadgen
from bench.bare import Stats
from bench.capacity import (
    START,
    TRANSPORTS,
    Contestant,
    Sample,
    StepOptions,
    loadgen_command,
    record_step,
    search_transport,
    setting,
    starts,
)
from bench.capacity_rules import (
    CONFIRM_TRIES,
    Search,
    bucket_delta,
    judge,
    ms,
    parse_histograms,
    quantile,
    sample_total,
)

SCRAPE = """\
# HELP callvault_event_loop_lag_seconds How late the loop woke.
# TYPE callvault_event_loop_lag_seconds histogram
callvault_event_loop_lag_seconds_bucket{le="0.01"} 90.0
callvault_event_loop_lag_seconds_bucket{le="0.05"} 99.0
callvault_event_loop_lag_seconds_bucket{le="0.1"} 100.0
callvault_event_loop_lag_seconds_bucket{le="+Inf"} 100.0
callvault_event_loop_lag_seconds_count 100.0
callvault_event_loop_lag_seconds_sum 0.7
# HELP callvault_ingest_durable_seconds Oldest frame to fsync.
# TYPE callvault_ingest_durable_seconds histogram
callvault_ingest_durable_seconds_bucket{le="1.0",transport="fork"} 1.0
callvault_ingest_durable_seconds_bucket{le="2.5",transport="fork"} 3.0
callvault_ingest_durable_seconds_bucket{le="+Inf",transport="fork"} 3.0
callvault_ingest_durable_seconds_bucket{le="1.0",transport="rtp"} 2.0
callvault_ingest_durable_seconds_bucket{le="2.5",transport="rtp"} 5.0
callvault_ingest_durable_seconds_bucket{le="+Inf",transport="rtp"} 6.0
callvault_ingest_durable_seconds_count{transport="rtp"} 6.0
callvault_ingest_durable_seconds_sum{transport="rtp"} 9.0
# HELP callvault_frames_in_total Audio frames received, by transport.
# TYPE callvault_frames_in_total counter
callvault_frames_in_total{transport="fork"} 10.0
callvault_frames_in_total{transport="rtp"} 32.0
"""

LAG = "callvault_event_loop_lag_seconds"
DURABLE = "callvault_ingest_durable_seconds"


def test_histograms_are_parsed_and_summed_over_their_other_labels() -> None:
    found = parse_histograms(SCRAPE, (LAG, DURABLE))
    assert found[LAG] == ((0.01, 90.0), (0.05, 99.0), (0.1, 100.0), (math.inf, 100.0))
    assert found[DURABLE] == ((1.0, 3.0), (2.5, 8.0), (math.inf, 9.0))
    assert sample_total(SCRAPE, "callvault_frames_in_total") == 42.0


def test_a_quantile_interpolates_inside_its_bucket_as_prometheus_does() -> None:
    buckets = ((0.01, 90.0), (0.05, 99.0), (0.1, 100.0), (math.inf, 100.0))
    # rank 99 of 100: exactly the top of the 0.05 bucket; rank 50: 50/90 of the first.
    assert quantile(buckets, 0.99) == pytest.approx(0.05)
    assert quantile(buckets, 0.5) == pytest.approx(0.01 * 50 / 90)
    # rank 99.5: half way through the (0.05, 0.1] bucket's one observation.
    assert quantile(buckets, 0.995) == pytest.approx(0.075)


def test_a_quantile_past_the_highest_bucket_is_infinite_and_none_without_observations() -> None:
    assert quantile(((0.05, 1.0), (math.inf, 10.0)), 0.99) == math.inf
    assert quantile(((0.05, 0.0), (math.inf, 0.0)), 0.99) is None
    assert quantile((), 0.5) is None
    assert ms(math.inf) == ">10000" and ms(None) is None and ms(0.0123) == 12.3


def test_the_quantile_of_a_window_comes_from_the_delta_of_two_scrapes() -> None:
    # Before the window the loop was slow (everything past 50 ms); in it, all under 10 ms.
    before = ((0.01, 0.0), (0.05, 0.0), (0.1, 40.0), (math.inf, 50.0))
    after = ((0.01, 100.0), (0.05, 100.0), (0.1, 140.0), (math.inf, 150.0))
    delta = bucket_delta(before, after)
    assert delta == ((0.01, 100.0), (0.05, 100.0), (0.1, 100.0), (math.inf, 100.0))
    assert quantile(delta, 0.99) == pytest.approx(0.0099)
    assert quantile(after, 0.99) == math.inf  # the cumulative histogram would have failed it
    # A histogram absent from the first scrape counts from zero.
    assert bucket_delta((), after) == after


GOOD = {"frames_lost": 0, "calls_failed": 0, "send_lag_ms_p99": 3.0}


def test_a_step_passes_only_with_zero_loss_and_both_latencies_under_their_limits() -> None:
    assert judge(GOOD, 0.01, 2.0, callvault=True) == ("pass", [])
    assert judge(GOOD, 0.01, None, callvault=False) == ("pass", [])
    verdict, why = judge({**GOOD, "frames_lost": 3}, 0.05, 2.6, callvault=True)
    assert verdict == "fail"
    assert why == [
        "3 frames lost",
        "loop lag p99 50.0 ms >= 50",
        "ingest-to-durable p99 2600.0 ms >= 2500",
    ]
    assert judge(GOOD, 0.01, None, callvault=True) == ("fail", ["no flush in the steady window"])
    assert judge({**GOOD, "calls_failed": 1}, 0.01, 1.0, callvault=True)[0] == "fail"
    assert judge({**GOOD, "error": "boom"}, 0.01, 1.0, callvault=True) == ("fail", ["boom"])
    assert judge(GOOD, None, 1.0, callvault=True)[0] == "fail"


def test_a_step_whose_loadgen_lagged_is_no_verdict_on_the_server() -> None:
    verdict, why = judge({**GOOD, "frames_lost": 9, "send_lag_ms_p99": 25.0}, 1.0, 9.0,
                         callvault=True)  # fmt: skip
    assert verdict == "loadgen-bound"
    assert why == ["loadgen send lag p99 25 ms > 20"]
    # Its lag over the steady window, where it is reported, is what counts.
    steady = {**GOOD, "send_lag_ms_p99": 90.0, "send_lag_ms_p99_steady": 4.0}
    assert judge(steady, 0.01, 1.0, callvault=True) == ("pass", [])
    assert judge({**steady, "send_lag_ms_p99_steady": 21.0}, 0.01, 1.0, callvault=True)[0] == (
        "loadgen-bound"
    )


def drive(search: Search, capacity: int) -> list[int]:
    """Run ``search`` against a fake server that takes ``capacity`` calls; the N of every
    step, in order."""
    asked = []
    while (calls := search.next()) is not None:
        asked.append(calls)
        search.record(calls, "pass" if calls <= capacity else "fail")
        assert len(asked) < 50
    return asked


def test_the_search_grows_bisects_to_its_precision_and_confirms_the_best() -> None:
    search = Search(start=100, growth=1.5, precision=0.05)
    asked = drive(search, capacity=300)
    assert asked[:4] == [100, 150, 225, 338]  # x1.5, rounded up, until a step fails
    result = search.result()
    assert result["max_calls"] <= 300 < result["first_fail_calls"]
    assert result["first_fail_calls"] - result["max_calls"] <= 0.05 * result["max_calls"]
    # The last step confirms the best: its second run.
    assert asked[-1] == result["max_calls"] and asked.count(asked[-1]) == 2
    assert result["confirmed"] is True and result["loadgen_bound"] is False
    assert result["steps"] == len(asked)


def test_a_first_step_that_fails_makes_the_search_go_down() -> None:
    search = Search(start=100, growth=2.0, precision=0.05)
    asked = drive(search, capacity=30)
    assert asked[:3] == [100, 50, 25]
    assert 29 <= search.best <= 30 and search.result()["confirmed"]


def test_nothing_passing_ends_the_search_at_zero() -> None:
    search = Search(start=4, growth=2.0)
    assert drive(search, capacity=0) == [4, 2, 1]
    assert search.result()["max_calls"] == 0 and search.result()["confirmed"] is False


def test_a_best_that_fails_its_confirmation_is_refuted_and_the_next_best_confirmed() -> None:
    search = Search(start=100, growth=1.5, precision=0.05)
    runs: dict[int, int] = {}
    refuted = None
    while (calls := search.next()) is not None:
        runs[calls] = runs.get(calls, 0) + 1
        if runs[calls] == 2 and refuted is None:
            refuted = calls  # the first confirmation fails
        search.record(calls, "pass" if calls <= 300 and calls != refuted else "fail")
    result = search.result()
    assert refuted is not None and refuted in search.fails
    assert result["max_calls"] < refuted and result["confirmed"] is True
    assert refuted - result["max_calls"] <= max(1, 0.05 * result["max_calls"])
    assert search.confirmed == {refuted: False, result["max_calls"]: True}


def test_confirmations_are_bounded() -> None:
    search = Search(start=100, growth=1.5, precision=0.05)
    seen: set[int] = set()
    while (calls := search.next()) is not None:
        again = calls in seen  # every confirmation fails
        seen.add(calls)
        search.record(calls, "pass" if calls <= 300 and not again else "fail")
    assert len(search.confirmed) == CONFIRM_TRIES
    assert not any(search.confirmed.values())
    assert search.result()["confirmed"] is False


def test_a_loadgen_bound_step_caps_the_search_and_is_reported() -> None:
    search = Search(start=100, growth=1.5, precision=0.05)
    while (calls := search.next()) is not None:
        search.record(calls, "pass" if calls < 200 else "loadgen-bound")
    result = search.result()
    assert result["loadgen_bound"] is True
    assert result["max_calls"] < 200 <= result["first_fail_calls"]
    assert result["confirmed"] is True


def test_a_loadgen_bound_step_above_a_failing_one_does_not_flag_the_result() -> None:
    search = Search(start=100, growth=1.5, precision=0.05)
    search.record(100, "pass")
    search.record(150, "loadgen-bound")
    search.record(125, "fail")  # the contestant's own limit lies below the loadgen's
    assert search.result()["loadgen_bound"] is False
    assert search.result()["first_fail_calls"] == 125


def test_the_search_stops_at_its_most() -> None:
    search = Search(start=100, growth=2.0, most=300)
    asked = drive(search, capacity=10_000)
    assert asked == [100, 200, 300, 300]
    assert search.result() == {
        "max_calls": 300,
        "first_fail_calls": None,
        "confirmed": True,
        "loadgen_bound": False,
        "steps": 4,
    }


def scrape(lag: tuple[float, float, float], durable: tuple[float, float], frames: float) -> str:
    """A /metrics text: lag observations <= 10 ms, <= 50 ms, in all; flushes <= 2.5 s, in
    all; frames in."""
    return f"""\
# TYPE callvault_event_loop_lag_seconds histogram
callvault_event_loop_lag_seconds_bucket{{le="0.01"}} {lag[0]}
callvault_event_loop_lag_seconds_bucket{{le="0.05"}} {lag[1]}
callvault_event_loop_lag_seconds_bucket{{le="+Inf"}} {lag[2]}
# TYPE callvault_ingest_durable_seconds histogram
callvault_ingest_durable_seconds_bucket{{le="2.5"}} {durable[0]}
callvault_ingest_durable_seconds_bucket{{le="+Inf"}} {durable[1]}
# TYPE callvault_frames_in_total counter
callvault_frames_in_total{{transport="twilio"}} {frames}
"""


REPORT = {"frames_sent": 4000, "frames_lost": 0, "calls_failed": 0, "send_lag_ms_p99": 2.0}


def test_a_callvault_step_is_measured_over_its_steady_window_only() -> None:
    idle = Sample(t=0.0, cpu_s=1.0, rss_kib=100_000, metrics=scrape((0, 0, 0), (0, 0), 0))
    # Before the window the loop lagged badly; inside it, 100 probes, 99 under 10 ms.
    first = Sample(10.0, 3.0, 150_000, scrape((0, 0, 50), (0, 0), 9e3), core_busy_s=100.0)
    last = Sample(20.0, 8.0, 160_000, scrape((99, 100, 150), (40, 40), 29e3), core_busy_s=107.0)
    record = record_step("callvault", "twilio", 100, REPORT, idle, (first, last), None, 0)
    assert record["verdict"] == "pass" and record["why"] == []
    assert record["window_s"] == 10.0 and record["core_share"] == 0.5
    # The core was busy 0.7 of the time: 0.2 of it was not the contestant's.
    assert record["other_on_core"] == 0.2
    assert record["calls_per_core"] == 200
    # 5 CPU s over 100 stereo calls x 2 tracks x 50 frames/s x 10 s = 100,000 frames.
    assert record["us_per_frame"] == 50.0
    assert record["frames_counted"] == 20_000
    assert record["lag_ms_p99"] == 10.0 and record["durable_ms_p99"] is not None
    assert record["rss_idle_kib"] == 100_000 and record["rss_steady_kib"] == 160_000
    assert record["rss_per_call_kib"] == 600.0


def test_a_step_with_no_steady_window_fails_and_says_so() -> None:
    idle = Sample(t=0.0, cpu_s=1.0, rss_kib=100)
    record = record_step(
        "bare", "audiosocket", 3, {**REPORT, "steady_from": None}, idle, None, None, 1,
        peak=Sample(t=5.0, cpu_s=2.0, rss_kib=400),
    )  # fmt: skip
    assert record["verdict"] == "fail"
    assert "no steady window" in record["why"]
    assert "core_share" not in record and "us_per_frame" not in record
    # The peak RSS is reported, but no figure per live call: N were never live together.
    assert record["rss_peak_kib"] == 400 and "rss_per_call_kib" not in record
    assert record["rss_scope"].startswith("none")


def test_without_a_steady_window_there_is_no_rss_per_live_call() -> None:
    """callvault's gauge counts announced calls (all N before any stream), so the peak over
    it would credit the memory of fewer live calls to N (a review finding)."""
    idle = Sample(t=0.0, cpu_s=1.0, rss_kib=100_000)
    peak = Sample(t=9.0, cpu_s=5.0, rss_kib=180_000)
    record = record_step("callvault", "srtp", 1000, {**REPORT, "send_lag_ms_p99": 900.0},
                         idle, None, None, 0, peak=peak, most_live=1000)  # fmt: skip
    assert record["verdict"] == "loadgen-bound"
    assert record["rss_peak_kib"] == 180_000 and "rss_per_call_kib" not in record


def test_the_bare_receivers_lag_is_its_own_over_the_window_else_since_its_start() -> None:
    idle = Sample(t=0.0, cpu_s=0.0, rss_kib=100)
    first = Sample(t=1.0, cpu_s=0.0, rss_kib=100, stats={"frames": 0})
    last = Sample(t=3.0, cpu_s=1.0, rss_kib=200, stats={"frames": 100})
    sliced = {"loop_lag_ms_p99": 80.0, "loop_lag_window": {"p50_ms": 0.5, "p99_ms": 4.0}}
    record = record_step("bare", "audiosocket", 1, REPORT, idle, (first, last), sliced, 0)
    assert (record["lag_ms_p50"], record["lag_ms_p99"]) == (0.5, 4.0)
    assert record["lag_scope"] == "window" and record["verdict"] == "pass"
    assert record["frames_counted"] == 100 and record["us_per_frame"] == 10_000.0
    record = record_step("bare", "audiosocket", 1, REPORT, idle, (first, last),
                         {"loop_lag_ms_p99": 80.0}, 0)  # fmt: skip
    assert record["lag_scope"] == "since start" and record["lag_ms_p99"] == 80.0
    assert record["verdict"] == "fail"


def test_bare_py_slices_its_lag_samples_by_count() -> None:
    stats = Stats()
    stats.lags = [0.001] * 50 + [0.2] * 50 + [0.003] * 100
    window = stats.document(100, 200)["loop_lag_window"]
    assert window == {"samples": 100, "p50_ms": 3.0, "p99_ms": 3.0}
    assert stats.document()["loop_lag_samples"] == 200 and "loop_lag_window" not in stats.document()
    assert stats.document(500, 600)["loop_lag_window"] == {
        "samples": 0,
        "p50_ms": None,
        "p99_ms": None,
    }


def test_the_loadgen_command_parses_whatever_the_token_begins_with() -> None:
    callvault = Contestant(
        "callvault", 0, None, "http://127.0.0.1:1", "-starts-like-a-flag", Path()
    )  # type: ignore[arg-type]
    command = loadgen_command(callvault, "srtp", 7, 3.0, 0.5, 1, "uvloop")
    assert command[:3] == ["taskset", "-c", "1"]
    options = loadgen.parse(command[5:])  # after taskset -c 1 python bench/loadgen.py
    assert options.setup_token == "-starts-like-a-flag"
    assert (options.transport, options.calls, options.seconds, options.ramp) == (
        "srtp",
        7,
        3.0,
        0.5,
    )
    assert options.json and not options.bare and options.loop == "uvloop"
    bare = Contestant("bare", 0, None, "http://127.0.0.1:2", None, Path())  # type: ignore[arg-type]
    options = loadgen.parse(loadgen_command(bare, "fork", 2, 1.0, 0.0, 1, "asyncio")[5:])
    assert options.bare and options.setup_token is None and options.base == "http://127.0.0.1:2"


def test_start_is_one_number_for_every_transport_or_some_by_name() -> None:
    assert starts("80") == dict.fromkeys(TRANSPORTS, 80)
    assert starts("srtp=500, twilio=90") == {**START, "srtp": 500, "twilio": 90}
    assert starts("") == START
    for bad in ("sip=5", "srtp=", "srtp=0", "srtp=-3", "twilio=x"):
        with pytest.raises(argparse.ArgumentTypeError, match="transport=N"):
            starts(bad)


def test_a_step_ramps_at_the_start_rate_and_keeps_its_steady_window_length() -> None:
    spread = StepOptions(seconds=12.0, ramp=2.0, start_rate=25.0).spread
    assert spread(10) == (2.0, 14.0)  # few calls: the ramp's floor
    assert spread(500) == (20.0, 32.0)  # 25 starts a second; 12 s with all 500 live
    assert StepOptions(seconds=12.0, ramp=2.0).spread(500) == (2.0, 12.0)  # rate 0: as given


def test_the_ratio_is_of_calls_that_passed_and_calls_per_core_is_kept_apart() -> None:
    """callvault passes up to 600 calls at 0.6 of the core and then loses frames (not its
    CPU); the bare receiver passes 800 at a full core. The goal's ratio is 600/800, not the
    projection N / share (1,000 'calls per core', which no step ran): a review finding."""

    def step(kind: str, transport: str, calls: int) -> dict[str, Any]:
        share, ok = (
            (calls / 1000, calls <= 600) if kind == "callvault" else (calls / 800, calls <= 800)
        )
        return {"contestant": kind, "transport": transport, "calls": calls,
                "verdict": "pass" if ok else "fail", "why": [] if ok else ["frames lost"],
                "core_share": share, "calls_per_core": round(calls / share),
                "us_per_frame": 1.0, "rss_per_call_kib": 1.0}  # fmt: skip

    out = search_transport(step, "srtp", ["callvault", "bare"], 100, 1.5, 0.05, 1900, 20)
    cv, bare = out["callvault"], out["bare"]
    assert out["ratio"] == round(cv["max_calls"] / bare["max_calls"], 3) < 0.8
    assert out["ratio_per_core"] >= 1.0  # the projection, shown apart


@pytest.mark.parametrize(
    "bad",
    [["--calls", "0", "--seconds", "10"], ["--calls", "5", "--seconds", "0.01"],
     ["--calls", "5", "--seconds", "10", "--ramp", "-1"],
     ["--calls", "5", "--seconds", "10", "--minutes", "-2"]],
)  # fmt: skip
def test_the_load_generator_refuses_counts_out_of_bounds_with_exit_2(
    bad: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--base", "http://127.0.0.1:9", "--transport", "srtp", *bad]
    assert loadgen.main(argv) == 2
    assert "--calls >= 1, --seconds >= 0.02" in capsys.readouterr().err


@pytest.mark.parametrize("ptime", ["0", "10", "30", "220"])
def test_the_load_generator_refuses_a_ptime_out_of_bounds_with_exit_2(
    ptime: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--base", "http://127.0.0.1:9", "--transport", "srtp", "--calls", "1"]
    assert loadgen.main([*argv, "--seconds", "1", "--ptime", ptime]) == 2
    assert "--ptime: 20 to 200 ms, a multiple of 20" in capsys.readouterr().err


def test_the_loadgen_command_asks_for_packed_datagrams_only_when_told() -> None:
    callvault = Contestant("callvault", 0, None, "http://127.0.0.1:1", "t", Path())  # type: ignore[arg-type]
    plain = loadgen_command(callvault, "srtp", 7, 3.0, 0.5, 1, "uvloop")
    assert "--ptime" not in plain and loadgen.parse(plain[5:]).ptime == 20
    packed = loadgen_command(callvault, "srtp", 7, 3.0, 0.5, 1, "uvloop", 100)
    assert loadgen.parse(packed[5:]).ptime == 100


def test_a_setting_is_a_callvault_variable_and_anything_else_is_refused() -> None:
    assert setting("RTP__READ_INTERVAL=PT0S") == ("CALLVAULT_RTP__READ_INTERVAL", "PT0S")
    assert setting("callvault_rtp__read_interval=PT0.04S") == (
        "CALLVAULT_RTP__READ_INTERVAL",
        "PT0.04S",
    )
    assert setting("HTTP__LOOP=") == ("CALLVAULT_HTTP__LOOP", "")
    for bad in ["RTP__READ_INTERVAL", "=PT0S", "RTP-READ=1", "A B=1", "CALLVAULT_=1"]:
        with pytest.raises(argparse.ArgumentTypeError, match="NAME=VALUE"):
            setting(bad)


CAPACITY = Path(loadgen.__file__).resolve().parent / "capacity.py"


@pytest.mark.parametrize("ptime", ["0", "50", "400"])
def test_capacity_refuses_a_memory_ptime_out_of_bounds_before_it_starts_anything(
    ptime: str,
) -> None:
    result = subprocess.run(  # noqa: S603 - our interpreter and script
        [sys.executable, str(CAPACITY), "--memory-ptime", ptime],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--memory-ptime: 20 to 200 ms, a multiple of 20" in result.stderr

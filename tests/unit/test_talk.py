"""Tests of ai/talk.py: every definition on hand-computed timelines (overlap, silence,
interruptions and the backchannel rule, monologues joined across pauses and cut by the other
track, wpm, clipping), and properties over random timelines."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ai.talk import talk_listen
from ai.transcript import Interval, Segment, Transcript


def transcript(
    inbound: list[tuple[float, float]],
    outbound: list[tuple[float, float]],
    duration: float,
    segments: tuple[Segment, ...] = (),
) -> Transcript:
    return Transcript(
        language="en",
        model="test",
        duration_s=duration,
        segments=segments,
        speech={
            "inbound": tuple(Interval(s, e) for s, e in inbound),
            "outbound": tuple(Interval(s, e) for s, e in outbound),
        },
    )


def test_overlap_silence_shares_interruptions_and_turns_of_a_small_call() -> None:
    # Caller 1-5 and 6-8; agent 4-7 and 10-12; 20 s call.
    doc = talk_listen(transcript([(1, 5), (6, 8)], [(4, 7), (10, 12)], 20))
    assert doc == {
        "tracks": {
            "inbound": {
                "talk_s": 6.0,
                "talk_share": 0.55,  # 6 / 11
                "wpm": 0,
                # 1-4 (cut where the agent starts at 4; 4-5 lies under the agent's speech
                # and is no run), 6-8 (the 5-6 pause has the agent talking: not joined).
                "longest_monologue_s": 3.0,
                "turns": 2,
            },
            "outbound": {
                "talk_s": 5.0,
                "talk_share": 0.45,
                "wpm": 0,
                # 4-6 (cut at the caller's 6; 6-7 lies under the caller's speech), 10-12
                "longest_monologue_s": 2.0,
                "turns": 2,
            },
        },
        "talk_to_listen": 0.83,  # 5 / 6
        "silence_s": 11.0,  # 20 - (6 + 5 - 2)
        "overlap_s": 2.0,  # 4-5 and 6-7
        # The agent at 4 (caller goes on 1 s) and the caller at 6 (agent goes on 1 s).
        "interruptions": 2,
        "interruptions_by_track": {"inbound": 1, "outbound": 1},
    }


def test_monologue_joins_pauses_shorter_than_1_5_s() -> None:
    # Gaps of 1.0 and 1.4 s join; a gap of exactly 1.5 s does not.
    doc = talk_listen(transcript([(0, 3), (4, 6), (7.4, 9), (10.5, 12)], [], 30))
    caller = doc["tracks"]["inbound"]
    assert caller["longest_monologue_s"] == 9.0  # 0-9 including the pauses
    assert caller["turns"] == 2
    assert caller["talk_s"] == 8.1  # 3 + 2 + 1.6 + 1.5
    assert doc["tracks"]["outbound"]["turns"] == 0
    assert doc["tracks"]["outbound"]["longest_monologue_s"] == 0.0


def test_other_track_talking_in_a_pause_ends_the_monologue() -> None:
    doc = talk_listen(transcript([(0, 3), (4, 9)], [(3.2, 3.5)], 10))
    assert doc["tracks"]["inbound"]["turns"] == 2
    assert doc["tracks"]["inbound"]["longest_monologue_s"] == 5.0


def test_other_track_starting_as_the_pause_ends_ends_the_monologue() -> None:
    doc = talk_listen(transcript([(0, 3), (4, 9)], [(4, 4.2)], 10))
    assert doc["tracks"]["inbound"]["turns"] == 2


def test_other_track_starting_inside_an_interval_cuts_the_run_there() -> None:
    # Caller 0-3 and 4-9 would be one run; the agent's "mhm" at 5 cuts it into 0-5 and 5-9.
    doc = talk_listen(transcript([(0, 3), (4, 9)], [(5, 5.3)], 10))
    caller = doc["tracks"]["inbound"]
    assert caller["turns"] == 2
    assert caller["longest_monologue_s"] == 5.0
    # The "mhm" lies under the caller's speech: no turn of the agent's.
    assert doc["tracks"]["outbound"]["turns"] == 0
    # A backchannel of 0.3 s is no interruption.
    assert doc["interruptions"] == 0
    assert doc["overlap_s"] == 0.3


def test_an_interruption_lasts_and_the_interrupted_side_goes_on() -> None:
    Spans = list[tuple[float, float]]
    cases: dict[str, tuple[Spans, Spans, int]] = {
        # agent interval 2-2.4 (0.4 s) while the caller goes on: backchannel, none
        "short interrupter": ([(0, 10)], [(2, 2.4)], 0),
        # agent interval of exactly 0.5 s: counts
        "interrupter 0.5 s": ([(0, 10)], [(2, 2.5)], 1),
        # the caller stops 0.2 s after the agent starts: turn taking, none
        "speaker stops": ([(0, 2.2)], [(2, 6)], 0),
        # the caller goes on exactly 0.3 s (VAD time): counts
        "speaker goes on 0.3 s": ([(0, 2.3)], [(2, 6)], 1),
        # both start at the same instant: nobody interrupts
        "same start": ([(2, 6)], [(2, 6)], 0),
        # agent starts in the caller's silence
        "no overlap": ([(0, 2)], [(3, 6)], 0),
    }
    for name, (caller, agent, expected) in cases.items():
        doc = talk_listen(transcript(caller, agent, 10))
        assert doc["interruptions"] == expected, name
        assert doc["interruptions_by_track"] == {"inbound": 0, "outbound": expected}, name


def test_wpm_counts_tokens_with_a_letter_or_digit() -> None:
    segments = (
        Segment("inbound", 0, 30, "Hello there, how are you - ok ?"),  # 6 words
        Segment("outbound", 0, 5, "Fine 100 %"),  # 2 words
    )
    doc = talk_listen(transcript([(0, 30)], [(40, 50)], 60, segments))
    assert doc["tracks"]["inbound"]["wpm"] == 12  # 6 words in 0.5 minutes
    assert doc["tracks"]["outbound"]["wpm"] == 12  # 2 words in 1/6 minute
    assert isinstance(doc["tracks"]["inbound"]["wpm"], int)


def test_nobody_talked() -> None:
    segments = (Segment("inbound", 0, 1, "ghost words"),)
    doc = talk_listen(transcript([], [], 12.5, segments))
    assert doc["talk_to_listen"] is None
    assert doc["silence_s"] == 12.5
    assert doc["overlap_s"] == 0.0
    for track in ("inbound", "outbound"):
        assert doc["tracks"][track] == {
            "talk_s": 0.0,
            "talk_share": 0.0,
            "wpm": 0,
            "longest_monologue_s": 0.0,
            "turns": 0,
        }


def test_only_the_agent_talked() -> None:
    doc = talk_listen(transcript([], [(1, 4)], 10))
    assert doc["talk_to_listen"] is None
    assert doc["tracks"]["outbound"]["talk_share"] == 1.0
    assert doc["tracks"]["inbound"]["talk_share"] == 0.0


def test_intervals_are_clipped_to_the_call_and_joined() -> None:
    # -1..2 clips to 0..2; 9..15 clips to 9..10; 1..3 overlaps 0..2 and joins to 0..3.
    doc = talk_listen(transcript([(-1, 2), (1, 3), (9, 15), (12, 14)], [], 10))
    assert doc["tracks"]["inbound"]["talk_s"] == 4.0
    assert doc["silence_s"] == 6.0
    assert doc["talk_to_listen"] == 0.0


def test_missing_track_in_speech_counts_as_silent() -> None:
    doc = talk_listen(
        Transcript("en", "test", 5.0, (), {"inbound": (Interval(0, 2),)}),
    )
    assert doc["tracks"]["outbound"]["talk_s"] == 0.0
    assert doc["tracks"]["inbound"]["talk_share"] == 1.0
    assert doc["talk_to_listen"] == 0.0


def _disjoint(draws: list[tuple[int, int]]) -> list[tuple[float, float]]:
    """Sorted, disjoint intervals from (gap, length) pairs in hundredths of a second."""
    spans: list[tuple[float, float]] = []
    position = 0
    for gap, length in draws:
        start = position + gap
        spans.append((start / 100, (start + length) / 100))
        position = start + length
    return spans


def _union_length(spans: list[tuple[float, float]], duration: float) -> float:
    """An independent sweep over both tracks' intervals, for the property below."""
    total = 0.0
    reach = 0.0
    for start, end in sorted(spans):
        start, end = max(start, reach, 0.0), min(end, duration)
        if end > start:
            total += end - start
        reach = max(reach, end)
    return total


_track = st.lists(st.tuples(st.integers(1, 500), st.integers(1, 800)), max_size=25)


@settings(max_examples=200, deadline=None)
@given(caller=_track, agent=_track, duration=st.integers(0, 20_000))
def test_properties(
    caller: list[tuple[int, int]], agent: list[tuple[int, int]], duration: int
) -> None:
    inbound, outbound = _disjoint(caller), _disjoint(agent)
    seconds = duration / 100
    doc = talk_listen(transcript(inbound, outbound, seconds))
    tracks = doc["tracks"]
    shares = tracks["inbound"]["talk_share"] + tracks["outbound"]["talk_share"]
    talk = tracks["inbound"]["talk_s"] + tracks["outbound"]["talk_s"]
    if talk == 0:
        assert shares == 0
    else:
        assert abs(shares - 1) <= 0.011  # two values rounded to 2 decimals
    union = _union_length(inbound + outbound, seconds)
    assert abs(doc["silence_s"] + union - seconds) <= 0.011
    assert abs(talk - doc["overlap_s"] - union) <= 0.03
    assert doc["overlap_s"] <= min(tracks["inbound"]["talk_s"], tracks["outbound"]["talk_s"])
    assert 0 <= doc["silence_s"] <= seconds + 0.005
    clipped = {
        name: [span for span in spans if min(span[1], seconds) > span[0]]
        for name, spans in (("inbound", inbound), ("outbound", outbound))
    }
    for name, other in (("inbound", "outbound"), ("outbound", "inbound")):
        kept = clipped[name]
        assert doc["interruptions_by_track"][name] <= len(kept)
        assert tracks[name]["longest_monologue_s"] <= seconds + 0.005
        # Each interval gives at most one run plus one per cut by the other's starts.
        assert tracks[name]["turns"] <= len(kept) + len(clipped[other])
        if not kept:
            assert tracks[name]["turns"] == 0
        elif not clipped[other]:
            assert tracks[name]["turns"] >= 1
    assert doc["interruptions"] == sum(doc["interruptions_by_track"].values())


def test_an_hour_long_call_with_overlapping_turns() -> None:
    inbound: list[tuple[float, float]] = []
    outbound: list[tuple[float, float]] = []
    position = 0.0
    for turn in range(1200):  # a 3 s turn every 3 s, alternating, with 0.25 s overlaps
        (inbound if turn % 2 else outbound).append((position, position + 3.25))
        position += 3.0
    call = transcript(inbound, outbound, 3600)
    doc = talk_listen(call)
    # Each turn's last 0.25 s lies under the other's next turn and is no run of its own.
    assert doc["tracks"]["inbound"]["turns"] == 600
    assert doc["tracks"]["outbound"]["turns"] == 600
    assert doc["interruptions"] == 0  # the interrupted side goes on only 0.25 s
    assert doc["overlap_s"] == 299.75  # 1199 overlaps of 0.25 s

"""The shipped sample calls (``tests/data/calls/``) say what they contain.

The AI pipeline's tests compare transcripts, talk times and overlaps with these calls' JSON
ground truth, so a JSON file that drifted from its audio (a regenerated track with the old
JSON, a hand edit) would make those tests wrong in ways hard to see. These checks read only
the files (no espeak-ng) and decode with the product's G.711 codec.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from storage.media.codecs import codec

CALLS_DIR = Path(__file__).resolve().parent.parent / "data" / "calls"
CALLS = ("support", "cancellation", "romanian")
TRACKS = ("inbound", "outbound")
RATE = 8000
ULAW_SILENCE = 0xFF
SPEECH_RMS = 1000
"""A turn's RMS must exceed this (the generator scales speech to a 19660 peak; measured
turn RMS is 1900-3100)."""
EDGE_PEAK = 100
"""The first and last 10 ms of a turn must reach this: the turn's times are where the trimmed
speech starts and ends, not padding (measured edge peaks are 164 and up)."""

Truth = dict[str, Any]
Tracks = dict[str, bytes]


def load(name: str) -> tuple[Truth, Tracks]:
    truth = json.loads((CALLS_DIR / f"{name}.json").read_text(encoding="utf-8"))
    tracks = {t: (CALLS_DIR / f"{name}.{t}.ulaw").read_bytes() for t in TRACKS}
    return truth, tracks


def sample(seconds: float) -> int:
    """A JSON time as a sample index; times are whole milliseconds, so this is exact."""
    assert abs(seconds * 1000 - round(seconds * 1000)) < 1e-6, seconds
    return round(seconds * RATE)


def spans(truth: Truth, track: str) -> list[tuple[int, int]]:
    return [
        (sample(t["start_s"]), sample(t["end_s"])) for t in truth["turns"] if t["track"] == track
    ]


def overlaps(truth: Truth) -> list[tuple[int, int]]:
    """Every stretch where an inbound and an outbound turn both run."""
    found = []
    for a0, a1 in spans(truth, "inbound"):
        for b0, b1 in spans(truth, "outbound"):
            if max(a0, b0) < min(a1, b1):
                found.append((max(a0, b0), min(a1, b1)))
    return found


def check_call(truth: Truth, tracks: Tracks) -> None:
    """Assert everything a call's files promise about each other."""
    assert truth["sample_rate"] == RATE
    assert truth["language"] in ("en", "ro")
    length = sample(truth["duration_s"])
    assert len(tracks["inbound"]) == len(tracks["outbound"]) == length
    assert length % (RATE // 50) == 0  # whole 20 ms frames

    turns = truth["turns"]
    assert turns and all(t["track"] in TRACKS for t in turns)
    for turn in turns:
        assert 0 <= sample(turn["start_s"]) < sample(turn["end_s"]) <= length, turn
        assert turn["text"].strip()
    for track in TRACKS:
        own = spans(truth, track)
        assert own == sorted(own)
        assert all(a1 <= b0 for (_, a1), (b0, _) in zip(own, own[1:], strict=False)), track

    decoded = {t: codec("pcmu").decode(tracks[t]).astype(np.float64) for t in TRACKS}
    raw = {t: np.frombuffer(tracks[t], np.uint8) for t in TRACKS}
    for track in TRACKS:
        speaking = np.zeros(length, bool)
        for start, end in spans(truth, track):
            speaking[start:end] = True
            speech = decoded[track][start:end]
            assert np.sqrt(np.mean(speech**2)) > SPEECH_RMS, (track, start / RATE)
            edge = 10 * RATE // 1000
            assert np.abs(speech[:edge]).max() > EDGE_PEAK, (track, start / RATE)
            assert np.abs(speech[-edge:]).max() > EDGE_PEAK, (track, end / RATE)
        # Outside its own turns a track is exact µ-law silence (no clicks, no dither).
        assert np.all(raw[track][~speaking] == ULAW_SILENCE), track

    # While one side talks, the other is silent except where the turns declare an overlap.
    both = np.zeros(length, bool)
    for start, end in overlaps(truth):
        both[start:end] = True
    for turn in turns:
        other = "outbound" if turn["track"] == "inbound" else "inbound"
        start, end = sample(turn["start_s"]), sample(turn["end_s"])
        assert np.all(raw[other][start:end][~both[start:end]] == ULAW_SILENCE), turn
    assert truth["overlap_s"] == round(sum(e - s for s, e in overlaps(truth)) / RATE, 3)

    for track in TRACKS:
        talk = sum(e - s for s, e in spans(truth, track))
        assert truth["talk_s"][track] == round(talk / RATE, 3), track
        said = " ".join(t["text"] for t in turns if t["track"] == track)
        assert truth["text"][track] == said, track


@pytest.mark.parametrize("name", CALLS)
def test_call_files_agree_with_their_ground_truth(name: str) -> None:
    truth, tracks = load(name)
    assert truth["name"] == name
    check_call(truth, tracks)
    assert sum(len(b) for b in tracks.values()) < 700_000


@pytest.mark.parametrize(
    ("name", "language", "voices", "durations", "turn_counts", "words"),
    [
        (
            "support",
            "en",
            {"inbound": "en-us+m3", "outbound": "en-gb+f2"},
            (25, 35),
            (8, 10),
            ("internet", "router", "reset", "four seven one", "thanks"),
        ),
        (
            "cancellation",
            "en",
            {"inbound": "en-us+m3", "outbound": "en-gb+f2"},
            (25, 35),
            (8, 10),
            ("cancel my subscription", "terminate", "refund", "you've been very helpful"),
        ),
        (
            "romanian",
            "ro",
            {"inbound": "ro+m3", "outbound": "ro+f2"},
            (20, 30),
            (5, 10),
            ("internetul", "mulțumesc", "ș", "ț", "ă", "î", "â"),
        ),
    ],
)
def test_call_is_the_one_the_brief_describes(
    name: str,
    language: str,
    voices: dict[str, str],
    durations: tuple[float, float],
    turn_counts: tuple[int, int],
    words: tuple[str, ...],
) -> None:
    truth, _ = load(name)
    assert truth["language"] == language
    assert truth["voices"] == voices
    assert truth["espeak_ng"].startswith("eSpeak NG text-to-speech: ")
    assert durations[0] <= truth["duration_s"] <= durations[1]
    assert turn_counts[0] <= len(truth["turns"]) <= turn_counts[1]
    said = " ".join(truth["text"].values()).lower()
    for word in words:
        assert word in said, word
    # Both sides speak, and the caller is the inbound track.
    assert 0 < truth["talk_s"]["inbound"] and 0 < truth["talk_s"]["outbound"]


@pytest.mark.parametrize("name", ["support", "romanian"])
def test_calls_without_interruption_never_overlap(name: str) -> None:
    truth, _ = load(name)
    assert overlaps(truth) == []
    assert truth["overlap_s"] == 0


def test_cancellation_has_one_agent_interruption_of_0_8_s() -> None:
    truth, tracks = load("cancellation")
    ((start, end),) = overlaps(truth)
    assert (end - start) / RATE == pytest.approx(0.8, abs=1e-9)
    assert truth["overlap_s"] == 0.8
    turns = truth["turns"]
    (agent,) = [t for t in turns if t["track"] == "outbound" and sample(t["start_s"]) == start]
    (caller,) = [t for t in turns if t["track"] == "inbound" and sample(t["end_s"]) == end]
    assert sample(agent["end_s"]) > end  # the agent goes on after the caller stops
    # Both really talk at once: each track has speech throughout the overlap.
    for track in TRACKS:
        both = codec("pcmu").decode(tracks[track][start:end]).astype(np.float64)
        assert np.sqrt(np.mean(both**2)) > SPEECH_RMS, track
    assert "refund" in caller["text"]


def _click_in_silence(truth: Truth, tracks: Tracks) -> None:
    data = bytearray(tracks["inbound"])
    data[sample(truth["duration_s"]) - 1] = 0x80  # a loud sample in the trailing silence
    tracks["inbound"] = bytes(data)


def _short_track(truth: Truth, tracks: Tracks) -> None:
    tracks["outbound"] = tracks["outbound"][:-160]


def _turn_shifted(truth: Truth, tracks: Tracks) -> None:
    turn = truth["turns"][1]
    turn["start_s"] = round(turn["start_s"] - 0.2, 3)  # now starts in silence


def _talk_time_off(truth: Truth, tracks: Tracks) -> None:
    truth["talk_s"]["outbound"] = round(truth["talk_s"]["outbound"] + 0.001, 3)


def _text_off(truth: Truth, tracks: Tracks) -> None:
    truth["text"]["inbound"] += " extra"


def _tracks_swapped(truth: Truth, tracks: Tracks) -> None:
    tracks["inbound"], tracks["outbound"] = tracks["outbound"], tracks["inbound"]


@pytest.mark.parametrize(
    "damage",
    [_click_in_silence, _short_track, _turn_shifted, _talk_time_off, _text_off, _tracks_swapped],
)
def test_check_call_notices_damage(damage: Callable[[Truth, Tracks], None]) -> None:
    truth, tracks = load("support")
    truth, tracks = copy.deepcopy(truth), dict(tracks)
    damage(truth, tracks)
    with pytest.raises(AssertionError):
        check_call(truth, tracks)


def test_readme_says_how_the_calls_were_made() -> None:
    text = (CALLS_DIR / "README.md").read_text(encoding="utf-8")
    assert "bench/make_test_calls.py" in text
    assert "no third-party" in text.lower()
    truth, _ = load("support")
    assert truth["espeak_ng"] in text
    for name in CALLS:
        assert f"`{name}`" in text

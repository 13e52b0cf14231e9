"""bench/loadframes.py: the frames bench/loadgen.py sends, and the check of an export
against them, which must fail on a missing, duplicated, misplaced or altered frame."""

from __future__ import annotations

import numpy as np
import pytest

from bench.loadframes import (
    FRAME,
    L16Frames,
    UlawFrames,
    aligned,
    check_track,
    expected,
    ulaw_table,
)
from storage.media.codecs import codec

FRAMES = 300
CALL, TRACK = 1234, 1


def sent(encoding: str, frames: int = FRAMES) -> np.ndarray:
    """The track as callvault would store it, built from the sender's own bytes."""
    if encoding == "l16":
        source = L16Frames(CALL, TRACK)
        raw = b"".join(source.frame(k) for k in range(frames))
        return np.frombuffer(raw, "<i2").astype(np.int16)
    ulaw = UlawFrames(CALL, TRACK)
    return codec("pcmu").decode(b"".join(ulaw.frame(k) for k in range(frames)))


def test_the_ulaw_table_is_callvaults_decoder() -> None:
    assert np.array_equal(ulaw_table(), codec("pcmu").decode(bytes(range(256))))


@pytest.mark.parametrize("encoding", ["l16", "ulaw"])
def test_what_the_sender_sends_is_what_the_check_expects(encoding: str) -> None:
    assert np.array_equal(sent(encoding), expected(encoding, CALL, TRACK, FRAMES))


@pytest.mark.parametrize("encoding", ["l16", "ulaw"])
@pytest.mark.parametrize("lead", [0, 37, 5 * FRAME])
def test_an_exact_track_passes_wherever_it_starts(encoding: str, lead: int) -> None:
    track = np.concatenate([np.zeros(lead, np.int16), sent(encoding), np.zeros(999, np.int16)])
    found = check_track(track, encoding, CALL, TRACK, FRAMES)
    assert (found.matched, found.lost, found.failure) == (FRAMES, 0, None)


def frames_of(track: np.ndarray) -> list[np.ndarray]:
    return [track[i : i + FRAME] for i in range(0, len(track), FRAME)]


def corrupt(encoding: str, how: str) -> np.ndarray:
    track = sent(encoding)
    frames = frames_of(track)
    if how == "missing":  # a stream transport: what follows moves up
        del frames[100]
    elif how == "missing-first":
        del frames[0]
    elif how == "silenced":  # RTP: the gap is kept as silence
        frames[100] = np.zeros(FRAME, np.int16)
    elif how == "duplicated":
        frames.insert(100, frames[100])
    elif how == "swapped":
        frames[100], frames[101] = frames[101], frames[100]
    elif how == "late":  # one frame lands a few samples off
        frames[100] = np.concatenate([np.zeros(3, np.int16), frames[100][:-3]])
    elif how == "sample":
        frames[200] = frames[200].copy()
        frames[200][77] ^= 1
    elif how == "extra":
        frames.append(frames[0])
    elif how == "foreign":  # another call's frames
        return expected(encoding, CALL + 1, TRACK, FRAMES)
    return np.concatenate(frames)


@pytest.mark.parametrize("encoding", ["l16", "ulaw"])
@pytest.mark.parametrize(
    "how",
    ["missing", "missing-first", "silenced", "duplicated", "swapped", "late", "sample",
     "extra", "foreign"],
)  # fmt: skip
def test_a_corrupted_track_fails(encoding: str, how: str) -> None:
    found = check_track(corrupt(encoding, how), encoding, CALL, TRACK, FRAMES)
    assert found.lost > 0
    assert found.failure is not None


def test_a_silent_track_loses_everything_and_a_silent_one_that_sent_nothing_passes() -> None:
    silent = np.zeros(FRAMES * FRAME, np.int16)
    assert check_track(silent, "l16", CALL, TRACK, FRAMES).lost == FRAMES
    assert check_track(silent, "l16", CALL, TRACK, 0).failure is None


def test_tracks_out_of_line_with_the_call_fail_though_each_is_exact() -> None:
    """Each track checked on its own is exact relative to its own frame 0; whether that
    frame 0 lies where the call puts it is ``aligned``'s: a review found that an outbound
    channel 20 ms behind the inbound one, or a whole call 1 s late, passed."""
    frames, lead = 200, 8000
    inbound = np.concatenate([expected("ulaw", 7, 0, frames), np.zeros(2 * FRAME, np.int16)])
    late = np.concatenate(
        [np.zeros(FRAME, np.int16), expected("ulaw", 7, 1, frames), np.zeros(FRAME, np.int16)]
    )
    in_line = [
        check_track(inbound, "ulaw", 7, 0, frames),
        check_track(inbound, "ulaw", 7, 0, frames),
    ]
    assert aligned("twilio", in_line) is None
    shifted = [check_track(inbound, "ulaw", 7, 0, frames), check_track(late, "ulaw", 7, 1, frames)]
    assert all(c.failure is None and c.lost == 0 for c in shifted)  # each exact on its own
    assert aligned("twilio", shifted) is not None and aligned("fork", shifted) is not None
    assert aligned("srtp", shifted) is None  # RTP tracks anchor apart: within a frame is fine
    whole_call_late = np.concatenate([np.zeros(lead, np.int16), inbound])
    found = check_track(whole_call_late, "ulaw", 7, 0, frames)
    assert found.start == lead and aligned("audiosocket", [found]) is not None
    far = np.concatenate([np.zeros(2 * FRAME + 1, np.int16), inbound])
    assert aligned("rtp", [in_line[0], check_track(far, "ulaw", 7, 0, frames)]) is not None

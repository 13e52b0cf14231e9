"""Silero VAD fed a track in pieces (``ai.vad``) finds exactly the speech faster-whisper's
``get_speech_timestamps`` finds on the whole track: the talk/listen metrics and Whisper's
chunks of a windowed analysis are the whole-track run's. Silero VAD is faster-whisper's
bundled ONNX model; the tight options are the pipeline's."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from faster_whisper.vad import get_speech_timestamps

from ai.audio import MODEL_RATE, resample
from ai.transcribe import TIGHT_MIN_SILENCE_MS
from ai.transcript import Interval
from ai.vad import VAD_BATCH, VAD_FRAME, SileroSpeech
from storage.media.codecs import codec
from tests.ai import CALLS, sample_call


def track_audio(name: str, track: str) -> npt.NDArray[np.float32]:
    return resample(codec("pcmu").decode(getattr(sample_call(name), track)), 8000)


def whole_track_run(audio: npt.NDArray[np.float32]) -> tuple[Interval, ...]:
    chunks = get_speech_timestamps(
        audio, min_silence_duration_ms=TIGHT_MIN_SILENCE_MS, speech_pad_ms=0
    )
    return tuple(Interval(c["start"] / MODEL_RATE, c["end"] / MODEL_RATE) for c in chunks)


def fed_in_pieces(audio: npt.NDArray[np.float32], seed: int) -> tuple[Interval, ...]:
    detector = SileroSpeech(min_silence_ms=TIGHT_MIN_SILENCE_MS)
    pieces = np.random.default_rng(seed)
    position = 0
    while position < len(audio):
        size = int(pieces.integers(1, 3 * MODEL_RATE))  # not whole frames, nor batches
        detector.feed(audio[position : position + size])
        position += size
    return detector.finish()


@pytest.mark.parametrize(
    ("name", "track"),
    [(path.name.split(".")[0], path.name.split(".")[1]) for path in sorted(CALLS.glob("*.ulaw"))],
)
def test_speech_fed_in_pieces_is_the_whole_track_runs(name: str, track: str) -> None:
    audio = track_audio(name, track)
    expected = whole_track_run(audio)
    assert expected  # the sample tracks talk
    assert fed_in_pieces(audio, seed=len(audio)) == expected


def test_speech_across_batches_and_at_a_frame_boundary_is_the_whole_track_runs() -> None:
    # Longer than one batch of the model (320 s), so that its state runs across the batch
    # boundary, and ending on a whole frame (the library pads one more frame of zeros and
    # zeroes the end of the last one: both reproduced).
    talk = track_audio("support", "inbound")
    audio = np.tile(talk, VAD_BATCH // len(talk) + 1)[: VAD_BATCH + 7 * VAD_FRAME]
    expected = whole_track_run(audio)
    assert expected[-1].start > VAD_BATCH / MODEL_RATE  # speech found past the boundary
    assert fed_in_pieces(audio, seed=1) == expected


def test_a_track_of_nothing_has_no_speech() -> None:
    assert SileroSpeech(min_silence_ms=TIGHT_MIN_SILENCE_MS).finish() == ()
    silence = SileroSpeech(min_silence_ms=TIGHT_MIN_SILENCE_MS)
    silence.feed(np.zeros(3 * MODEL_RATE, dtype=np.float32))
    assert silence.finish() == ()


def test_the_frames_handed_to_a_failing_model_are_overwritten() -> None:
    # The ONNX session fails (out of memory, a cancelled run): the frames built for it (the
    # track's audio with its context) are overwritten all the same, and ``wipe`` clears
    # what the detector holds.
    handed: list[npt.NDArray[np.float32]] = []

    class Failing:
        def run(self, _: object, feeds: dict[str, npt.NDArray[np.float32]]) -> None:
            handed.append(feeds["input"])
            raise RuntimeError("scripted model failure")

    detector = SileroSpeech(min_silence_ms=TIGHT_MIN_SILENCE_MS, session=Failing())
    audio = track_audio("support", "inbound")
    detector.feed(audio)
    assert detector._batch.any()
    with pytest.raises(RuntimeError, match="scripted model failure"):
        detector.finish()
    (inputs,) = handed
    assert inputs.size and not inputs.any()
    detector.wipe()
    assert not detector._batch.any() and not detector._context.any()

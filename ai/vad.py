"""Silero VAD over a track fed piece by piece, with exactly the result of one whole-track run.

Why this module exists: a track is decoded and analysed in windows so that a worker's memory
does not grow with the call's length (``ai.pipeline``), but the speech intervals must be
the ones faster-whisper's ``get_speech_timestamps`` finds on the whole track: the
talk/listen metrics are computed from them, and Whisper's chunks are cut from them. Silero
is a recurrent model (its LSTM state, and 64 samples of context per 512-sample frame, run
from frame to frame), so running ``get_speech_timestamps`` per window would restart it at
every window and move the intervals near the cuts.

``SileroSpeech`` makes the very calls ``SileroVADModel.__call__`` makes on the whole track:
frames of 512 samples, each with the previous frame's last 64 samples as context (zeros
before the first), handed to the same ONNX session in batches of 10,000 frames
(``VAD_BATCH_FRAMES``, the library's ``encoder_batch_size``) with the LSTM state carried
from batch to batch; the track padded at its end as the library pads it (to a whole frame,
a whole frame of zeros when it ends on a frame boundary), and the library's quirk kept: its
last frame's last 64 samples are zeroed (``context[-1] = 0`` writes through a view). The
probabilities then go through ``get_speech_timestamps``'s loop, one frame at a time, with
the tight options of ``ai.transcribe`` (0.5 s of silence ends an interval, no padding, no
minimum or maximum length, so the loop's maximum-length branch never runs and is left out).
Held at any time: at most one batch of audio (10,000 frames: 320 s, 20 MB) and the
intervals found so far. ``tests/unit/test_vad.py`` checks, on every sample track, that the
intervals equal the library's own whole-track run.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from ai.audio import MODEL_RATE
from ai.transcript import Interval

VAD_FRAME = 512
"""Samples per Silero frame (32 ms at 16 kHz)."""
VAD_CONTEXT = 64
"""Samples of the previous frame each frame is given as context."""
VAD_BATCH_FRAMES = 10_000
"""Frames per ONNX call: faster-whisper's ``encoder_batch_size``."""
VAD_BATCH = VAD_FRAME * VAD_BATCH_FRAMES
"""Samples per batch: 5,120,000, 320 s at 16 kHz."""
THRESHOLD = 0.5
NEG_THRESHOLD = max(THRESHOLD - 0.15, 0.01)
"""``VadOptions``' defaults: a frame at or over 0.5 is speech; under 0.35 it is silence."""


class SileroSpeech:
    """Speech intervals of one track, fed its 16 kHz samples in pieces of any size.

    ``feed`` as the track is decoded, ``finish`` once at its end (or ``wipe`` when the
    track's reading fails). Blocking (ONNX Runtime).
    """

    def __init__(self, *, min_silence_ms: int, session: Any = None) -> None:
        if session is None:
            from faster_whisper.vad import get_vad_model

            session = get_vad_model().session
        self._session = session
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(VAD_CONTEXT, dtype=np.float32)
        self._batch = np.zeros(VAD_BATCH, dtype=np.float32)
        self._filled = 0
        self._length = 0
        self._frame = 0
        self._min_silence = MODEL_RATE * min_silence_ms / 1000
        self._triggered = False
        self._start = 0
        self._temp_end = 0
        self._intervals: list[Interval] = []

    def feed(self, samples: npt.NDArray[np.float32]) -> None:
        """The next samples of the track (copied: the caller may wipe them at once)."""
        position = 0
        while position < len(samples):
            take = min(len(samples) - position, VAD_BATCH - self._filled)
            self._batch[self._filled : self._filled + take] = samples[position : position + take]
            self._filled += take
            position += take
            if self._filled == VAD_BATCH:
                self._run(self._batch)
                self._filled = 0
        self._length += len(samples)

    def finish(self) -> tuple[Interval, ...]:
        """The track's speech intervals in seconds (the track ended); wipes the buffer."""
        try:
            if self._length == 0:
                return ()
            # Padded as the library pads: to a whole frame, a whole frame more if already whole.
            padded = self._filled + VAD_FRAME - self._filled % VAD_FRAME
            tail = np.zeros(padded, dtype=np.float32)
            try:
                tail[: self._filled] = self._batch[: self._filled]
                tail[-VAD_CONTEXT:] = 0.0  # the library's quirk (see the module docstring)
                for start in range(0, padded, VAD_BATCH):
                    self._run(tail[start : start + VAD_BATCH])
            finally:
                tail.fill(0.0)
            if self._triggered and self._length - self._start > 0:
                self._intervals.append(self._interval(self._start, self._length))
            return tuple(self._intervals)
        finally:
            self.wipe()

    def wipe(self) -> None:
        """Overwrite the audio held (the batch not yet run, the last frame's context): at
        the track's end, and when its reading fails part-way (``ai.pipeline``)."""
        self._batch.fill(0.0)
        self._context.fill(0.0)
        self._filled = 0

    def _run(self, audio: npt.NDArray[np.float32]) -> None:
        frames = audio.reshape(-1, VAD_FRAME)
        inputs = np.empty((len(frames), VAD_CONTEXT + VAD_FRAME), dtype=np.float32)
        try:
            inputs[0, :VAD_CONTEXT] = self._context
            inputs[1:, :VAD_CONTEXT] = frames[:-1, -VAD_CONTEXT:]
            inputs[:, VAD_CONTEXT:] = frames
            self._context[:] = frames[-1, -VAD_CONTEXT:]
            probabilities, self._h, self._c = self._session.run(
                None, {"input": inputs, "h": self._h, "c": self._c}
            )
        finally:  # also when the model fails: the frames are the track's audio
            inputs.fill(0.0)
        for probability in np.asarray(probabilities).reshape(-1).tolist():
            self._step(probability)

    def _step(self, probability: float) -> None:
        """``get_speech_timestamps``' loop body for one frame (its names kept)."""
        position = VAD_FRAME * self._frame
        self._frame += 1
        if probability >= THRESHOLD and self._temp_end:
            self._temp_end = 0
        if probability >= THRESHOLD and not self._triggered:
            self._triggered = True
            self._start = position
            return
        if probability < NEG_THRESHOLD and self._triggered:
            if not self._temp_end:
                self._temp_end = position
            if position - self._temp_end < self._min_silence:
                return
            if self._temp_end - self._start > 0:
                self._intervals.append(self._interval(self._start, self._temp_end))
            self._temp_end = 0
            self._triggered = False

    @staticmethod
    def _interval(start: int, end: int) -> Interval:
        return Interval(start / MODEL_RATE, end / MODEL_RATE)

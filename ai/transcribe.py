"""Transcription of one track with faster-whisper, on CPU or GPU, with Silero VAD.

``Transcriber`` is the small interface the worker needs (STYLE.md §7); ``WhisperTranscriber``
is the real one. It runs faster-whisper's own steps in faster-whisper's own order, with one
difference: the speech intervals that its built-in Silero VAD finds are kept, because the
talk/listen metrics are computed from them. ``WhisperModel.transcribe(vad_filter=True)``
finds them and throws them away; running the VAD a second time for the metrics would cost
every call a second pass. So this module does what the library does inside, step by step:
``get_speech_timestamps`` (``ai.vad``: the same calls of the same model, fed the track in
pieces), ``collect_chunks`` (``ai.windows``: a window of chunks at a time) and
``restore_speech_timestamps`` around ``transcribe(vad_filter=False)`` on the speech alone.

Blocking (CTranslate2, ONNX Runtime): the worker runs it in its one inference thread. The
model loads once, when the transcriber is built, and lives as long as the worker.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from ai.audio import MODEL_RATE
from ai.models import ResolvedModel
from ai.transcript import Interval, Word
from ai.vad import SileroSpeech
from crypto.errors import ConfigError

log = logging.getLogger(__name__)

WHISPER_MIN_SILENCE_MS = 2000
WHISPER_PAD_MS = 400
"""faster-whisper's default VAD options (``VadOptions()``; a unit test keeps them equal):
a pause of 2 s ends a chunk, and chunks are padded by 400 ms."""
TIGHT_MIN_SILENCE_MS = 500
"""For the talk/listen metrics a pause of 0.5 s ends a stretch of talk; shorter pauses
(between words and sentences of one turn) count as talking."""


@dataclass(frozen=True, slots=True)
class Utterance:
    """A segment of one track, before it is labelled with the track."""

    start: float
    end: float
    text: str
    words: tuple[Word, ...] = ()


class SpeechDetector(Protocol):
    """Finds speech in one track fed its 16 kHz mono samples in consecutive pieces
    (blocking); a fresh one per track."""

    def feed(self, samples: npt.NDArray[np.float32]) -> None:
        """The next samples (copied if kept: the caller wipes them when this returns)."""
        ...

    def finish(self) -> tuple[Interval, ...]:
        """Where the track talks, tightly (no padding), in seconds; the track has ended.
        Overwrites the audio it held."""
        ...

    def wipe(self) -> None:
        """Overwrite any audio held: the track's reading failed part-way (idempotent)."""
        ...


class Transcriber(Protocol):
    """Finds speech in one track's 16 kHz mono audio and turns it into text (blocking).

    The audio comes in pieces (``ai.pipeline`` never holds a long track): the VAD is fed
    the whole track block by block; the language and the text are asked of the track's
    speech, its chunks (``whisper_chunks``, in samples on the track's timeline) back to
    back, one window of them at a time (``ai.windows``)."""

    @property
    def model_name(self) -> str: ...

    @property
    def multilingual(self) -> bool: ...

    def speech_detector(self) -> SpeechDetector:
        """A VAD for one track."""
        ...

    def detect_language(self, voiced: npt.NDArray[np.float32]) -> list[tuple[str, float]]:
        """Language probabilities of the track's first 30 s of speech, most likely first."""
        ...

    def transcribe(
        self,
        voiced: npt.NDArray[np.float32],
        chunks: Sequence[tuple[int, int]],
        language: str,
    ) -> tuple[Utterance, ...]:
        """The utterances of ``voiced`` (``chunks``' audio back to back), on the track's
        timeline."""
        ...


@dataclass(frozen=True, slots=True)
class WhisperOptions:
    device: str = "auto"
    """``cpu``, ``cuda`` or ``auto``."""
    compute_type: str = "auto"
    """``auto``: int8 on CPU, float16 on CUDA."""
    cpu_threads: int = 1
    beam_size: int = 5


def cuda_available() -> bool:
    import ctranslate2

    try:
        return ctranslate2.get_cuda_device_count() > 0
    except RuntimeError:  # a CUDA runtime without a usable driver
        return False


class WhisperTranscriber:
    """faster-whisper's ``WhisperModel``, loaded once, with its VAD's speech kept."""

    def __init__(self, model: ResolvedModel, options: WhisperOptions) -> None:
        from faster_whisper import WhisperModel

        device = options.device
        if device == "auto":
            device = "cuda" if cuda_available() else "cpu"
        compute_type = options.compute_type
        if compute_type == "auto":
            compute_type = "float16" if device == "cuda" else "int8"
        try:
            self._model = WhisperModel(
                str(model.path),
                device=device,
                compute_type=compute_type,
                cpu_threads=options.cpu_threads,
                num_workers=1,
            )
        except (RuntimeError, ValueError) as e:
            raise ConfigError(
                "CALLVAULT_AI__MODEL", f"model {model.name!r} did not load on {device}: {e}"
            ) from None
        self._name = model.name
        self.device = device
        self.compute_type = compute_type
        self._beam_size = options.beam_size
        log.info(
            "transcription model %s loaded on %s (%s)",
            model.name,
            device,
            compute_type,
            extra={"model": model.name, "device": device, "compute_type": compute_type},
        )

    @property
    def model_name(self) -> str:
        return self._name

    @property
    def multilingual(self) -> bool:
        return bool(self._model.model.is_multilingual)

    def speech_detector(self) -> SileroSpeech:
        return SileroSpeech(min_silence_ms=TIGHT_MIN_SILENCE_MS)

    def detect_language(self, voiced: npt.NDArray[np.float32]) -> list[tuple[str, float]]:
        if not self.multilingual:
            return [("en", 1.0)]
        if not len(voiced):
            return []
        _, _, probabilities = self._model.detect_language(audio=voiced)
        return [(language, float(p)) for language, p in probabilities]

    def transcribe(
        self,
        voiced: npt.NDArray[np.float32],
        chunks: Sequence[tuple[int, int]],
        language: str,
    ) -> tuple[Utterance, ...]:
        from faster_whisper.transcribe import restore_speech_timestamps

        if not chunks:
            return ()
        segments, _ = self._model.transcribe(
            voiced,
            language=language if self.multilingual else "en",
            beam_size=self._beam_size,
            vad_filter=False,
            word_timestamps=True,
        )
        spans = [{"start": start, "end": end} for start, end in chunks]
        starts = [start / MODEL_RATE for start, _ in chunks]
        utterances: list[Utterance] = []
        # Segments are decoded as they are iterated: all of them before the caller wipes.
        for segment in restore_speech_timestamps(segments, spans, MODEL_RATE):
            utterances += _split_at_pauses(segment.words or [], starts)
        return tuple(utterances)


def _split_at_pauses(words: list[Any], chunk_starts: list[float]) -> list[Utterance]:
    """A Whisper segment cut where its words cross from one speech chunk to the next.

    Whisper hears the chunks back to back, so one of its segments may run across a pause
    of seconds (in which the other party talked); on the call's timeline that segment
    would claim the whole stretch. Cut at the chunk boundaries, each piece covers speech.
    """
    pieces: list[Utterance] = []
    run: list[Any] = []
    run_chunk = -1
    for word in words:
        chunk = bisect.bisect_right(chunk_starts, (word.start + word.end) / 2) - 1
        if run and chunk != run_chunk:
            pieces.append(_utterance(run))
            run = []
        run.append(word)
        run_chunk = chunk
    if run:
        pieces.append(_utterance(run))
    return [piece for piece in pieces if piece.text]


def _utterance(words: list[Any]) -> Utterance:
    text = "".join(w.word for w in words).strip()
    timed = tuple(Word(round(float(w.start), 3), round(float(w.end), 3), w.word) for w in words)
    return Utterance(timed[0].start, timed[-1].end, text, timed)


def whisper_chunks(speech: tuple[Interval, ...], length: int) -> list[dict[str, int]]:
    """faster-whisper's default VAD chunks (in samples), from the tight speech intervals.

    The default options differ from the tight ones only in when a pause ends a chunk (2 s
    of silence instead of 0.5 s) and in the 400 ms of padding added afterwards, so
    merging the tight intervals across pauses shorter than 2 s and then padding them the
    way ``get_speech_timestamps`` pads reproduces what ``vad_filter=True`` would cut out of
    the same VAD probabilities, without running the VAD model twice.
    """
    min_silence = MODEL_RATE * WHISPER_MIN_SILENCE_MS // 1000
    pad = MODEL_RATE * WHISPER_PAD_MS // 1000
    merged: list[dict[str, int]] = []
    for interval in speech:
        start, end = round(interval.start * MODEL_RATE), round(interval.end * MODEL_RATE)
        if merged and start - merged[-1]["end"] < min_silence:
            merged[-1]["end"] = end
        else:
            merged.append({"start": start, "end": end})
    # Padding, as get_speech_timestamps does it: half of a short pause to each side.
    for i, chunk in enumerate(merged):
        if i == 0:
            chunk["start"] = max(0, chunk["start"] - pad)
        if i != len(merged) - 1:
            silence = merged[i + 1]["start"] - chunk["end"]
            if silence < 2 * pad:
                chunk["end"] += silence // 2
                merged[i + 1]["start"] = max(0, merged[i + 1]["start"] - silence // 2)
            else:
                chunk["end"] = min(length, chunk["end"] + pad)
                merged[i + 1]["start"] = max(0, merged[i + 1]["start"] - pad)
        else:
            chunk["end"] = min(length, chunk["end"] + pad)
    return merged

"""Word error rate of Whisper models on Romanian telephone speech, side by side.

Tenants speak Romanian, and the default model (``base``) hears eSpeak NG's Romanian badly
(bench/README.md, ``transcribe.py``); this program measures how much a bigger model buys on
the same fixtures, so an operator can weigh its accuracy against its cost per call.

Fixtures, all 8 kHz µ-law as telephony delivers them, decoded and resampled to 16 kHz as
the worker does (``storage.media`` then ``ai.audio.resample``):

* the Romanian sample call (``tests/data/calls/romanian``): each track is one fixture,
  its reference the track's script;
* the Romanian utterances of the redaction set (``tests/data/redaction/utterances.json``,
  the ``spoken`` form, the first ``--limit`` in file order), each synthesized here by eSpeak
  NG's plain Romanian voice (``espeak-ng -v ro``, 185 words a minute) with the sample calls'
  own steps (``bench/make_test_calls.py``: synthesize, trim, resample to 8 kHz, scale,
  encode to µ-law, checked), imported rather than copied, between the sample calls' lead
  and tail silences (0.25 s each).

Each model is loaded once from ``ai.models.resolve_model`` (a packaged name or a CTranslate2
model directory) and run as the worker runs it: ``WhisperModel(device="cpu",
compute_type="int8", cpu_threads=1)``, ``transcribe(language="ro", beam_size=5,
vad_filter=True, word_timestamps=True)``, segments consumed. That includes faster-whisper's
temperature fallback: a window whose text repeats itself or is improbable is decoded again
by sampling, and CTranslate2's sampling cannot be seeded here (its generators live in its
own threads), so the figures move from run to run where a model hears badly;
``--no-fallback`` decodes at temperature 0 only, reproducible, but then nothing stops a
window that loops ("e mea, e mea, ..."). Every model transcribes the first fixture once,
untimed (a process's first inference pays one-time costs); then each fixture is transcribed
by every model, the order flipping from one fixture to the next.

WER: word-level Levenshtein distance over reference words, on ``ai.text``-folded words
(case and diacritics folded, hyphens split), with spoken numbers and digits made one form:
``ai.redaction.spoken`` turns number words into digit groups ("treizeci și opt": 38), and
each digit counts as one word, so "cinci unu opt opt" and Whisper's "5188" match;
hesitations ("ăă") are dropped from both sides. Reported per model and set: the micro WER
(all edits over all reference words), the median of the fixtures' WERs, and the real-time
factor (transcription wall time over audio seconds; Whisper pads every input to 30 s, so
short utterances cost more per second than the call's tracks). Then the reference words the
first model gets wrong and another gets right. Prints markdown tables and one JSON line.

    python bench/romanian_wer.py [--models base,<name or directory>] [--limit 60] [--no-fallback]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402
from arguments import positive  # noqa: E402
from make_test_calls import LEAD_S, TAIL_S, encode_checked, speak  # noqa: E402
from redaction_score import load_utterances  # noqa: E402
from report import print_table  # noqa: E402
from transcribe import BEAM_SIZE, CPU_THREADS, RATE, load_call  # noqa: E402

from ai.audio import resample  # noqa: E402
from ai.models import resolve_model  # noqa: E402
from ai.redaction.spoken import lex, normalise  # noqa: E402
from ai.transcript import TRACKS  # noqa: E402
from storage.media.codecs import codec  # noqa: E402

LANGUAGE = "ro"
DEFAULT_LIMIT = 60
"""Utterances by default (the set has 119): a bigger model is slow on one CPU thread."""
HESITATIONS = frozenset({"ăă", "ăăă", "ăăm", "ăm", "îî", "îhm", "eee", "hmm", "mm", "um", "uh"})
"""Dropped from references and hypotheses alike, compared as written: folded, "ăă" would be
"aa" and "ă" the word "a"."""
VOICE = "ro"
"""eSpeak NG's Romanian voice, unvaried (the sample call's are its ``+m3`` and ``+f2``)."""
EXAMPLES = 12
"""At most this many words that the first model misses and another hears, in the report."""


@dataclass(frozen=True)
class Fixture:
    """A stretch of Romanian speech at 16 kHz and what was said in it."""

    name: str
    kind: str
    """``call`` (a sample call's track) or ``utterance``."""
    reference: str
    """What was said, as eSpeak NG was given it (numbers in words)."""
    written: str
    """The same as Whisper writes it when it hears well (numbers in digits, ``ion@mail.ro``)."""
    audio: npt.NDArray[np.float32]

    @property
    def audio_s(self) -> float:
        return len(self.audio) / 16000


def wer_words(text: str) -> list[str]:
    """The words WER counts: folded, numbers as digits (one word each), no hesitations."""
    out: list[str] = []
    for unit in normalise(lex(text.split())):
        if unit.kind == "digits":
            out.extend(unit.text)
        elif (
            unit.kind == "word"
            and unicodedata.normalize("NFC", unit.surface.lower()) not in HESITATIONS
        ):
            out.append(unit.text)
    return out


def align(reference: Sequence[str], hypothesis: Sequence[str]) -> list[str | None]:
    """For each reference word, the hypothesis word a minimal word-level edit script puts
    against it (``None``: deleted); its edits are the distance."""
    rows, cols = len(reference) + 1, len(hypothesis) + 1
    cost = [[0] * cols for _ in range(rows)]
    for i in range(rows):
        cost[i][0] = i
    for j in range(cols):
        cost[0][j] = j
    for i in range(1, rows):
        for j in range(1, cols):
            cost[i][j] = min(
                cost[i - 1][j] + 1,
                cost[i][j - 1] + 1,
                cost[i - 1][j - 1] + (reference[i - 1] != hypothesis[j - 1]),
            )
    aligned: list[str | None] = [None] * len(reference)
    i, j = rows - 1, cols - 1
    # Of equally short edit scripts, the one with the most matches: a match first, then an
    # insertion or a deletion, a substitution last.
    while i > 0:
        if j > 0 and reference[i - 1] == hypothesis[j - 1] and cost[i][j] == cost[i - 1][j - 1]:
            aligned[i - 1] = hypothesis[j - 1]
            i, j = i - 1, j - 1
        elif j > 0 and cost[i][j] == cost[i][j - 1] + 1:
            j -= 1
        elif cost[i][j] == cost[i - 1][j] + 1:
            i -= 1
        else:
            aligned[i - 1] = hypothesis[j - 1]
            i, j = i - 1, j - 1
    return aligned


def edits(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    previous = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, 1):
        current = [i]
        for j, h in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


def call_fixtures() -> list[Fixture]:
    call = load_call("romanian")
    return [
        Fixture(
            f"romanian.{track}",
            "call",
            call.call.text[track],
            call.call.text[track],
            call.audio[track],
        )
        for track in TRACKS
    ]


def utterance_fixtures(espeak: str, limit: int) -> list[Fixture]:
    """The first ``limit`` Romanian utterances, read by eSpeak NG as a call would carry them."""
    pcmu = codec("pcmu")
    fixtures = []
    items = [item for item in load_utterances() if item["language"] == LANGUAGE][:limit]
    for item in items:
        speech = speak(espeak, VOICE, item["spoken"])
        lead, tail = (np.zeros(round(s * RATE), np.int16) for s in (LEAD_S, TAIL_S))
        ulaw = encode_checked(np.concatenate([lead, speech, tail]))
        audio = resample(pcmu.decode(ulaw), RATE)
        fixtures.append(Fixture(item["id"], "utterance", item["spoken"], item["written"], audio))
    return fixtures


class Model:
    """One model as the worker runs it on the CPU."""

    def __init__(self, name: str, cache_dir: Path, *, fallback: bool) -> None:
        from faster_whisper import WhisperModel

        self.name = name
        self.fallback = fallback
        resolved = resolve_model(name, cache_dir=cache_dir)
        self.whisper = WhisperModel(
            str(resolved.path),
            device="cpu",
            compute_type="int8",
            cpu_threads=CPU_THREADS,
            num_workers=1,
        )

    def transcribe(self, audio: npt.NDArray[np.float32]) -> tuple[float, str]:
        """(wall seconds, text) of one fixture; the segments are consumed, which is when
        the transcription happens."""
        started = time.perf_counter()
        segments, _ = self.whisper.transcribe(
            audio,
            language=LANGUAGE,
            beam_size=BEAM_SIZE,
            vad_filter=True,
            word_timestamps=True,
            **({} if self.fallback else {"temperature": 0.0}),
        )
        text = " ".join(segment.text.strip() for segment in list(segments))
        return time.perf_counter() - started, text


@dataclass
class Result:
    model: str
    fixture: Fixture
    seconds: float
    text: str

    @property
    def reference_words(self) -> list[str]:
        return wer_words(self.fixture.reference)

    @property
    def edits(self) -> int:
        return edits(self.reference_words, wer_words(self.text))

    @property
    def wer(self) -> float:
        return self.edits / max(1, len(self.reference_words))


def run(models: Sequence[Model], fixtures: Sequence[Fixture]) -> list[Result]:
    for model in models:
        model.transcribe(fixtures[0].audio)  # warm-up, dropped
    results = []
    for index, fixture in enumerate(fixtures):
        order = models if index % 2 == 0 else list(reversed(models))
        for model in order:
            seconds, text = model.transcribe(fixture.audio)
            results.append(Result(model.name, fixture, seconds, text))
    return results


def summarize(model: str, kind: str, results: Sequence[Result]) -> dict[str, Any]:
    chosen = [r for r in results if r.model == model and kind in ("all", r.fixture.kind)]
    audio_s = sum(r.fixture.audio_s for r in chosen)
    seconds = sum(r.seconds for r in chosen)
    reference_words = sum(len(r.reference_words) for r in chosen)
    return {
        "model": model,
        "set": kind,
        "fixtures": len(chosen),
        "audio_s": round(audio_s, 1),
        "reference_words": reference_words,
        "edits": sum(r.edits for r in chosen),
        "wer": round(sum(r.edits for r in chosen) / max(1, reference_words), 3),
        "median_wer": round(statistics.median(r.wer for r in chosen), 3),
        "seconds": round(seconds, 1),
        "rtf": round(seconds / audio_s, 3),
    }


def examples(results: Sequence[Result], baseline: str) -> list[dict[str, Any]]:
    """Reference words ``baseline`` gets wrong and another model gets right."""
    by_fixture: dict[str, dict[str, Result]] = {}
    for result in results:
        by_fixture.setdefault(result.fixture.name, {})[result.model] = result
    found = []
    for name, per_model in by_fixture.items():
        base = per_model[baseline]
        reference = base.reference_words
        base_aligned = align(reference, wer_words(base.text))
        for model, other in per_model.items():
            if model == baseline:
                continue
            other_aligned = align(reference, wer_words(other.text))
            for i, word in enumerate(reference):
                if other_aligned[i] == word and base_aligned[i] != word:
                    found.append(
                        {
                            "fixture": name,
                            "word": word,
                            "baseline_heard": base_aligned[i],
                            "heard_by": model,
                            "reference": other.fixture.reference,
                            "baseline_text": base.text,
                            "other_text": other.text,
                        }
                    )
    return found


def written_floor(fixtures: Sequence[Fixture]) -> float:
    """The micro WER of the utterances' written forms against what was said: what a model
    that hears every word still scores, where spoken and written forms differ in more than
    numbers (``punct``/``arond`` against ``.``/``@``, a spelled "R O" against ``RO66``)."""
    chosen = [f for f in fixtures if f.kind == "utterance"]
    total = sum(edits(wer_words(f.reference), wer_words(f.written)) for f in chosen)
    return round(total / max(1, sum(len(wer_words(f.reference)) for f in chosen)), 3)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--models",
        type=lambda text: text.split(","),
        default=["base"],
        help="packaged model names or CTranslate2 model directories, comma-separated; the "
        "first is the baseline the others' words are compared with",
    )
    parser.add_argument(
        "--limit",
        type=positive,
        default=DEFAULT_LIMIT,
        help="Romanian utterances to use, the first in the set",
    )
    parser.add_argument(
        "--no-fallback",
        dest="fallback",
        action="store_false",
        help="beam search at temperature 0 only, reproducible, where the worker (and by "
        "default this program) falls back to sampling at rising temperatures when a "
        "window's text repeats itself or is improbable",
    )
    args = parser.parse_args(argv)
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        sys.exit("bench/romanian_wer.py: espeak-ng is not installed (apt-get install espeak-ng)")
    started = time.perf_counter()
    fixtures = [*call_fixtures(), *utterance_fixtures(espeak, args.limit)]
    cache_dir = Path(tempfile.gettempdir()) / "callvault-models"
    models = [Model(name, cache_dir, fallback=args.fallback) for name in args.models]
    results = run(models, fixtures)
    rows = [
        summarize(model.name, kind, results)
        for model in models
        for kind in ("call", "utterance", "all")
    ]
    found = examples(results, models[0].name) if len(models) > 1 else []
    utterances = sum(f.kind == "utterance" for f in fixtures)
    available = sum(item["language"] == LANGUAGE for item in load_utterances())
    floor = written_floor(fixtures)
    import ctranslate2
    import faster_whisper

    print(
        f"# Romanian, language forced to {LANGUAGE}: the sample call's 2 tracks and "
        f"{utterances} of the {available} redaction utterances (--limit {args.limit}), eSpeak NG, "
        f"8 kHz µ-law; beam {BEAM_SIZE}, "
        f"{'temperature fallback' if args.fallback else 'temperature 0'}, int8, CPU, "
        f"{CPU_THREADS} thread; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, faster-whisper {faster_whisper.__version__}, "
        f"CTranslate2 {ctranslate2.__version__}; {time.perf_counter() - started:.0f} s in all"
    )
    print(
        f"# The utterances' written forms score WER {floor} against what was said: the "
        "floor of this metric on them (e-mail addresses, spelled letters)"
    )
    print_table(
        ["model", "set", "fixtures", "audio s", "ref words", "WER (micro)", "median WER",
         "RTF"],
        [[r["model"], r["set"], r["fixtures"], r["audio_s"], r["reference_words"], r["wer"],
          r["median_wer"], r["rtf"]] for r in rows],
    )  # fmt: skip
    if found:
        print()
        print_table(
            ["fixture", "word said", f"{models[0].name} heard", "heard right by"],
            [
                [e["fixture"], e["word"], e["baseline_heard"] or "(nothing)", e["heard_by"]]
                for e in found[:EXAMPLES]
            ],
        )
    report = {
        "bench": "romanian_wer",
        "language": LANGUAGE,
        "models": [m.name for m in models],
        "limit": args.limit,
        "utterances": utterances,
        "beam_size": BEAM_SIZE,
        "cpu_threads": CPU_THREADS,
        "temperature_fallback": args.fallback,
        "written_floor_wer": floor,
        "rows": rows,
        "better_words": len(found),
        "examples": found[:EXAMPLES],
        "results": [
            {"fixture": r.fixture.name, "model": r.model, "wer": round(r.wer, 3),
             "seconds": round(r.seconds, 2), "text": r.text}
            for r in results
        ],
    }  # fmt: skip
    print(json.dumps(report, ensure_ascii=False))
    return report


if __name__ == "__main__":
    main()

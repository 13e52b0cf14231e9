"""Regenerate the sample calls the AI pipeline's tests use (``tests/data/calls/``).

Transcription, diarization-by-track, sentiment and the summary can only be tested against
speech whose words are known. These calls are that speech, made by us with eSpeak NG so we
may ship them: each is a scripted two-speaker dialogue whose turns are synthesized one by
one, trimmed, resampled to 8 kHz and laid out on the call's timeline, then stored the way
callvault stores a call, as one raw G.711 µ-law track per direction (caller = ``inbound``,
agent = ``outbound``), plus a JSON file that says exactly who says what, when.

The synthesis steps (``synthesize``, ``trim``, ``resample``) are those of the demo call's
generator, ``bench/make_sample_call.py``, imported rather than copied so the two stay the
same. What this program adds: several calls, one interruption (an agent turn that starts
while the caller is still talking), raw µ-law tracks instead of a stereo WAV, and the
machine-readable ground truth.

Every time in the JSON is a whole millisecond, so the 3-decimal figures are exact sample
positions (8 samples a millisecond): starts are rounded to 10 ms, and each turn's audio is
cut to a whole millisecond (dropping at most 7 samples, < 1 ms, of its fading tail).

eSpeak NG is needed only here (``apt-get install espeak-ng``); the generated files are
checked in and the tests read them without it. Output is deterministic for a given eSpeak
NG version (recorded in each JSON file).

    python bench/make_test_calls.py [--out-dir tests/data/calls]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess  # noqa: S404 - runs espeak-ng with a fixed argument list, no shell
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

# The repository root goes first, as in the other bench programs: bench/ (on sys.path when
# this file is run) holds crypto.py, which would otherwise shadow the crypto package.
# make_sample_call, the demo generator next to this file, still imports from bench/.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from make_sample_call import SPEED_WPM, resample, synthesize, trim  # noqa: E402
from report import print_table  # noqa: E402

from storage.media.codecs import codec  # noqa: E402

RATE = 8000
"""The telephone sample rate the calls are stored at."""
MS = RATE // 1000
"""Samples per millisecond: turn lengths are cut to a multiple of this."""
FRAME = RATE // 50
"""A 20 ms frame, as a PBX sends them: every call's length is a whole number of these."""
LEAD_S = 0.25
"""Silence before the first turn."""
GAP_S = 0.3
"""Silence between one speaker stopping and the other starting (a natural turn gap)."""
TAIL_S = 0.25
"""Silence after the last turn (before rounding up to a whole frame)."""
PEAK = 0.6
"""Each turn is scaled to this fraction of full scale: both voices equally loud, no clipping
in µ-law (whose clip is 32635)."""
ULAW_SILENCE = 0xFF
"""µ-law's positive zero, what int16 0 encodes to: the byte of a silent track."""

TRACK_OF = {"caller": "inbound", "agent": "outbound"}


@dataclass(frozen=True, slots=True)
class Line:
    """One scripted turn.

    ``interrupts_s`` > 0 makes the turn start that many seconds before the previous turn
    ends (both talk at once); 0 means it starts ``GAP_S`` after everyone has stopped."""

    speaker: str
    text: str
    interrupts_s: float = 0.0


@dataclass(frozen=True, slots=True)
class CallScript:
    """A call to generate: its name, language, a voice per speaker and the dialogue."""

    name: str
    language: str
    voices: dict[str, str]
    lines: tuple[Line, ...]


ENGLISH_VOICES = {"caller": "en-us+m3", "agent": "en-gb+f2"}
"""An American male caller and a British female agent, easy to tell apart."""

CALLS: tuple[CallScript, ...] = (
    CallScript(
        "support",
        "en",
        ENGLISH_VOICES,
        (
            Line("agent", "Thank you for calling. My name is Sarah. How can I help you today?"),
            Line("caller", "Hi. My internet has been down since this morning."),
            Line("agent", "I am sorry to hear that. Could you read me your account number?"),
            Line("caller", "Yes. It is four seven one, two nine, eight three five."),
            Line("agent", "Thank you. Is the light on your router green or red?"),
            Line("caller", "The light is blinking red."),
            Line("agent", "Let us reset the router. Unplug it, wait ten seconds, and plug it in."),
            Line("caller", "Okay, I did that. The light is green and the internet works again."),
            Line("agent", "Great. Is there anything else I can help you with?"),
            Line("caller", "No, that is all. Thanks a lot for your help."),
        ),
    ),
    CallScript(
        "cancellation",
        "en",
        ENGLISH_VOICES,
        (
            Line("agent", "Customer care, this is Emma. How may I help?"),
            Line("caller", "Hello Emma, thank you. I would like to cancel, please."),
            Line("agent", "I am sorry to hear that. May I ask why?"),
            Line(
                "caller",
                "I am moving abroad next month, and I was hoping for a refund of the unused weeks.",
            ),
            Line(
                "agent",
                "Before you go, we could pause your plan for three months for free.",
                interrupts_s=0.8,
            ),
            Line("caller", "That is kind of you, but I would still like to terminate it."),
            Line("agent", "I can also offer you half price for six months."),
            Line(
                "caller",
                "Thank you, you've been very helpful, but I'd like to cancel my subscription.",
            ),
            Line("agent", "Very well. It is cancelled, and your refund will arrive in five days."),
            Line("caller", "Wonderful, thank you so much. Have a lovely day."),
        ),
    ),
    CallScript(
        "romanian",
        "ro",
        {"caller": "ro+m3", "agent": "ro+f2"},
        (
            Line("agent", "Bună ziua, ați sunat la serviciul clienți. Cu ce vă pot ajuta?"),
            Line("caller", "Bună ziua. Internetul nu funcționează de azi dimineață."),
            Line("agent", "Îmi pare rău. Îmi puteți spune numărul contractului?"),
            Line("caller", "Da, este patru, șapte, unu, nouă, opt."),
            Line("agent", "Mulțumesc. Vă rog să reporniți routerul și să așteptați un minut."),
            Line("caller", "Gata, acum merge și lumina e verde. Vă mulțumesc frumos!"),
            Line("agent", "Cu plăcere. Să aveți o zi bună până la capăt!"),
        ),
    ),
)
"""The calls, in the order they are generated."""


@dataclass(frozen=True, slots=True)
class PlacedTurn:
    """A synthesized turn on the timeline: its track, first sample, text and audio."""

    track: str
    start: int
    text: str
    audio: npt.NDArray[np.int16]

    @property
    def end(self) -> int:
        """One past the last sample: where eSpeak's trimmed speech ends."""
        return self.start + len(self.audio)


def speak(espeak: str, voice: str, text: str, *, speed: int = SPEED_WPM) -> npt.NDArray[np.int16]:
    """One turn at ``RATE``: synthesized, trimmed, resampled, scaled to ``PEAK``, and cut to a
    whole millisecond so that its end is an exact 3-decimal time."""
    rate, speech = synthesize(espeak, voice, text, speed=speed)
    samples = resample(trim(speech), rate, RATE)
    samples = samples[: len(samples) // MS * MS]
    scaled = samples / np.abs(samples).max() * PEAK * 32767
    return np.round(scaled).astype(np.int16)


def lay_out(espeak: str, call: CallScript) -> list[PlacedTurn]:
    """Synthesize every line and place it; ordinary turns start on a 10 ms grid."""
    turns: list[PlacedTurn] = []
    free_from = round(LEAD_S * RATE)  # first sample after everyone has stopped, plus a gap
    for line in call.lines:
        audio = speak(espeak, call.voices[line.speaker], line.text)
        if line.interrupts_s:
            previous = turns[-1]
            start = previous.end - round(line.interrupts_s * RATE)
            if start <= previous.start:
                raise SystemExit(f"{call.name}: the interrupted turn is shorter than the overlap")
        else:
            start = -(-free_from // (10 * MS)) * (10 * MS)
        turn = PlacedTurn(TRACK_OF[line.speaker], start, line.text, audio)
        turns.append(turn)
        free_from = max(t.end for t in turns) + round(GAP_S * RATE)
    return turns


def render(turns: Sequence[PlacedTurn]) -> dict[str, npt.NDArray[np.int16]]:
    """Each track's whole timeline as int16, silent outside its own turns; both the same
    length, a whole number of 20 ms frames."""
    end = max(t.end for t in turns) + round(TAIL_S * RATE)
    end = -(-end // FRAME) * FRAME
    tracks = {name: np.zeros(end, np.int16) for name in ("inbound", "outbound")}
    for turn in turns:
        tracks[turn.track][turn.start : turn.end] = turn.audio
    return tracks


def reference_ulaw_decode(data: bytes) -> npt.NDArray[np.int32]:
    """G.711 ``ulaw2linear`` written out independently of ``storage.media``, to check the
    product's encoder rather than trusting it with its own decoder."""
    u = ~np.frombuffer(data, np.uint8).astype(np.int32) & 0xFF
    magnitude = ((((u & 0x0F) << 3) + 0x84) << ((u >> 4) & 0x07)) - 0x84
    return np.where(u & 0x80, -magnitude, magnitude)


def encode_checked(samples: npt.NDArray[np.int16]) -> bytes:
    """µ-law bytes of ``samples``, verified by decoding them back.

    µ-law's decoder returns the middle of each quantization interval, whose width is about
    1/16 of the biased magnitude (|x| + 132), so the error must stay within half of that."""
    data = codec("pcmu").encode(samples)
    decoded = reference_ulaw_decode(data)
    x = samples.astype(np.int32)
    if len(data) != len(samples) or np.any(np.abs(decoded - x) > (np.abs(x) + 132) / 32 + 1):
        raise SystemExit("µ-law round trip is off: the encoder does not match G.711")
    if np.any(np.frombuffer(data, np.uint8)[x == 0] != ULAW_SILENCE):
        raise SystemExit("silence did not encode to 0xFF")
    return data


def seconds(samples: int) -> float:
    return round(samples / RATE, 3)


def overlap(turns: Sequence[PlacedTurn]) -> int:
    """Samples during which an inbound and an outbound turn both run."""
    total = 0
    for a in turns:
        for b in turns:
            if a.track == "inbound" and b.track == "outbound":
                total += max(0, min(a.end, b.end) - max(a.start, b.start))
    return total


def describe(
    call: CallScript, turns: Sequence[PlacedTurn], length: int, version: str
) -> dict[str, Any]:
    """The call's ground truth, as ``tests/data/calls/<name>.json`` holds it."""
    tracks = ("inbound", "outbound")
    return {
        "name": call.name,
        "language": call.language,
        "sample_rate": RATE,
        "duration_s": seconds(length),
        "voices": {TRACK_OF[speaker]: voice for speaker, voice in call.voices.items()},
        "espeak_ng": version,
        "turns": [
            {
                "track": t.track,
                "start_s": seconds(t.start),
                "end_s": seconds(t.end),
                "text": t.text,
            }
            for t in turns
        ],
        "text": {k: " ".join(t.text for t in turns if t.track == k) for k in tracks},
        "talk_s": {k: seconds(sum(len(t.audio) for t in turns if t.track == k)) for k in tracks},
        "overlap_s": seconds(overlap(turns)),
    }


def readme(version: str, truths: Sequence[dict[str, Any]]) -> str:
    lines = [
        "# Sample calls for the AI pipeline's tests",
        "",
        "Generated by `bench/make_test_calls.py`; edit that program, not these files.",
        "Regenerate with `.venv/bin/python bench/make_test_calls.py` (needs `espeak-ng`).",
        "",
        "These calls are our own: every sound in them was synthesized by eSpeak NG from the",
        "scripted text in the generator. No third-party or recorded audio is included.",
        "",
        "Per call `<name>`:",
        "",
        "* `<name>.inbound.ulaw`, `<name>.outbound.ulaw`: raw G.711 µ-law bytes (no header),",
        f"  {RATE} Hz mono, the call's whole timeline per track (caller = inbound, agent =",
        "  outbound); silence is the µ-law byte 0xFF. Both files have the same length, a whole",
        "  number of 20 ms frames.",
        "* `<name>.json`: the ground truth: language, voices, the eSpeak NG version, every",
        "  turn's track, start, end (where the trimmed speech ends) and text, each track's",
        "  text and talk time, and the time both sides talk at once (`overlap_s`). Times are",
        "  whole milliseconds.",
        "",
        "| call | language | caller (inbound) | agent (outbound) | duration s | turns "
        "| talk s in / out | overlap s | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    notes = {
        "support": "internet down, router reset, account number read as words; no overlap",
        "cancellation": "polite cancellation with a refund; one 0.8 s interruption by the agent",
        "romanian": "support dialogue with diacritics; no overlap",
    }
    for call, truth in zip(CALLS, truths, strict=True):
        lines.append(
            f"| `{call.name}` | {call.language} | {call.voices['caller']} | "
            f"{call.voices['agent']} | {truth['duration_s']:.2f} | {len(truth['turns'])} | "
            f"{truth['talk_s']['inbound']:.3f} / {truth['talk_s']['outbound']:.3f} | "
            f"{truth['overlap_s']:.3f} | {notes[call.name]} |"
        )
    lines += [
        "",
        f"How: {version}. Each turn is made with",
        "",
        f"    espeak-ng -v <voice> -s {SPEED_WPM} --stdout '<text>'    # 22050 Hz mono WAV",
        "",
        "then trimmed of eSpeak's leading and trailing silence (below 1 % of the turn's peak),",
        f"resampled to {RATE} Hz with a polyphase Kaiser-windowed sinc (192 taps, beta 8.6,",
        "cut-off 3.6 kHz; `resample()` in `bench/make_sample_call.py`), cut to a whole",
        "millisecond, scaled to 60 % of full scale and encoded with callvault's own G.711",
        "encoder (`storage.media.codecs.codec('pcmu')`, checked against an independent decoder).",
        f"The first turn starts {LEAD_S} s in; each later turn starts {GAP_S} s after",
        "everyone has stopped, rounded up to 10 ms, except the interruption, which starts",
        "0.8 s before the turn it interrupts ends.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    default_out = Path(__file__).resolve().parent.parent / "tests" / "data" / "calls"
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=default_out, help="where to write")
    args = parser.parse_args(argv)
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        print("espeak-ng is not installed (apt-get install espeak-ng)", file=sys.stderr)
        return 1
    full_version = subprocess.run(  # noqa: S603 - fixed arguments
        [espeak, "--version"], check=True, capture_output=True, text=True
    ).stdout
    # "eSpeak NG text-to-speech: 1.51  Data at: /usr/lib/...": the path is this machine's.
    version = full_version.split("Data at")[0].strip()
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    summary = []
    truths = []
    table: list[list[object]] = []
    for call in CALLS:
        turns = lay_out(espeak, call)
        tracks = render(turns)
        length = len(tracks["inbound"])
        for name, samples in tracks.items():
            (out / f"{call.name}.{name}.ulaw").write_bytes(encode_checked(samples))
        truth = describe(call, turns, length, version)
        truths.append(truth)
        (out / f"{call.name}.json").write_text(
            json.dumps(truth, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        size = sum((out / f"{call.name}.{n}.ulaw").stat().st_size for n in tracks)
        table.append(
            [
                call.name,
                f"{truth['duration_s']:.2f}",
                len(turns),
                f"{truth['talk_s']['inbound']:.3f}",
                f"{truth['talk_s']['outbound']:.3f}",
                f"{truth['overlap_s']:.3f}",
                size,
            ]
        )
        summary.append(
            {
                "name": call.name,
                "duration_s": truth["duration_s"],
                "turns": len(turns),
                "talk_s": truth["talk_s"],
                "overlap_s": truth["overlap_s"],
                "bytes": size,
            }
        )
    (out / "README.md").write_text(readme(version, truths), encoding="utf-8")
    head = ["call", "duration s", "turns", "inbound talk s", "outbound talk s", "overlap s"]
    print_table([*head, "bytes"], table)
    print(json.dumps({"bench": "make_test_calls", "espeak_ng": version, "calls": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

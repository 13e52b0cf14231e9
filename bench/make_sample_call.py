"""Regenerate the demo's sample call (``gateway/demo_data/sample_call.wav`` and ``.txt``).

``callvault demo`` needs a short call with real speech on both sides, so that transcription,
sentiment and the summary have something to work on, and it must be ours to ship. This
program makes one with eSpeak NG: each turn of a scripted support call is synthesized in
the speaker's voice, trimmed of eSpeak's own leading and trailing silence, resampled from
eSpeak's 22050 Hz to the telephone rate (8 kHz) with a Kaiser-windowed sinc, and laid out on
a timeline: the caller (the call's ``inbound`` track) on the left channel, the agent
(``outbound``) on the right, each channel silent while the other speaks.

eSpeak NG is needed only here (``apt-get install espeak-ng``), not at run time or in CI; the
generated files are checked in. The script file records the turns and how they were made.

    python bench/make_sample_call.py [--out-dir gateway/demo_data]
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess  # noqa: S404 - runs espeak-ng with a fixed argument list, no shell
import sys
import wave
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
import numpy.typing as npt

RATE = 8000
"""The telephone sample rate the call is stored at."""
VOICES = {"caller": "en-us+m3", "agent": "en-gb+f2"}
"""eSpeak NG voice+variant per speaker: an American male and a British female voice, so the
two sides are easy to tell apart by ear and by a diarizer."""
TRACKS = {"caller": "inbound", "agent": "outbound"}
CHANNELS = {"caller": "left", "agent": "right"}
SPEED_WPM = 185
"""Words a minute: a little brisker than eSpeak's default 175, as people talk on the phone."""
LEAD_S = 0.25
"""Silence before the first turn."""
GAP_S = 0.3
"""Silence between one speaker stopping and the other starting (a natural turn gap)."""
TAIL_S = 0.25
"""Silence after the last turn."""
PEAK = 0.6
"""Each turn is scaled to this fraction of full scale, so both voices are equally loud and
µ-law never clips."""
SCRIPT: tuple[tuple[str, str], ...] = (
    ("caller", "Hi, my internet has been down all morning."),
    ("agent", "Sorry about that. Let me check your line."),
    ("caller", "The router light is blinking red."),
    ("agent", "I reset it. Please try again now."),
)
"""The dialogue: (speaker, text), in order."""
SILENCE_THRESHOLD = 0.01
"""A sample is speech if it is above this fraction of the turn's peak (for trimming)."""


@dataclass(frozen=True, slots=True)
class Turn:
    """One placed turn: who, when (in samples at RATE), what, and its audio."""

    speaker: str
    start: int
    text: str
    audio: npt.NDArray[np.int16]


def synthesize(
    espeak: str, voice: str, text: str, *, speed: int = SPEED_WPM
) -> tuple[int, npt.NDArray[np.float64]]:
    """eSpeak NG's mono 16-bit WAV of ``text`` (at ``speed`` words a minute) as (rate,
    samples in [-1, 1])."""
    result = subprocess.run(  # noqa: S603 - fixed arguments; the text is ours
        [espeak, "-v", voice, "-s", str(speed), "--stdout", text],
        check=True,
        capture_output=True,
    )
    with wave.open(io.BytesIO(result.stdout)) as wav:
        if wav.getnchannels() != 1 or wav.getsampwidth() != 2:
            raise SystemExit(f"espeak-ng wrote an unexpected WAV format for voice {voice}")
        rate = wav.getframerate()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), "<i2")
    return rate, pcm.astype(np.float64) / 32768.0


def trim(samples: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The samples without leading and trailing near-silence (eSpeak pads both ends)."""
    loud = np.flatnonzero(np.abs(samples) > SILENCE_THRESHOLD * np.abs(samples).max())
    return samples[loud[0] : loud[-1] + 1]


def resample(
    samples: npt.NDArray[np.float64],
    rate_in: int,
    rate_out: int,
    *,
    half_taps: int = 96,
    beta: float = 8.6,
) -> npt.NDArray[np.float64]:
    """Band-limited resampling by a rational factor (polyphase, Kaiser-windowed sinc).

    Output sample ``n`` sits at input position ``p = n * rate_in / rate_out``; it is the sum
    of the ``2 * half_taps`` nearest input samples weighted by a low-pass sinc centred on
    ``p``. The rational ratio (160/441 for 22050 -> 8000) means only ``rate_out / gcd``
    distinct fractional offsets occur, so one filter per offset (phase) is computed once.
    The cut-off is 90 % of the lower Nyquist frequency; with 192 taps and beta 8.6
    (~85 dB stop band) the transition band is ~600 Hz at 22050 Hz, so almost nothing above
    4 kHz folds back into the telephone band.
    """
    common = gcd(rate_in, rate_out)
    up, down = rate_out // common, rate_in // common
    cutoff = 0.9 * min(rate_in, rate_out) / 2 / rate_in  # cycles per input sample
    offsets = np.arange(-half_taps + 1, half_taps + 1)  # input samples around floor(p)
    phases = np.arange(up) / up  # fractional part of p
    distance = offsets[None, :] - phases[:, None]  # (phase, tap): input index - p
    window = np.i0(beta * np.sqrt(np.clip(1 - (distance / half_taps) ** 2, 0, None)))
    table = 2 * cutoff * np.sinc(2 * cutoff * distance) * window / np.i0(beta)
    table /= table.sum(axis=1, keepdims=True)  # unity gain at DC for every phase

    count = len(samples) * up // down
    n = np.arange(count)
    base, phase = (n * down) // up, (n * down) % up
    padded = np.concatenate([np.zeros(half_taps), samples, np.zeros(half_taps + 1)])
    index = base[:, None] + offsets[None, :] + half_taps
    return np.asarray((padded[index] * table[phase]).sum(axis=1))


def to_int16(samples: npt.NDArray[np.float64]) -> npt.NDArray[np.int16]:
    scaled = samples / np.abs(samples).max() * PEAK * 32767
    return np.round(scaled).astype(np.int16)


def lay_out(espeak: str) -> list[Turn]:
    """Synthesize every turn and place it on the call's timeline.

    Starts are rounded to 10 ms, so that the script's seconds are exact."""
    turns = []
    cursor = LEAD_S
    for speaker, text in SCRIPT:
        rate, speech = synthesize(espeak, VOICES[speaker], text)
        audio = to_int16(resample(trim(speech), rate, RATE))
        start = round(round(cursor, 2) * RATE)
        turns.append(Turn(speaker, start, text, audio))
        cursor = (start + len(audio)) / RATE + GAP_S
    return turns


def mix(turns: list[Turn]) -> npt.NDArray[np.int16]:
    """The stereo call (frames, 2): caller left, agent right. The length is a whole number
    of 20 ms frames, as a PBX sends them."""
    frame = RATE // 50
    end = max(t.start + len(t.audio) for t in turns) + round(TAIL_S * RATE)
    end = -(-end // frame) * frame
    stereo = np.zeros((end, 2), np.int16)
    for turn in turns:
        channel = 0 if CHANNELS[turn.speaker] == "left" else 1
        stereo[turn.start : turn.start + len(turn.audio), channel] = turn.audio
    return stereo


def write_wav(path: Path, stereo: npt.NDArray[np.int16]) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(stereo.astype("<i2").tobytes())


def script_text(turns: list[Turn], stereo: npt.NDArray[np.int16], version: str) -> str:
    lines = [
        "# callvault demo: the sample call (sample_call.wav). Generated by",
        "# bench/make_sample_call.py; edit that program, not this file.",
        "#",
        f"# {len(stereo) / RATE:.2f} s, stereo, {RATE} Hz, 16-bit PCM. Left channel = caller",
        "# (the call's inbound track), right channel = agent (outbound); each channel is",
        "# silent while the other speaks.",
        "#",
        f"# Voices ({version.split('Data at')[0].strip()}):",
    ]
    for speaker, voice in VOICES.items():
        lines.append(f"#   {speaker}: {voice}, {SPEED_WPM} words a minute")
    lines += [
        "# Each turn was made with",
        f"#   espeak-ng -v <voice> -s {SPEED_WPM} --stdout '<text>'   (22050 Hz mono WAV)",
        "# then trimmed of eSpeak's leading/trailing silence (below 1 % of the turn's peak),",
        f"# resampled to {RATE} Hz with a polyphase Kaiser-windowed sinc (192 taps, beta 8.6,",
        "# cut-off 3.6 kHz; numpy, see resample() in the generator), scaled to 60 % of full",
        f"# scale, and placed {LEAD_S} s in, {GAP_S} s after the previous turn ends (starts",
        "# rounded to 10 ms). Regenerate with: python bench/make_sample_call.py",
        "#",
        "# start_s  speaker  text",
    ]
    for turn in turns:
        lines.append(f"{turn.start / RATE:8.2f}  {turn.speaker:<7}  {turn.text}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    default_out = Path(__file__).resolve().parent.parent / "gateway" / "demo_data"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=default_out, help="where to write")
    args = parser.parse_args(argv)
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        print("espeak-ng is not installed (apt-get install espeak-ng)", file=sys.stderr)
        return 1
    version = subprocess.run(  # noqa: S603 - fixed arguments
        [espeak, "--version"], check=True, capture_output=True, text=True
    ).stdout
    turns = lay_out(espeak)
    stereo = mix(turns)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    wav_path, text_path = args.out_dir / "sample_call.wav", args.out_dir / "sample_call.txt"
    write_wav(wav_path, stereo)
    text_path.write_text(script_text(turns, stereo, version))
    print(f"{wav_path}: {len(stereo) / RATE:.2f} s, {wav_path.stat().st_size} bytes")
    for turn in turns:
        print(f"  {turn.start / RATE:6.2f} s  {turn.speaker:<6} {turn.text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

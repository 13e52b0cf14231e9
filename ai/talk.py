"""Talk/listen metrics of a call, from the VAD's speech intervals of its two tracks.

Each track is recorded separately, so who spoke when is known without diarization; the
figures come from the VAD intervals and not from Whisper's segment timestamps, which are
coarse (a segment often spans a pause or the other party's reply).

Definitions (every time in seconds; a track's intervals are first clipped to
``[0, duration_s]`` and intervals that touch or overlap are joined):

* ``talk_s``: the total length of the track's speech intervals.
* ``talk_share``: ``talk_s`` over both tracks' ``talk_s`` summed; 0 for both when nobody
  talked.
* ``wpm``: words in the track's segments (whitespace-separated tokens that contain a letter or
  digit) per minute of ``talk_s``; 0 when ``talk_s`` is 0.
* monologue: a run of one track's speech intervals joined across pauses shorter than
  ``MONOLOGUE_GAP_S`` (1.5 s) in which the other track does not talk. A run ends where the
  other track starts talking, even in the middle of one of this track's intervals: the rest
  of that interval starts a new run. Any start of the other track counts, a short
  backchannel ("mhm") included, because it shows the other party taking the floor.
  A stretch of speech wholly covered by the other track's speech is no run of its own: the
  end of a sentence finished over the other's start, or a "mhm" under the other's talk, is
  not a turn. A run's length includes the pauses it was joined across.
* ``longest_monologue_s``: the longest run; ``turns``: how many runs the track has.
* ``talk_to_listen``: the agent's (outbound) ``talk_s`` over the caller's (inbound); ``None``
  when the caller did not talk.
* ``silence_s``: time in ``[0, duration_s]`` in which neither track talks.
* ``overlap_s``: time in which both tracks talk.
* interruption: a track starts a speech interval at ``t`` while the other track is talking
  (the other's interval began before ``t`` and ends after it), the other track goes on
  talking for at least ``INTERRUPTED_MIN_S`` (0.3 s) after ``t``, *and* the interrupting
  interval itself lasts at least ``INTERRUPTION_MIN_S`` (0.5 s). The last condition keeps
  backchannels ("mhm", "yes") out: they are short, and the speaker being "interrupted" does
  not stop for them. The first is measured on VAD intervals, whose edges Silero places
  about 0.2 s inside the speech on each side (measured on the shipped sample calls: a
  true 0.8 s cut-in measures 0.45 s of overlap), so 0.3 s measured is about 0.7 s of real
  talking over, while the ordinary overlap of a turn hand-over (a few tenths) measures
  almost nothing. Two tracks starting at the same instant interrupt nobody.
  ``interruptions_by_track[track]`` counts the interruptions *made by* that track.

Figures are rounded to 2 decimals, ``wpm`` to an integer.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from typing import Any

from ai.transcript import TRACKS, Interval, Segment, Transcript

MONOLOGUE_GAP_S = 1.5
"""Pauses shorter than this, with the other track silent, do not end a monologue."""

INTERRUPTION_MIN_S = 0.5
"""The interrupting speech must last this long (shorter is a backchannel)."""
INTERRUPTED_MIN_S = 0.3
"""The interrupted speech must go on this long past the interrupter's start (VAD time)."""

Span = tuple[float, float]


def talk_listen(transcript: Transcript) -> dict[str, Any]:
    """The talk/listen document of ``transcript`` (see the module docstring)."""
    duration = max(0.0, transcript.duration_s)
    first, second = TRACKS
    spans = {track: _normalise(transcript.speech.get(track, ()), duration) for track in TRACKS}
    talk = {track: _total(spans[track]) for track in TRACKS}
    all_talk = talk[first] + talk[second]
    overlap = _total(_intersect(spans[first], spans[second]))
    union = all_talk - overlap

    interruptions = {track: len(made) for track, made in interruptions_made(transcript).items()}
    word_counts = _word_counts(transcript.segments)
    tracks: dict[str, dict[str, Any]] = {}
    for track, other in ((first, second), (second, first)):
        runs = _monologues(spans[track], spans[other])
        tracks[track] = {
            "talk_s": round(talk[track], 2),
            "talk_share": round(talk[track] / all_talk, 2) if all_talk > 0 else 0.0,
            "wpm": round(word_counts.get(track, 0) / (talk[track] / 60)) if talk[track] else 0,
            "longest_monologue_s": round(max((end - start for start, end in runs), default=0.0), 2),
            "turns": len(runs),
        }
    return {
        "tracks": tracks,
        "talk_to_listen": round(talk["outbound"] / talk["inbound"], 2) if talk["inbound"] else None,
        "silence_s": round(max(0.0, duration - union), 2),
        "overlap_s": round(overlap, 2),
        "interruptions": interruptions[first] + interruptions[second],
        "interruptions_by_track": interruptions,
    }


def interruptions_made(transcript: Transcript) -> dict[str, list[Span]]:
    """Each track's interruptions of the other (see the module docstring), as the
    interrupting speech intervals in time order; ``talk_listen`` counts them."""
    duration = max(0.0, transcript.duration_s)
    first, second = TRACKS
    spans = {track: _normalise(transcript.speech.get(track, ()), duration) for track in TRACKS}
    return {
        first: _interruptions(spans[first], spans[second]),
        second: _interruptions(spans[second], spans[first]),
    }


def silences(transcript: Transcript) -> list[Span]:
    """The stretches of ``[0, duration_s]`` in which neither track talks, in time order
    (``silence_s`` is their total)."""
    duration = max(0.0, transcript.duration_s)
    # Normalising both tracks' intervals together joins them into the time anyone talks.
    talking = _normalise(
        [i for track in TRACKS for i in transcript.speech.get(track, ())], duration
    )
    gaps: list[Span] = []
    quiet_from = 0.0
    for start, end in [*talking, (duration, duration)]:
        if start > quiet_from:
            gaps.append((quiet_from, start))
        quiet_from = end
    return gaps


def _normalise(intervals: Iterable[Interval], duration: float) -> list[Span]:
    """The intervals clipped to ``[0, duration]``, sorted, empty ones dropped, and those
    that overlap or touch joined. The VAD promises sorted, disjoint intervals; this costs
    little and keeps every figure below well defined if it ever does not."""
    clipped = sorted(
        (max(0.0, interval.start), min(duration, interval.end))
        for interval in intervals
        if min(duration, interval.end) > max(0.0, interval.start)
    )
    joined: list[Span] = []
    for start, end in clipped:
        if joined and start <= joined[-1][1]:
            joined[-1] = (joined[-1][0], max(joined[-1][1], end))
        else:
            joined.append((start, end))
    return joined


def _total(spans: Iterable[Span]) -> float:
    return sum(end - start for start, end in spans)


def _intersect(a: Sequence[Span], b: Sequence[Span]) -> list[Span]:
    """Where both disjoint, sorted span lists cover time (a linear merge)."""
    out: list[Span] = []
    i = j = 0
    while i < len(a) and j < len(b):
        start = max(a[i][0], b[j][0])
        end = min(a[i][1], b[j][1])
        if end > start:
            out.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def _talks_during(spans: Sequence[Span], starts: Sequence[float], start: float, end: float) -> bool:
    """Whether ``spans`` (disjoint, sorted; ``starts`` their starts) has speech in the pause
    ``(start, end]``, including a span that begins exactly when the pause ends."""
    index = bisect_right(starts, end) - 1
    # Disjoint sorted spans have sorted ends too, so the last span that starts by ``end``
    # is the one that reaches furthest.
    return index >= 0 and spans[index][1] > start


def _monologues(own: Sequence[Span], other: Sequence[Span]) -> list[Span]:
    """The track's runs, as defined in the module docstring."""
    other_starts = [start for start, _ in other]
    runs: list[Span] = []
    for start, end in own:
        # The other track starting strictly inside this interval cuts it.
        cuts = other_starts[bisect_right(other_starts, start) : bisect_left(other_starts, end)]
        points = [start, *cuts, end]
        for index in range(len(points) - 1):
            piece = (points[index], points[index + 1])
            if _covered(other, other_starts, piece):
                continue
            if (
                index == 0
                and runs
                and piece[0] - runs[-1][1] < MONOLOGUE_GAP_S
                and not _talks_during(other, other_starts, runs[-1][1], piece[0])
            ):
                runs[-1] = (runs[-1][0], piece[1])
            else:
                runs.append(piece)
    return runs


def _covered(spans: Sequence[Span], starts: Sequence[float], piece: Span) -> bool:
    """Whether one of ``spans`` (joined, sorted) covers all of ``piece``."""
    index = bisect_right(starts, piece[0]) - 1
    return index >= 0 and spans[index][1] >= piece[1]


def _interruptions(interrupter: Sequence[Span], speaker: Sequence[Span]) -> list[Span]:
    """The intervals of ``interrupter`` that interrupt ``speaker`` (module docstring)."""
    speaker_starts = [start for start, _ in speaker]
    found: list[Span] = []
    for start, end in interrupter:
        if end - start < INTERRUPTION_MIN_S:
            continue
        index = bisect_left(speaker_starts, start) - 1  # the last span that began before
        if index >= 0 and speaker[index][1] - start >= INTERRUPTED_MIN_S - 1e-9:
            found.append((start, end))
    return found


def _word_counts(segments: Iterable[Segment]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for segment in segments:
        spoken = sum(1 for token in segment.text.split() if any(c.isalnum() for c in token))
        counts[segment.track] = counts.get(segment.track, 0) + spoken
    return counts

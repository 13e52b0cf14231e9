"""Coverage-guided fuzzing (atheris) of every parser that reads bytes a peer or a client
chose: the ingest parsers (Twilio, fork, AudioSocket, RTP, SRTP), the object format's
header and segments, a track's media records, and the API's cursor, time and duration
parsers.

Each harness module holds ``fuzz_one(data)``: it feeds ``data`` to its parser and asserts
the parser's contract, namely that only the project's documented exceptions escape (never
``IndexError``, ``KeyError``, ``UnicodeError``, ``struct.error``, ``OverflowError``...) and
that what comes out respects its bounds. Any other exception is a crash. The harnesses read
their input with ``tests.fuzz.harness.Reader`` rather than atheris's FuzzedDataProvider, so
that they import without atheris (``tests/fuzz/test_fuzz.py`` replays the seed corpora and
the regression inputs in-process) and so that seed inputs are easy to write.

Run one target: ``python -m tests.fuzz TARGET [CORPUS_DIR...] [libFuzzer flags]``; all of
them for a while: ``make fuzz`` (``python -m tests.fuzz.run``).
"""

"""The fuzz targets: the harness module of each (``tests.fuzz.<target>``) and what it
fuzzes. Imports nothing of the project, so ``tests.fuzz.__main__`` can import it before
instrumenting."""

TARGETS = {
    "twilio": "gateway/ingest/twilio.py: Twilio Media Streams messages",
    "fork": "gateway/ingest/fork.py: mod_audio_fork / jambonz messages",
    "audiosocket": "gateway/ingest/audiosocket.py: the AudioSocket TCP stream",
    "rtp": "gateway/ingest/rtp.py: RTP datagrams, the receiver and its timeline placement",
    "srtp": "gateway/ingest/rtp.py: SRTP datagrams (libsrtp unprotect, fixed keys)",
    "objectformat": "crypto/objectformat.py: header parse, segment open, seal/open/resume",
    "tracks": "storage/media/tracks.py: a track's media records",
    "cursors": "gateway/api, storage/instructions: cursor, time, integer, duration, number",
}
"""Target name -> what it fuzzes (the file and the parser)."""

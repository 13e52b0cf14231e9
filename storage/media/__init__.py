"""Call audio as callvault stores it: the track record format and the codecs, shared by ingest
(``gateway``), the AI worker (``ai``) and export and retention (``storage``).

* ``tracks``: a sealed track's plaintext, the G.711 codecs, rendering and the WAV header;
* ``opus``: Opus packet lengths and the PyAV decoder.
"""

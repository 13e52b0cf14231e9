"""Call audio as callvault stores it: the track record format and the codecs, one package that
ingest and export (``gateway``), the AI worker (``ai``), the benches and the tests all use.

Each module holds one thing, imported from where it lives:

* ``tracks``: a sealed track's plaintext, records of raw codec bytes at sample offsets;
* ``codecs``: the codec table (``codec("pcmu")``): payload length, decode, encode;
* ``g711``: the µ-law and A-law lookup tables;
* ``opus``: Opus packet lengths and the PyAV decoder;
* ``timeline``: records rendered onto the call's timeline (stereo export, mono for the AI);
* ``wav``: the header of the exported WAV.
"""

"""Sans-I/O parsers for the audio ingest transports.

Each transport the PBXs speak (Twilio Media Streams and mod_audio_fork/jambonz over
WebSocket, Asterisk AudioSocket over TCP) has a parser here that is fed the text or bytes the
socket received and hands back :mod:`gateway.ingest.events` values. None of them does I/O,
so the aiohttp handlers and the asyncio server only move bytes, and the tests need no
sockets.
"""

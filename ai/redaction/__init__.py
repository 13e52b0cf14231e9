"""Redaction of personal data from transcripts and audio (the ``ai.redaction`` instructions).

``spoken`` turns a track's words into written forms with a map back to the words;
``detect`` and ``names`` find card numbers, IBANs, CNPs, phone numbers, e-mail addresses,
names and postal addresses in them; ``redact`` turns finds into timed spans and tags the
transcript; ``ner`` loads the packaged English named-entity model, checked.
"""

"""The event core: a pure library with no I/O and no imports from the rest of the package.

Room versions, event format, canonical JSON, hashes, event IDs, redaction, signatures,
authorization rules and state resolution. Events and state maps go in; verdicts and
state maps come out.
"""

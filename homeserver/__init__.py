"""homeserver: a small async Matrix homeserver core."""

__version__ = "0.1.0"

"""Presence: online status of users (docs/presence.md)."""

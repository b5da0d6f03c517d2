"""Rooms: persisting events with their state, creating local events, membership."""

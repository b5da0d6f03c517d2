-- Redaction events by their target (the event an m.room.redaction redacts: its top-level
-- "redacts" in room v10, its content's in v11 and later), so that an event is served
-- redacted once a redaction of it is accepted and allowed (rooms/redactions.py). A row is
-- written with the redaction event whatever its outcome; readers join events for it.
-- The redactions stored before this table existed are copied in by
-- 0009_redactions.postgres.sql / 0009_redactions.sqlite.sql (each engine reads JSON its
-- own way), which run after this file.
CREATE TABLE redactions (
    event_id TEXT PRIMARY KEY,
    redacts TEXT NOT NULL
);
CREATE INDEX redactions_redacts ON redactions (redacts);

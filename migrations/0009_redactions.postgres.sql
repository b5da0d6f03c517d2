-- Redaction events by their target (the event an m.room.redaction redacts: its top-level
-- "redacts" in room v10, its content's in v11 and later), so that an event is served
-- redacted once a redaction of it is accepted and allowed (rooms/redactions.py). A row is
-- written with the redaction event whatever its outcome; readers join events for it.
CREATE TABLE redactions (
    event_id TEXT PRIMARY KEY,
    redacts TEXT NOT NULL
);
CREATE INDEX redactions_redacts ON redactions (redacts);

-- Redactions stored before this table existed.
INSERT INTO redactions (event_id, redacts)
SELECT event_id, value #>> '{}' FROM (
    SELECT e.event_id,
           -- jsonb refuses a \u0000 escape: such an event (none of ours) is left out.
           CASE WHEN strpos(e.json, '\u0000') > 0 THEN NULL
                WHEN r.room_version = '10' THEN e.json::jsonb -> 'redacts'
                ELSE e.json::jsonb -> 'content' -> 'redacts' END AS value
    FROM events e JOIN rooms r ON r.room_id = e.room_id
    WHERE e.type = 'm.room.redaction' AND e.state_key IS NULL
) AS found
WHERE jsonb_typeof(value) = 'string';

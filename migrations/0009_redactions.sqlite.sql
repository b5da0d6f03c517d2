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
SELECT e.event_id,
       CASE WHEN r.room_version = '10' THEN json_extract(e.json, '$.redacts')
            ELSE json_extract(e.json, '$.content.redacts') END AS target
FROM events e JOIN rooms r ON r.room_id = e.room_id
WHERE e.type = 'm.room.redaction' AND e.state_key IS NULL
  AND (CASE WHEN r.room_version = '10' THEN json_type(e.json, '$.redacts')
            ELSE json_type(e.json, '$.content.redacts') END) = 'text';

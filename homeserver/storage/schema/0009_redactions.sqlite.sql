-- The SQLite part of 0009_redactions, run after 0009_redactions.sql: the redactions
-- stored before the table existed, found with the JSON1 functions.
INSERT INTO redactions (event_id, redacts)
SELECT e.event_id,
       CASE WHEN r.room_version = '10' THEN json_extract(e.json, '$.redacts')
            ELSE json_extract(e.json, '$.content.redacts') END AS target
FROM events e JOIN rooms r ON r.room_id = e.room_id
WHERE e.type = 'm.room.redaction' AND e.state_key IS NULL
  AND (CASE WHEN r.room_version = '10' THEN json_type(e.json, '$.redacts')
            ELSE json_type(e.json, '$.content.redacts') END) = 'text';

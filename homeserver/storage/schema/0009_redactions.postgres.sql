-- The PostgreSQL part of 0009_redactions, run after 0009_redactions.sql: the redactions
-- stored before the table existed, found with jsonb.
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

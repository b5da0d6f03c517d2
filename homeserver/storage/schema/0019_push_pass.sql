-- The notification pass's cursor (push/notify.py): the stream ordering up to which every
-- accepted event has been evaluated. One row, moved forward in the same transaction as
-- the notification rows of the events it covers; on start-up the pass resumes after it.
-- A server upgraded to this schema starts at its newest event (history is not evaluated).
CREATE TABLE push_pass (
    id INTEGER PRIMARY KEY,
    stream_ordering BIGINT NOT NULL
);
INSERT INTO push_pass (id, stream_ordering) SELECT 1, COALESCE(MAX(stream_ordering), 0) FROM events;

-- A redaction removes its target's notifications (all users'): looked up by event.
CREATE INDEX push_notifications_event ON push_notifications (event_id);

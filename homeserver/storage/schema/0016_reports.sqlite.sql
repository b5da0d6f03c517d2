-- Reports of events and rooms that users send operators (POST /rooms/{roomId}/report and
-- /rooms/{roomId}/report/{eventId}); sqlite form (the id allocated by the engine). Columns:
-- the reporting user, the room, the event (NULL for a room report), the reason and score
-- as given (NULL when absent), and when it was received (ms since the epoch).
CREATE TABLE reports (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    event_id TEXT,
    reason TEXT,
    score BIGINT,
    received_ts BIGINT NOT NULL
);
CREATE INDEX reports_by_user ON reports (user_id, received_ts);

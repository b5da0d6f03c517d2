-- The SQLite part of 0005_rooms, run after 0005_rooms.sql (which describes this table):
-- room_invites, whose stream_id the engine allocates, here with INTEGER PRIMARY KEY
-- AUTOINCREMENT.
CREATE TABLE room_invites (
    stream_id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    membership TEXT NOT NULL,
    event_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    room_version TEXT NOT NULL,
    event_json TEXT NOT NULL,
    invite_room_state TEXT NOT NULL,
    received_ts BIGINT NOT NULL,
    UNIQUE (user_id, room_id)
);
CREATE INDEX room_invites_user ON room_invites (user_id);

-- The SQLite part of 0003_inbox, run after 0003_inbox.sql (which describes this table):
-- the inbox, whose id the engine allocates, here with INTEGER PRIMARY KEY AUTOINCREMENT.
CREATE TABLE inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    origin TEXT NOT NULL,
    kind TEXT NOT NULL,
    room_id TEXT,
    event_id TEXT,
    room_version TEXT,
    body TEXT NOT NULL,
    received_ts BIGINT NOT NULL,
    claimed INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX inbox_event_id ON inbox (event_id);
CREATE INDEX inbox_origin_claimed ON inbox (origin, claimed, id);

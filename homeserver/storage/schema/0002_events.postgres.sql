-- The PostgreSQL part of 0002_events, run after 0002_events.sql (which describes these
-- tables): the tables whose key the engine allocates, here with a BIGSERIAL.
CREATE TABLE events (
    stream_ordering BIGSERIAL PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT,
    sender TEXT NOT NULL,
    membership TEXT,
    depth BIGINT NOT NULL,
    origin_server_ts BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    rejection_reason TEXT,
    state_group BIGINT,
    state_group_after BIGINT,
    received_ts BIGINT NOT NULL,
    json TEXT NOT NULL
);
CREATE INDEX events_room_stream ON events (room_id, stream_ordering);
CREATE INDEX events_room_depth ON events (room_id, depth);

CREATE TABLE state_groups (
    id BIGSERIAL PRIMARY KEY,
    room_id TEXT NOT NULL,
    prev_group BIGINT,
    chain_length INTEGER NOT NULL
);

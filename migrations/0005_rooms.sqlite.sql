-- Rooms service: memberships of our users in rooms we are not in (invites received over
-- federation, and those invites once rejected), and rooms our users forgot.

-- One row per (user, room): the latest invite received for one of our users through
-- PUT /invite, with the stripped state shown to the client. membership becomes 'leave'
-- when the user rejects it and the row is deleted when the user joins. stream_id grows
-- on every change, so /sync can ask for what changed since a position.
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

CREATE TABLE forgotten_rooms (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    forgotten_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id)
);

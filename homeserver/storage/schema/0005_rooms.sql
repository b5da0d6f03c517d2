-- Rooms service: memberships of our users in rooms we are not in (invites received over
-- federation, and those invites once rejected), and rooms our users forgot. room_invites,
-- whose stream_id the engine allocates, is created by 0005_rooms.postgres.sql (BIGSERIAL)
-- and 0005_rooms.sqlite.sql (INTEGER PRIMARY KEY AUTOINCREMENT), which run after this
-- file:
--
-- room_invites: one row per (user, room), the latest invite received for one of our
-- users through PUT /invite, with the stripped state shown to the client. membership
-- becomes 'leave' when the user rejects it and the row is deleted when the user joins.
-- stream_id grows on every change, so /sync can ask for what changed since a position.

CREATE TABLE forgotten_rooms (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    forgotten_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id)
);

-- Room aliases and the published room directory (client-server "Room aliases" and
-- "Published room directory"; served to other servers by /query/directory and
-- /publicRooms). The same SQL on both engines.

-- One row per alias of this server: #localpart:our.server -> room. The creator may
-- delete it (as may a user with power over the room's canonical alias).
CREATE TABLE room_aliases (
    room_alias TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    creator TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);
CREATE INDEX room_aliases_room ON room_aliases (room_id);

-- Rooms whose directory visibility is "public"; a room without a row is "private".
CREATE TABLE published_rooms (
    room_id TEXT PRIMARY KEY,
    published_ts BIGINT NOT NULL
);

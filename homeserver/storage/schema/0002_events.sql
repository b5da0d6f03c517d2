-- Events and room state. Shared by both engines; the tables whose key the engine
-- allocates (events.stream_ordering, state_groups.id) are created by
-- 0002_events.postgres.sql (BIGSERIAL) and 0002_events.sqlite.sql (INTEGER PRIMARY KEY
-- AUTOINCREMENT), which run after this file:
--
-- events: every event we hold, whatever its outcome. stream_ordering orders events for
-- clients. state_group is the state before the event (NULL for outliers),
-- state_group_after the state after it.
--
-- state_groups: state snapshots. A group is either full (prev_group NULL) or a delta on
-- prev_group; its entries are in state_group_entries below.

-- Rooms we know: registered when their create event is stored.
CREATE TABLE rooms (
    room_id TEXT PRIMARY KEY,
    room_version TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);

CREATE TABLE event_edges (
    event_id TEXT NOT NULL,
    prev_event_id TEXT NOT NULL,
    PRIMARY KEY (event_id, prev_event_id)
);
CREATE INDEX event_edges_prev ON event_edges (prev_event_id);

CREATE TABLE event_auth (
    event_id TEXT NOT NULL,
    auth_event_id TEXT NOT NULL,
    PRIMARY KEY (event_id, auth_event_id)
);

-- The entries of a state group. An entry with event_id '' removes that key from the
-- parent's state.
CREATE TABLE state_group_entries (
    state_group BIGINT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (state_group, type, state_key)
);

CREATE TABLE forward_extremities (
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (room_id, event_id)
);

-- The room's current resolved state; membership copied out for member look-ups.
CREATE TABLE current_state (
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    membership TEXT,
    PRIMARY KEY (room_id, type, state_key)
);
CREATE INDEX current_state_members ON current_state (type, state_key, membership);

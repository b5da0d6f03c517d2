-- Relations between events (content."m.relates_to" with a rel_type and an event_id:
-- threads, edits, references, annotations), written by the persister with each ACCEPTED
-- event (storage/relations.py); read for /relations, /threads and the bundled
-- aggregations (rooms/relations.py). parent_id is the event related to (for m.thread the
-- thread root); room_id is the child's room: readers require it to be the parent's.
-- The full-text index of searchable events (event_search) differs per engine: FTS5 on
-- SQLite (0017_relations_search.sqlite.sql), a tsvector with a GIN index on PostgreSQL
-- (0017_relations_search.postgres.sql). Both files also index the events already held.
CREATE TABLE event_relations (
    event_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    parent_id TEXT NOT NULL,
    rel_type TEXT NOT NULL,
    event_type TEXT NOT NULL,
    sender TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL
);
CREATE INDEX event_relations_parent ON event_relations (parent_id, rel_type, stream_ordering);
CREATE INDEX event_relations_threads ON event_relations (room_id, rel_type, parent_id, stream_ordering);

-- The PostgreSQL part of 0017_relations_search, run after 0017_relations_search.sql.
-- event_search: one row per searchable accepted event (its key: content.body,
-- content.name or content.topic) with the text's tsvector ('simple' configuration: no
-- stemming, any language), under a GIN index.
CREATE TABLE event_search (
    event_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    key TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    vector TSVECTOR NOT NULL
);
CREATE INDEX event_search_room ON event_search (room_id, stream_ordering);
CREATE INDEX event_search_vector ON event_search USING GIN (vector);
-- For a word found in many events, walking this index newest first and checking each
-- row beats collecting every match from the GIN index and sorting (the planner picks).
CREATE INDEX event_search_ordering ON event_search (stream_ordering);

-- The events held before this migration (jsonb refuses a \u0000 escape: such an event
-- is left out).
INSERT INTO event_relations (event_id, room_id, parent_id, rel_type, event_type, sender, stream_ordering)
SELECT event_id, room_id, parent, rel, type, sender, stream_ordering FROM (
    SELECT event_id, room_id, type, sender, stream_ordering,
           j -> 'content' -> 'm.relates_to' ->> 'event_id' AS parent,
           j -> 'content' -> 'm.relates_to' ->> 'rel_type' AS rel,
           jsonb_typeof(j -> 'content' -> 'm.relates_to' -> 'event_id') AS parent_kind,
           jsonb_typeof(j -> 'content' -> 'm.relates_to' -> 'rel_type') AS rel_kind
    FROM (SELECT e.*, CASE WHEN strpos(e.json, '\u0000') > 0 THEN NULL ELSE e.json::jsonb END AS j
          FROM events e WHERE e.outcome = 'accepted' AND e.state_key IS NULL
            AND strpos(e.json, 'm.relates_to') > 0) AS candidates
) AS found
WHERE parent_kind = 'string' AND rel_kind = 'string' AND parent LIKE '$%';

INSERT INTO event_search (event_id, room_id, sender, key, stream_ordering, vector)
SELECT event_id, room_id, sender, key, stream_ordering, to_tsvector('simple', value) FROM (
    SELECT event_id, room_id, sender, stream_ordering,
           CASE type WHEN 'm.room.message' THEN 'content.body' WHEN 'm.room.name' THEN 'content.name'
                     ELSE 'content.topic' END AS key,
           CASE type WHEN 'm.room.message' THEN j -> 'content' ->> 'body'
                     WHEN 'm.room.name' THEN j -> 'content' ->> 'name'
                     ELSE j -> 'content' ->> 'topic' END AS value,
           CASE type WHEN 'm.room.message' THEN jsonb_typeof(j -> 'content' -> 'body')
                     WHEN 'm.room.name' THEN jsonb_typeof(j -> 'content' -> 'name')
                     ELSE jsonb_typeof(j -> 'content' -> 'topic') END AS kind
    FROM (SELECT e.*, CASE WHEN strpos(e.json, '\u0000') > 0 THEN NULL ELSE e.json::jsonb END AS j
          FROM events e WHERE e.outcome = 'accepted'
            AND ((e.type = 'm.room.message' AND e.state_key IS NULL)
              OR (e.type IN ('m.room.name', 'm.room.topic') AND e.state_key = ''))) AS candidates
) AS found
WHERE kind = 'string';

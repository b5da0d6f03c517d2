-- The SQLite part of 0017_relations_search, run after 0017_relations_search.sql.
-- event_search: one row per searchable accepted event (its key: content.body,
-- content.name or content.topic), kept in the FTS5 table event_search_fts (external
-- content: the text lives once, in event_search) by the triggers below. The rowid is the
-- event's stream ordering, so FTS5 walks the matches newest first by itself.
CREATE TABLE event_search (
    stream_ordering INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    room_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL
);
CREATE VIRTUAL TABLE event_search_fts USING fts5(value, content='event_search', content_rowid='stream_ordering');
CREATE TRIGGER event_search_ai AFTER INSERT ON event_search BEGIN INSERT INTO event_search_fts (rowid, value) VALUES (new.stream_ordering, new.value); END;
CREATE TRIGGER event_search_ad AFTER DELETE ON event_search BEGIN INSERT INTO event_search_fts (event_search_fts, rowid, value) VALUES ('delete', old.stream_ordering, old.value); END;

-- The events held before this migration.
INSERT INTO event_relations (event_id, room_id, parent_id, rel_type, event_type, sender, stream_ordering)
SELECT event_id, room_id, json_extract(json, '$.content."m.relates_to".event_id'),
       json_extract(json, '$.content."m.relates_to".rel_type'), type, sender, stream_ordering
FROM events
WHERE outcome = 'accepted' AND state_key IS NULL
  AND json_type(json, '$.content."m.relates_to".rel_type') = 'text'
  AND json_type(json, '$.content."m.relates_to".event_id') = 'text'
  AND json_extract(json, '$.content."m.relates_to".event_id') LIKE '$%';

INSERT INTO event_search (event_id, room_id, sender, key, stream_ordering, value)
SELECT event_id, room_id, sender,
       CASE type WHEN 'm.room.message' THEN 'content.body' WHEN 'm.room.name' THEN 'content.name'
                 ELSE 'content.topic' END,
       stream_ordering,
       CASE type WHEN 'm.room.message' THEN json_extract(json, '$.content.body')
                 WHEN 'm.room.name' THEN json_extract(json, '$.content.name')
                 ELSE json_extract(json, '$.content.topic') END
FROM events
WHERE outcome = 'accepted'
  AND ((type = 'm.room.message' AND state_key IS NULL AND json_type(json, '$.content.body') = 'text')
    OR (type = 'm.room.name' AND state_key = '' AND json_type(json, '$.content.name') = 'text')
    OR (type = 'm.room.topic' AND state_key = '' AND json_type(json, '$.content.topic') = 'text'));

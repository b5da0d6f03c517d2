-- Account data (client-server "Client Config"): per-user JSON objects, global (room_id '')
-- or scoped to a room, one row per (user, room, type). stream_id is the position of the
-- row's last change in the account data stream (allocated by the store, one writer at a
-- time), so /sync asks for what changed past a position. The same SQL on both engines.
CREATE TABLE account_data (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    account_data_type TEXT NOT NULL,
    content TEXT NOT NULL,
    stream_id BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, account_data_type)
);
CREATE INDEX account_data_user_stream ON account_data (user_id, stream_id);
CREATE INDEX account_data_stream ON account_data (stream_id);

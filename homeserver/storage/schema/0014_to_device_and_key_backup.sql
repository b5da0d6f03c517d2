-- Send-to-device messaging and server-side key backups (docs/to_device_and_backup.md).
-- The same SQL on both engines.

-- The to-device stream: one counter row (id 1, made by the first write: a migration seeds
-- no rows, so port-db copies it like any other), taken first in every transaction that
-- stores messages, so positions are allocated and committed in order and a /sync that has
-- read position P never later meets a message at or below P.
CREATE TABLE to_device_stream (
    id INTEGER PRIMARY KEY,
    position BIGINT NOT NULL
);

-- Each device's inbox: kept until a /sync since-token past stream_id shows the device
-- received it, or the device is deleted.
CREATE TABLE to_device_inbox (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    stream_id BIGINT NOT NULL,
    sender TEXT NOT NULL,
    event_type TEXT NOT NULL,
    content TEXT NOT NULL,
    message_id TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, stream_id)
);

-- PUT /sendToDevice/{eventType}/{txnId}: one effect per (user, device, txnId). Rows older
-- than a day are deleted as new ones arrive.
CREATE TABLE to_device_txns (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);
CREATE INDEX to_device_txns_ts ON to_device_txns (created_ts);

-- Inbound m.direct_to_device EDUs seen, by (origin, message_id): a retried EDU is delivered
-- once. Rows older than a week are deleted as new ones arrive.
CREATE TABLE to_device_received (
    origin TEXT NOT NULL,
    message_id TEXT NOT NULL,
    received_ts BIGINT NOT NULL,
    PRIMARY KEY (origin, message_id)
);
CREATE INDEX to_device_received_ts ON to_device_received (received_ts);

-- Server-side key backups: versions (numbered per user, never reused: a deleted version
-- keeps its row with deleted = 1) and their keys. etag changes whenever the keys change.
CREATE TABLE room_key_backup_versions (
    user_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    algorithm TEXT NOT NULL,
    auth_data TEXT NOT NULL,
    etag BIGINT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, version)
);

CREATE TABLE room_key_backup_keys (
    user_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    room_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    first_message_index BIGINT NOT NULL,
    forwarded_count BIGINT NOT NULL,
    is_verified INTEGER NOT NULL,
    session_data TEXT NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id)
);

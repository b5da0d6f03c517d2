-- End-to-end encryption keys (client-server "End-to-End Encryption"), the same SQL on both
-- engines. JSON columns hold the key objects as clients uploaded them (signatures that
-- others add later live in e2e_signatures and are merged in when the keys are read).

-- Device keys of our users' devices: one object per (user, device).
CREATE TABLE e2e_device_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- One-time keys: each handed out once (claiming deletes the row).
CREATE TABLE e2e_one_time_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, algorithm, key_id)
);

-- Fallback keys: one per (device, algorithm), handed out when no one-time key is left;
-- used is 1 once handed out; the key stays until the device replaces it.
CREATE TABLE e2e_fallback_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    used INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, device_id, algorithm)
);

-- Cross-signing keys (master, self_signing, user_signing) of our users and, as a cache,
-- master and self_signing keys of remote users learnt from their servers.
CREATE TABLE e2e_cross_signing_keys (
    user_id TEXT NOT NULL,
    key_type TEXT NOT NULL,
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, key_type)
);

-- Signatures uploaded with /keys/signatures/upload: signer's key signs target's key
-- (a device ID or a cross-signing public key).
CREATE TABLE e2e_signatures (
    target_user_id TEXT NOT NULL,
    target_key_id TEXT NOT NULL,
    signer_user_id TEXT NOT NULL,
    signer_key_id TEXT NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (target_user_id, target_key_id, signer_user_id, signer_key_id)
);

-- The device-list stream: one row per change of a user's device list or cross-signing
-- keys (ours, and remote users' learnt over federation). Positions come from
-- device_list_position, incremented inside the writing transaction, so positions commit
-- in order.
CREATE TABLE device_list_stream (
    stream_id BIGINT PRIMARY KEY,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL
);
CREATE INDEX device_list_stream_user ON device_list_stream (user_id, stream_id);
CREATE TABLE device_list_position (
    only_row INTEGER PRIMARY KEY,
    position BIGINT NOT NULL
);
INSERT INTO device_list_position (only_row, position) VALUES (1, 0);

-- Remote users' device lists: the last stream_id their server announced, and whether a
-- gap was seen (stale: resync through GET /user/devices).
CREATE TABLE remote_device_lists (
    user_id TEXT PRIMARY KEY,
    stream_id BIGINT NOT NULL,
    stale INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE remote_device_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    display_name TEXT,
    key_json TEXT,
    PRIMARY KEY (user_id, device_id)
);

-- OpenID tokens (client-server POST /user/{userId}/openid/request_token, checked by the
-- federation GET /openid/userinfo): only the SHA-256 of a token is stored, with the time it
-- stops being valid. Rows past expires_ts are deleted when new tokens are issued.
CREATE TABLE openid_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    expires_ts BIGINT NOT NULL
);
CREATE INDEX openid_tokens_expiry ON openid_tokens (expires_ts);

-- timestamp_to_event: the room's closest event to a time, in either direction.
CREATE INDEX events_room_ts ON events (room_id, origin_server_ts);

-- What operators manage from the command line: an admin flag on local accounts, and the
-- registration tokens of the m.login.registration_token stage (Synapse's table shape).

ALTER TABLE users ADD COLUMN admin INTEGER NOT NULL DEFAULT 0;

-- uses_allowed: NULL is unlimited. completed: registrations that used the token.
-- pending: registrations under way with it (kept for Synapse's shape; this server counts a
-- use only when the registration completes, so it stays 0). expiry_time: ms since the
-- epoch, NULL never expires.
CREATE TABLE registration_tokens (
    token TEXT PRIMARY KEY,
    uses_allowed INTEGER,
    pending INTEGER NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0,
    expiry_time BIGINT,
    created_ts BIGINT NOT NULL
);

-- The media repository (homeserver/media/): one row per piece of media we serve, local
-- uploads (origin = our server name, remote = 0) and the cached copies of other servers'
-- media (remote = 1). The bytes live on disk under media.store_path, named by their SHA-256
-- (several rows may share one file); sha256 is NULL while an asynchronous upload
-- (POST /_matrix/media/v1/create) waits for its bytes, until unused_expires_ts.
-- Booleans are 0/1 integers, timestamps milliseconds; the same SQL on both engines.
CREATE TABLE media (
    origin TEXT NOT NULL,
    media_id TEXT NOT NULL,
    content_type TEXT NOT NULL,
    upload_name TEXT,
    size BIGINT NOT NULL,
    sha256 TEXT,
    created_ts BIGINT NOT NULL,
    last_access_ts BIGINT NOT NULL,
    user_id TEXT,
    remote INTEGER NOT NULL,
    unused_expires_ts BIGINT,
    PRIMARY KEY (origin, media_id)
);
CREATE INDEX media_sha256 ON media (sha256);
CREATE INDEX media_remote_access ON media (remote, last_access_ts);
CREATE INDEX media_pending ON media (user_id, unused_expires_ts);

-- Thumbnails, made on first request and kept: one per (media, size, method, animated).
CREATE TABLE media_thumbnails (
    origin TEXT NOT NULL,
    media_id TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    method TEXT NOT NULL,
    animated INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    size BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (origin, media_id, width, height, method, animated)
);
CREATE INDEX media_thumbnails_sha256 ON media_thumbnails (sha256);

-- Push notifications (docs/push.md): users' push rules, the notifications they were
-- given, and their pushers. The same SQL on both engines; booleans are 0/1 integers.

-- A user's own push rules; ``priority`` orders them within (user, kind), lowest first.
-- conditions, pattern and actions are JSON text (conditions and pattern as the kind needs).
CREATE TABLE push_rules (
    user_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    rule_id TEXT NOT NULL,
    priority BIGINT NOT NULL,
    conditions TEXT,
    pattern TEXT,
    actions TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    PRIMARY KEY (user_id, kind, rule_id)
);

-- A server-default rule a user enabled, disabled or gave other actions (NULL: as default).
CREATE TABLE push_rule_defaults (
    user_id TEXT NOT NULL,
    rule_id TEXT NOT NULL,
    enabled INTEGER,
    actions TEXT,
    PRIMARY KEY (user_id, rule_id)
);

-- One row per (local user, event) the user's rules made notify. ``unread`` drops to 0 when
-- a receipt of the user covers the event (its thread, or unthreaded). Pruned by age
-- (push/notify.py: read rows after 30 days, all after 90).
CREATE TABLE push_notifications (
    user_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    thread_id TEXT NOT NULL,
    highlight INTEGER NOT NULL,
    actions TEXT NOT NULL,
    ts BIGINT NOT NULL,
    unread INTEGER NOT NULL,
    PRIMARY KEY (user_id, event_id)
);
CREATE INDEX push_notifications_unread ON push_notifications (user_id, room_id, unread, thread_id);
CREATE INDEX push_notifications_order ON push_notifications (user_id, stream_ordering);
CREATE INDEX push_notifications_ts ON push_notifications (ts);

-- Pushers (POST /pushers/set). The notifications of the user above ``last_stream_ordering``
-- are the pusher's durable queue; ``retry_at`` / ``failures`` are its backoff.
CREATE TABLE pushers (
    user_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    pushkey TEXT NOT NULL,
    kind TEXT NOT NULL,
    app_display_name TEXT NOT NULL,
    device_display_name TEXT NOT NULL,
    profile_tag TEXT,
    lang TEXT NOT NULL,
    data TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    last_stream_ordering BIGINT NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0,
    retry_at BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, app_id, pushkey)
);
CREATE INDEX pushers_key ON pushers (app_id, pushkey);

-- Inbound federation: the transaction de-duplication table, the durable inbox the /send
-- handler writes and the inbound worker drains, and the EDU tables (typing, receipts)
-- kept for the client API. The inbox, whose id the engine allocates, is created by
-- 0003_inbox.postgres.sql (BIGSERIAL) and 0003_inbox.sqlite.sql (INTEGER PRIMARY KEY
-- AUTOINCREMENT), which run after this file:
--
-- inbox: PDUs and EDUs received, not yet processed. kind is 'pdu' or 'edu'; PDUs carry
-- room_id, event_id and the room version looked up at the door; the unique event_id makes
-- a PDU enqueued twice (two transactions before processing) one row. claimed is set while
-- a worker holds the row; claims are reset on start-up.

-- One row per (origin, txnId) received: a repeat is answered with the stored response and
-- enqueues nothing. Rows are pruned after inbound.transaction_retention_seconds.
CREATE TABLE federation_transactions (
    origin TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    response TEXT NOT NULL,
    received_ts BIGINT NOT NULL,
    PRIMARY KEY (origin, txn_id)
);
CREATE INDEX federation_transactions_ts ON federation_transactions (received_ts);

-- m.typing: who is typing in a room, until when (ms since the epoch).
CREATE TABLE typing (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    expires_ts BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);

-- m.receipt: the latest receipt of each type per user and room (and thread).
CREATE TABLE receipts (
    room_id TEXT NOT NULL,
    receipt_type TEXT NOT NULL,
    user_id TEXT NOT NULL,
    thread_id TEXT NOT NULL DEFAULT '',
    event_ids TEXT NOT NULL,
    data TEXT NOT NULL,
    received_ts BIGINT NOT NULL,
    PRIMARY KEY (room_id, receipt_type, user_id, thread_id)
);

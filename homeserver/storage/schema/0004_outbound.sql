-- Outbound federation: one durable queue per destination, written in the same database
-- transaction that persists the local event, and the retry state of each destination.
-- The two queues, whose queue_id the engine allocates, are created by
-- 0004_outbound.postgres.sql (BIGSERIAL) and 0004_outbound.sqlite.sql (INTEGER PRIMARY
-- KEY AUTOINCREMENT), which run after this file:
--
-- outbound_pdu_queue: the PDU queue, sent oldest first (queue_id order). While a
-- destination is in catch-up (destinations.catch_up = 1) it holds at most one row per
-- room: our newest event there, the catch-up marker from which the receiver fetches the
-- gap.
--
-- outbound_edu_queue: the EDU queue (typing, receipts, presence of our own users), oldest
-- first.

-- The JSON of each of our events still queued for at least one destination (stored once,
-- whatever the number of destinations); removed when no queue row refers to it.
CREATE TABLE outbound_pdus (
    event_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    json TEXT NOT NULL,
    queued_ts BIGINT NOT NULL
);

-- Retry state and transaction ids of each destination we have sent to.
-- first_failure_ts: start of the current run of failures (NULL when healthy);
-- next_attempt_ts: no attempt before this (backoff, with jitter);
-- dead = 1: failing for longer than outbound.dead_after_days, not tried until it
-- contacts us; catch_up = 1: the queue holds only our newest event per room;
-- last_txn_id: txnIds are increasing integers, never below the clock in ms at allocation,
-- so they stay unique even if this table is lost; pending_*: the transaction in flight
-- (retried with the same txnId and the same content).
CREATE TABLE outbound_destinations (
    destination TEXT PRIMARY KEY,
    failure_count INTEGER NOT NULL DEFAULT 0,
    first_failure_ts BIGINT,
    retry_interval_ms BIGINT NOT NULL DEFAULT 0,
    next_attempt_ts BIGINT NOT NULL DEFAULT 0,
    dead INTEGER NOT NULL DEFAULT 0,
    catch_up INTEGER NOT NULL DEFAULT 0,
    last_txn_id BIGINT NOT NULL DEFAULT 0,
    pending_txn_id TEXT,
    pending_pdu_max BIGINT,
    pending_edu_max BIGINT,
    last_success_ts BIGINT
);

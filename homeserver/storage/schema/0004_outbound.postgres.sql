-- The PostgreSQL part of 0004_outbound, run after 0004_outbound.sql (which describes these
-- tables): the two queues, whose queue_id the engine allocates, here with a BIGSERIAL.
CREATE TABLE outbound_pdu_queue (
    queue_id BIGSERIAL PRIMARY KEY,
    destination TEXT NOT NULL,
    event_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    UNIQUE (destination, event_id)
);
CREATE INDEX outbound_pdu_queue_dest ON outbound_pdu_queue (destination, queue_id);
CREATE INDEX outbound_pdu_queue_event ON outbound_pdu_queue (event_id);

CREATE TABLE outbound_edu_queue (
    queue_id BIGSERIAL PRIMARY KEY,
    destination TEXT NOT NULL,
    edu_type TEXT NOT NULL,
    content TEXT NOT NULL,
    queued_ts BIGINT NOT NULL
);
CREATE INDEX outbound_edu_queue_dest ON outbound_edu_queue (destination, queue_id);

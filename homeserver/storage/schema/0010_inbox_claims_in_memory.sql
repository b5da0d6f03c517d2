-- Claims of inbox entries live in the worker's memory (InboxStore.claim): they were reset
-- on start-up anyway, and marking each claimed row rewrote the row (its body included) and
-- its claim index entry in the database's log, about a sixth of what the worker wrote per
-- event on PostgreSQL. The worker now walks an origin's entries in inbox order.
DROP INDEX inbox_origin_claimed;
ALTER TABLE inbox DROP COLUMN claimed;
CREATE INDEX inbox_origin ON inbox (origin, id);

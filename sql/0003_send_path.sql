-- hyrex-like schema, version 3: inserting a task no longer pays for table CHECKs or for a
-- NOTIFY inside the sender's transaction.
--
-- 1. The task table's eight CHECK constraints become domain constraints on the same columns,
--    with the same rules. PostgreSQL prepares a table CHECK afresh for every statement that
--    writes a row (it reads the expression back from text and plans it), which made a
--    one-row send ~45 us of server time dearer; a domain's check comes prepared from the type
--    cache, and an UPDATE checks only the columns it sets.
-- 2. The statement trigger that called pg_notify on every insert is gone. A NOTIFY takes a
--    database-wide lock at commit and holds it until the commit record is flushed, so every
--    sending transaction queued behind the previous one's disk flush: four concurrent
--    senders got half the throughput of the same inserts without it. The library now sends
--    the wake-up after the insert has committed, from a thread of its own (one NOTIFY covers
--    all the tasks committed before it); send(conn=...) still notifies inside the caller's
--    transaction, so workers wake when it commits. Rows inserted by other SQL are found by the
--    workers' poll.
--
-- The columns change type in place (the domains are created without constraints, so the types
-- are binary-compatible and the table is not rewritten); adding each domain constraint then
-- reads the table to check the existing rows: five scans, under the ACCESS EXCLUSIVE lock the
-- ALTER TABLE took, so on a large table sends and workers wait for them. Changing a column's
-- type drops its statistics: the last statement gathers them again.
-- During a rolling upgrade, processes still on the previous version send without waking
-- workers (they relied on the trigger): their tasks are found by the poll.

CREATE DOMAIN task_label AS text;
CREATE DOMAIN task_priority AS smallint;
CREATE DOMAIN task_status AS text;
CREATE DOMAIN task_count AS integer;
CREATE DOMAIN task_timeout AS double precision;

ALTER TABLE task
    DROP CONSTRAINT task_task_name_check,
    DROP CONSTRAINT task_queue_check,
    DROP CONSTRAINT task_priority_check,
    DROP CONSTRAINT task_status_check,
    DROP CONSTRAINT task_max_retries_check,
    DROP CONSTRAINT task_timeout_seconds_check,
    DROP CONSTRAINT task_attempt_count_check,
    DROP CONSTRAINT task_failure_count_check,
    ALTER COLUMN task_name TYPE task_label,
    ALTER COLUMN queue TYPE task_label,
    ALTER COLUMN priority TYPE task_priority,
    ALTER COLUMN status TYPE task_status,
    ALTER COLUMN max_retries TYPE task_count,
    ALTER COLUMN attempt_count TYPE task_count,
    ALTER COLUMN failure_count TYPE task_count,
    ALTER COLUMN timeout_seconds TYPE task_timeout;

ALTER DOMAIN task_label ADD CONSTRAINT task_label_length CHECK (length(VALUE) BETWEEN 1 AND 255);
ALTER DOMAIN task_priority ADD CONSTRAINT task_priority_range CHECK (VALUE BETWEEN 1 AND 10);
ALTER DOMAIN task_status ADD CONSTRAINT task_status_known
    CHECK (VALUE IN ('queued', 'running', 'completed', 'failed', 'canceled'));
ALTER DOMAIN task_count ADD CONSTRAINT task_count_not_negative CHECK (VALUE >= 0);
ALTER DOMAIN task_timeout ADD CONSTRAINT task_timeout_positive CHECK (VALUE > 0);

DROP TRIGGER task_inserted ON task;
DROP FUNCTION notify_task_inserted();

ANALYZE task;

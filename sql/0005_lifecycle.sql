-- hyrex-like schema, version 5: the task lifecycle (#14): delayed tasks wake workers when due,
-- tasks can be canceled (queued or running), sent once per key, and pruned.
--
-- 1. cancel_requested_at: set by a cancel of a running task (a queued one becomes canceled at
--    once). The worker holding it stops it; whatever way its attempt ends (or if its worker
--    dies), the task ends canceled instead of being retried or requeued, unless it completed.
-- 2. task_run.status may be 'canceled': the attempt the worker stopped on request.
-- 3. task_due_idx: queued tasks that wait for a later time (delayed sends and retries after a
--    backoff; run_after > created_at), by task name and that time. The claim asks it when the
--    next one this worker could run is due (one probe per task name), so an idle worker wakes
--    then. A task sent to run now has run_after = created_at and stays out of it: the send
--    path pays one predicate, not an index entry.
--    task_tree_live_idx: the unfinished tasks sent from inside other tasks, by their root, so
--    pruning keeps every task of a tree that still runs (a probe per task pruned).
-- 5. task_idempotency_idx: one live task per (task name, idempotency key). A task that failed or
--    was canceled leaves the index, so its key may be used again.
--
-- Steps 2-5 hold the task tables' exclusive locks while they scan them once (build an index,
-- check the run statuses): on a large table, migrate in a quiet moment.
ALTER TABLE task ADD COLUMN cancel_requested_at timestamptz;

ALTER TABLE task_run DROP CONSTRAINT task_run_status_check;
ALTER TABLE task_run ADD CONSTRAINT task_run_status_check
    CHECK (status IN ('running', 'completed', 'failed', 'timed_out', 'lost', 'interrupted',
                      'canceled'));

CREATE INDEX task_due_idx ON task (task_name, run_after)
    WHERE status = 'queued' AND run_after > created_at;

CREATE INDEX task_tree_live_idx ON task (root_id)
    WHERE root_id IS NOT NULL AND status IN ('queued', 'running');

CREATE UNIQUE INDEX task_idempotency_idx ON task (task_name, idempotency_key)
    WHERE idempotency_key IS NOT NULL AND status IN ('queued', 'running', 'completed');

ANALYZE task;

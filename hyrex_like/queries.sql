-- Every SQL statement hyrex-like runs, each under a name ("-- name --" line), loaded once by
-- hyrex_like/db/queries.py. Tables are unqualified: connections set search_path to the
-- configured schema.
-- Statements take named parameters only; nothing here is built from strings at run time.

-- insert_task --
-- Values arrive as text (or int) and are cast here: psycopg adapts a str in a fraction of the
-- time a UUID, a list or a Jsonb wrapper takes, ~15 us per send.
-- trace_context: the sender's W3C trace context as JSON text (NULL when tracing is off).
INSERT INTO task (id, task_name, queue, priority, args, max_retries, timeout_seconds,
                  backoff_seconds, run_after, parent_id, root_id, trace_context)
VALUES (%(id)s::uuid, %(task_name)s, %(queue)s, %(priority)s, %(args)s::jsonb, %(max_retries)s,
        %(timeout_seconds)s, %(backoff_seconds)s::double precision[],
        coalesce(%(run_after)s::timestamptz, now()), %(parent_id)s::uuid, %(root_id)s::uuid,
        %(trace_context)s::jsonb)

-- insert_task_once --
-- A send with an idempotency key: the row, unless a live task (queued, running, completed) of
-- that name already holds the key; then that task's id, deduplicated. No row comes back when
-- the holder committed after this statement's snapshot was taken (the insert waited for it):
-- the caller runs the statement again, and then sees it.
WITH inserted AS (
    INSERT INTO task (id, task_name, queue, priority, args, max_retries, timeout_seconds,
                      backoff_seconds, run_after, parent_id, root_id, idempotency_key,
                      trace_context)
    VALUES (%(id)s::uuid, %(task_name)s, %(queue)s, %(priority)s, %(args)s::jsonb,
            %(max_retries)s, %(timeout_seconds)s, %(backoff_seconds)s::double precision[],
            coalesce(%(run_after)s::timestamptz, now()), %(parent_id)s::uuid, %(root_id)s::uuid,
            %(idempotency_key)s, %(trace_context)s::jsonb)
    ON CONFLICT (task_name, idempotency_key)
        WHERE idempotency_key IS NOT NULL AND status IN ('queued', 'running', 'completed')
        DO NOTHING
    RETURNING id
)
SELECT id, false AS deduplicated FROM inserted
UNION ALL
SELECT id, true FROM task
WHERE task_name = %(task_name)s AND idempotency_key = %(idempotency_key)s
  AND status IN ('queued', 'running', 'completed')
  AND NOT EXISTS (SELECT 1 FROM inserted)

-- insert_tasks_once --
-- send_many with idempotency keys (one per payload; the rest of the row is the same for all):
-- the ids inserted. A key already held by a live task, or given twice, inserts nothing; the
-- caller reads the holders with find_live_keys in the same transaction.
INSERT INTO task (id, task_name, queue, priority, args, max_retries, timeout_seconds,
                  backoff_seconds, run_after, parent_id, root_id, idempotency_key, trace_context)
SELECT i.id, %(task_name)s, %(queue)s, %(priority)s, i.args::jsonb, %(max_retries)s,
       %(timeout_seconds)s, %(backoff_seconds)s::double precision[],
       coalesce(%(run_after)s::timestamptz, now()), %(parent_id)s::uuid, %(root_id)s::uuid, i.key,
       %(trace_context)s::jsonb
FROM unnest(%(ids)s::uuid[], %(args)s::text[], %(keys)s::text[]) WITH ORDINALITY
     AS i(id, args, key, n)
-- in key order: two batches sharing keys take their index entries in the same order, so
-- neither waits for the other while holding what the other waits for (a deadlock)
ORDER BY i.key, i.n
ON CONFLICT (task_name, idempotency_key)
    WHERE idempotency_key IS NOT NULL AND status IN ('queued', 'running', 'completed')
    DO NOTHING
RETURNING id

-- find_live_keys --
-- The live task (queued, running, completed) holding each of these keys of a task name.
SELECT idempotency_key, id FROM task
WHERE task_name = %(task_name)s AND idempotency_key = ANY(%(keys)s::text[])
  AND status IN ('queued', 'running', 'completed')

-- notify_workers --
-- Wakes idle workers of this schema (their LISTEN channel); sent after tasks are inserted.
SELECT pg_notify(%(channel)s, '')

-- notify_limited --
-- Wakes idle workers of this schema to claim from limited queues only: a worker ended (or
-- handed back) a task of one, so a slot is free.
SELECT pg_notify(%(channel)s, 'limited')

-- copy_tasks --
COPY task (id, task_name, queue, priority, args, max_retries, timeout_seconds, backoff_seconds,
           run_after, parent_id, root_id, trace_context)
FROM STDIN

-- claim_tasks --
-- One round trip per batch: lock queued rows this worker can run (SKIP LOCKED, so workers
-- never wait on each other), mark them running and open their run rows. Paused and limited
-- queues are left out (read once per statement from the small queue table, an initplan);
-- claim_limited_tasks claims the limited ones.
WITH held AS MATERIALIZED (
    SELECT name, concurrency_limit, paused_at FROM queue
    WHERE paused_at IS NOT NULL OR concurrency_limit IS NOT NULL
), picked AS (
    SELECT id
    FROM task
    WHERE status = 'queued'
      AND run_after <= now()
      AND task_name = ANY(%(task_names)s::text[])
      AND (cardinality(%(queues)s::text[]) = 0 OR queue = ANY(%(queues)s::text[]))
      AND queue <> ALL((SELECT coalesce(array_agg(name::text), ARRAY[]::text[]) FROM held)::text[])
    ORDER BY priority DESC, run_after, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE task AS t
    SET status = 'running',
        attempt_count = t.attempt_count + 1,
        worker_id = %(worker_id)s,
        started_at = coalesce(t.started_at, now())
    FROM picked
    WHERE t.id = picked.id
    RETURNING t.id, t.task_name, t.queue, t.priority, t.args, t.attempt_count, t.max_retries,
              t.timeout_seconds, t.parent_id, t.root_id, t.scheduled_for, t.trace_context
), opened AS (
    -- claimed_at defaults to now(); started_at stays NULL until the worker says the body began
    INSERT INTO task_run (task_id, attempt_number, status, worker_id)
    SELECT id, attempt_count, 'running', %(worker_id)s FROM claimed
)
SELECT id, task_name, queue, priority, args::text, attempt_count, max_retries,
       timeout_seconds, parent_id, root_id, scheduled_for, trace_context::text,
       NULL::double precision AS due_in, NULL::text[] AS limited
FROM claimed
UNION ALL
-- Every claim ends with one more row, whose id is NULL. Its due_in, when the claim found fewer
-- rows than it asked for: in how many seconds the next task this worker could run is due
-- (NULL: none is waiting), so an idle worker wakes then rather than at its next poll.
-- task_due_idx holds only tasks that wait (run_after > created_at), by name and time: one
-- index probe per task name. Its limited: the limited queues (not paused) this worker serves,
-- which it claims with claim_limited_tasks.
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       CASE WHEN (SELECT count(*) FROM claimed) < %(limit)s THEN
       (SELECT extract(epoch FROM min(w.run_after) - now())::double precision
        FROM unnest(%(task_names)s::text[]) AS n(name)
        CROSS JOIN LATERAL (
            SELECT d.run_after FROM task AS d
            WHERE d.task_name = n.name AND d.status = 'queued' AND d.run_after > d.created_at
              AND d.run_after > now()
              AND (cardinality(%(queues)s::text[]) = 0 OR d.queue = ANY(%(queues)s::text[]))
            ORDER BY d.run_after
            LIMIT 1) AS w) END,
       (SELECT coalesce(array_agg(h.name::text ORDER BY h.name), ARRAY[]::text[]) FROM held AS h
        WHERE h.concurrency_limit IS NOT NULL AND h.paused_at IS NULL
          AND (cardinality(%(queues)s::text[]) = 0 OR h.name = ANY(%(queues)s::text[])))
-- the order executors start them in (ids are time-ordered); the extra row last
ORDER BY priority DESC NULLS LAST, id

-- claim_limited_tasks --
-- Claims from the limited queues (see sql/0009_queues.sql); the last row (id NULL, blocked
-- true) comes only when a queue with tasks ready was at its limit.
SELECT * FROM claim_limited_tasks(%(worker_id)s, %(task_names)s::text[], %(queues)s::text[],
                                  %(limit)s)

-- finish_runs --
-- One round trip per batch of finished attempts. The guard (same attempt, same worker) makes a
-- late write from a worker whose tasks were rescued, or a write repeated after a dropped
-- connection, a no-op; the run rows closed are those of the task rows that passed it (a
-- rescued or given-back attempt's run row is closed or gone with the same statement that
-- cleared the task's worker_id).
WITH input AS MATERIALIZED (
    SELECT i.task_id, i.attempt, i.status AS run_status, i.retryable, i.result, i.error_type,
           i.error_message, i.traceback AS tb, i.progress, to_timestamp(i.started) AS started_at,
           to_timestamp(i.finished) AS finished_at, %(worker_id)s::uuid AS worker_id,
           -- Only the task's own failures use up retries: an attempt interrupted by a
           -- shutdown, or lost with its whole worker, is requeued without counting.
           CASE WHEN i.status IN ('failed', 'timed_out', 'lost') THEN 1 ELSE 0 END AS failed
    -- One array per column, not a JSON document: the database takes arrays apart for about
    -- 1 us less per row (and a document built as jsonb cost 1.5 us more again).
    FROM unnest(%(task_ids)s::uuid[], %(attempts)s::integer[], %(statuses)s::text[],
                %(retryable)s::boolean[], %(results)s::jsonb[], %(error_types)s::text[],
                %(error_messages)s::text[], %(tracebacks)s::text[],
                %(started)s::double precision[], %(finished)s::double precision[],
                %(progress)s::jsonb[])
         AS i(task_id, attempt, status, retryable, result, error_type, error_message,
              traceback, started, finished, progress)
), updated AS (
    UPDATE task AS t
    SET failure_count = t.failure_count + o.failed,
        -- A cancel asked for while the attempt ran wins over a retry or a requeue: every
        -- way an attempt ends but completion ends the task canceled.
        -- (A run the worker stopped as canceled with no request on the row, a stale request
        -- of an earlier attempt, is requeued as an interrupted one: it is not the task's.)
        -- A pause of the task's workflow holds it (paused) when the attempt was stopped, or
        -- failed with retries left; a failure with none left still fails it.
        status = CASE WHEN o.run_status = 'completed' THEN 'completed'
                      WHEN t.cancel_requested_at IS NOT NULL THEN 'canceled'
                      WHEN t.pause_requested_at IS NOT NULL
                           AND (o.run_status IN ('interrupted', 'canceled')
                                OR (o.retryable AND t.failure_count + o.failed <= t.max_retries))
                      THEN 'paused'
                      WHEN o.run_status IN ('interrupted', 'canceled') THEN 'queued'
                      WHEN o.retryable AND t.failure_count + o.failed <= t.max_retries THEN 'queued'
                      ELSE 'failed' END,
        run_after = CASE WHEN o.failed = 1 AND o.retryable AND t.cancel_requested_at IS NULL
                              AND t.pause_requested_at IS NULL
                              AND t.failure_count + o.failed <= t.max_retries
                         THEN now() + make_interval(
                                  secs => coalesce(t.backoff_seconds[t.failure_count + o.failed], 0))
                         ELSE now() END,
        worker_id = NULL,
        -- the attempt's last update_progress value comes with its outcome
        progress = coalesce(o.progress, t.progress),
        progress_attempt = CASE WHEN o.progress IS NULL THEN t.progress_attempt
                                ELSE o.attempt END,
        result = CASE WHEN o.run_status = 'completed' THEN o.result ELSE t.result END,
        -- a completed task has no last error (its runs keep every attempt's)
        last_error = CASE WHEN o.run_status = 'completed' THEN NULL
                          WHEN o.run_status = 'canceled' AND t.cancel_requested_at IS NULL
                               AND t.pause_requested_at IS NOT NULL
                          THEN jsonb_build_object('type', 'WorkflowPaused', 'message', 'its workflow was paused while this attempt ran; the attempt does not count',
                                                  'attempt', o.attempt)
                          ELSE jsonb_build_object('type', o.error_type, 'message', o.error_message,
                                                  'attempt', o.attempt) END,
        finished_at = CASE WHEN o.run_status = 'completed'
                                OR t.cancel_requested_at IS NOT NULL
                                OR (o.run_status NOT IN ('interrupted', 'canceled')
                                    AND NOT (o.retryable
                                             AND t.failure_count + o.failed <= t.max_retries))
                           THEN o.finished_at END
    FROM input AS o
    -- worker_id is set only while a task is running (every way out of running clears it), so it
    -- and the attempt are the whole guard. Each input row is one primary-key lookup: the guard
    -- compares with input columns (a MATERIALIZED CTE, so they stay columns), because written
    -- as "t.worker_id = <constant>" or "t.status = 'running'" the planner expects it to leave
    -- a handful of task rows, and on a table of a few thousand rows scans them all, re-reading
    -- the whole input for each one (~250 ms per 1,000 rows instead of ~10).
    WHERE t.id = o.task_id AND t.attempt_count = o.attempt AND t.worker_id = o.worker_id
    -- A run its worker stopped for its workflow's pause is recorded as interrupted by it.
    RETURNING t.id, t.status, t.run_after, t.attempt_count,
              CASE WHEN o.run_status = 'canceled' AND t.cancel_requested_at IS NULL
                   THEN 'interrupted' ELSE o.run_status END AS run_status, o.started_at,
              o.finished_at, o.result AS run_result,
              CASE WHEN o.run_status = 'canceled' AND t.cancel_requested_at IS NULL
                        AND t.pause_requested_at IS NOT NULL
                   THEN 'WorkflowPaused' ELSE o.error_type END AS error_type,
              CASE WHEN o.run_status = 'canceled' AND t.cancel_requested_at IS NULL
                        AND t.pause_requested_at IS NOT NULL
                   THEN 'its workflow was paused while this attempt ran; the attempt does not count' ELSE o.error_message END AS error_message, o.tb
), runs AS (
    -- Driven by the rows that passed the guard, one unique-index lookup each. (A filter on the
    -- run's own status here would let the planner, on a fresh table, guess that few rows match
    -- and scan them all against the whole batch.)
    UPDATE task_run AS r
    SET status = u.run_status, started_at = coalesce(u.started_at, r.started_at),
        finished_at = u.finished_at, result = u.run_result,
        error_type = u.error_type, error_message = u.error_message, traceback = u.tb
    FROM updated AS u
    WHERE r.task_id = u.id AND r.attempt_number = u.attempt_count
)
-- Completed tasks need nothing more from the worker: return only retries and failures.
SELECT id, status, run_after, attempt_count FROM updated WHERE status <> 'completed'

-- give_back_tasks --
-- Claimed but never started (shutdown, or an executor died before reaching them): undo the
-- claim as if it never happened (a task whose cancel was asked for meanwhile ends canceled; a
-- step whose workflow was paused meanwhile is held, paused).
-- (The guard compares with input columns for the reason given at finish_runs.)
WITH input AS MATERIALIZED (
    SELECT i.task_id, i.attempt, 'running'::text AS status, %(worker_id)s::uuid AS worker_id
    FROM unnest(%(task_ids)s::uuid[], %(attempts)s::integer[]) AS i(task_id, attempt)
), undone AS (
    UPDATE task AS t
    SET status = CASE WHEN t.cancel_requested_at IS NOT NULL THEN 'canceled'
                      WHEN t.pause_requested_at IS NOT NULL THEN 'paused' ELSE 'queued' END,
        finished_at = CASE WHEN t.cancel_requested_at IS NULL THEN NULL ELSE now() END,
        attempt_count = t.attempt_count - 1, worker_id = NULL
    FROM input AS i
    WHERE t.id = i.task_id AND t.attempt_count = i.attempt AND t.status = i.status
      AND t.worker_id = i.worker_id
    RETURNING t.id, i.attempt
), dropped AS (
    DELETE FROM task_run AS r
    USING undone AS u
    WHERE r.task_id = u.id AND r.attempt_number = u.attempt
)
SELECT count(*) AS n, pg_notify('hyrex_like_' || current_schema(), '') FROM undone

-- give_back_unknown --
-- After a dropped connection, a claim may have committed without its rows reaching us: hand
-- back this worker's running tasks that it does not know it holds (their runs never started).
WITH undone AS (
    UPDATE task AS t
    SET status = CASE WHEN t.cancel_requested_at IS NOT NULL THEN 'canceled'
                      WHEN t.pause_requested_at IS NOT NULL THEN 'paused' ELSE 'queued' END,
        finished_at = CASE WHEN t.cancel_requested_at IS NULL THEN NULL ELSE now() END,
        attempt_count = t.attempt_count - 1, worker_id = NULL
    WHERE t.status = 'running' AND t.worker_id = %(worker_id)s
      AND NOT (t.id = ANY(%(known)s::uuid[]))
    RETURNING t.id, t.attempt_count + 1 AS attempt
), dropped AS (
    DELETE FROM task_run AS r
    USING undone AS u
    WHERE r.task_id = u.id AND r.attempt_number = u.attempt
)
SELECT count(*) AS n FROM undone

-- mark_runs_started --
-- When bodies still running began (epoch seconds, as the worker saw them), for the rescuer: a
-- dead worker's run with a start is lost, one without is undone. Only this worker's open runs.
-- (The guard compares with input columns for the reason given at finish_runs.)
WITH input AS MATERIALIZED (
    SELECT i.task_id, i.attempt, to_timestamp(i.started) AS started_at,
           'running'::text AS status, %(worker_id)s::uuid AS worker_id
    FROM unnest(%(task_ids)s::uuid[], %(attempts)s::integer[], %(started)s::double precision[])
         AS i(task_id, attempt, started)
)
UPDATE task_run AS r
SET started_at = i.started_at
FROM input AS i
WHERE r.task_id = i.task_id AND r.attempt_number = i.attempt AND r.status = i.status
  AND r.worker_id = i.worker_id

-- register_worker --
INSERT INTO worker (id, hostname, pid, queues, task_names, processes)
VALUES (%(id)s, %(hostname)s, %(pid)s, %(queues)s, %(task_names)s, %(processes)s)
ON CONFLICT (id) DO UPDATE
SET status = 'running', heartbeat_at = now(), stopped_at = NULL

-- heartbeat --
-- Also the tasks this worker runs whose cancel (or its workflow's pause) was asked for: found
-- here if the control channel's NOTIFY was missed (the LISTEN connection was down), one probe
-- of the running index.
UPDATE worker SET heartbeat_at = now()
WHERE id = %(id)s AND status = 'running'
RETURNING id, ARRAY(SELECT t.id FROM task AS t
                    WHERE t.status = 'running' AND t.worker_id = %(id)s
                      AND (t.cancel_requested_at IS NOT NULL
                           OR t.pause_requested_at IS NOT NULL)) AS cancel

-- stop_worker --
UPDATE worker SET status = 'stopped', stopped_at = now() WHERE id = %(id)s

-- rescue_lost_tasks --
-- Requeue the running tasks of workers whose heartbeat is stale and mark those workers lost.
-- An attempt whose body began (its run has a start: see mark_runs_started) is closed as lost;
-- not being the task's fault, it is requeued whatever its retry budget. A claim whose body
-- never began is undone as a give-back is (run row deleted, attempt count restored). A body
-- that began after its worker's last mark looks unstarted and is undone too: the task runs
-- again either way, that attempt just goes unrecorded. With %(full)s, also the running tasks
-- of any worker that is not running (or has no row): those an earlier rescue skipped while
-- they were locked.
WITH dead AS (
    SELECT id FROM worker
    WHERE status = 'running'
      AND heartbeat_at < now() - make_interval(secs => %(stale_seconds)s)
    FOR UPDATE SKIP LOCKED
), marked AS (
    UPDATE worker AS w SET status = 'lost', stopped_at = now()
    FROM dead WHERE w.id = dead.id
    RETURNING w.id
), orphans AS (
    -- one probe of the running-tasks index per dead worker: nearly free when none is dead
    SELECT t.id, t.attempt_count
    FROM task AS t
    WHERE t.status = 'running' AND t.worker_id IN (SELECT id FROM dead)
    FOR UPDATE OF t SKIP LOCKED
), strays AS (
    -- Reads every running task, so the worker asks for it every stale_after seconds, not at
    -- every heartbeat. (A dead worker is still 'running' in this snapshot: no overlap.)
    SELECT t.id, t.attempt_count
    FROM task AS t
    WHERE %(full)s::boolean AND t.status = 'running'
      AND NOT EXISTS (SELECT 1 FROM worker AS w
                      WHERE w.id = t.worker_id AND w.status = 'running')
    FOR UPDATE OF t SKIP LOCKED
), held AS (
    SELECT o.id, o.attempt_count, r.started_at IS NOT NULL AS began
    FROM (SELECT * FROM orphans UNION ALL SELECT * FROM strays) AS o
    LEFT JOIN task_run AS r ON r.task_id = o.id AND r.attempt_number = o.attempt_count
), requeued AS (
    UPDATE task AS t
    -- a task whose cancel was asked for ends canceled with its worker, not requeued (and a
    -- step whose workflow was paused is held, paused)
    SET status = CASE WHEN t.cancel_requested_at IS NOT NULL THEN 'canceled'
                      WHEN t.pause_requested_at IS NOT NULL THEN 'paused' ELSE 'queued' END,
        finished_at = CASE WHEN t.cancel_requested_at IS NULL THEN NULL ELSE now() END,
        worker_id = NULL, run_after = now(),
        attempt_count = CASE WHEN h.began THEN t.attempt_count ELSE t.attempt_count - 1 END,
        last_error = CASE WHEN h.began
                          THEN jsonb_build_object('type', 'WorkerLost',
                                                  'message', 'the worker running this attempt '
                                                             'stopped heartbeating or is gone',
                                                  'attempt', h.attempt_count)
                          ELSE t.last_error END
    FROM held AS h
    WHERE t.id = h.id
    RETURNING t.id, h.attempt_count AS attempt, h.began
), closed AS (
    UPDATE task_run AS r
    SET status = 'lost', finished_at = now(), error_type = 'WorkerLost',
        error_message = 'the worker running this attempt stopped heartbeating or is gone'
    FROM requeued AS q
    WHERE q.began AND r.task_id = q.id AND r.attempt_number = q.attempt
    RETURNING r.task_id, r.started_at
), tallied AS (
    -- the lost attempts per queue, with the seconds they ran: the rescuer adds them to its
    -- minute tallies (queue_minute), as a writer adds the attempts it ends
    SELECT t.queue::text AS queue, count(*)::int AS attempts,
           coalesce(sum(extract(epoch FROM now() - c.started_at)), 0)::float8 AS run_seconds
    FROM closed AS c JOIN task AS t ON t.id = c.task_id
    GROUP BY t.queue
), dropped AS (
    DELETE FROM task_run AS r
    USING requeued AS q
    WHERE NOT q.began AND r.task_id = q.id AND r.attempt_number = q.attempt
)
SELECT (SELECT count(*) FROM marked) AS workers, (SELECT count(*) FROM requeued) AS tasks,
       CASE WHEN (SELECT count(*) FROM requeued) > 0
            THEN pg_notify('hyrex_like_' || current_schema(), '') END AS notified,
       floor(extract(epoch FROM now()) / 60)::bigint AS minute,
       (SELECT array_agg(queue ORDER BY queue) FROM tallied) AS lost_queues,
       (SELECT array_agg(attempts ORDER BY queue) FROM tallied) AS lost_attempts,
       (SELECT array_agg(run_seconds ORDER BY queue) FROM tallied) AS lost_seconds

-- get_task --
SELECT id, task_name, queue, priority, status, args, max_retries, timeout_seconds,
       backoff_seconds, attempt_count, failure_count, run_after, parent_id, root_id, worker_id, created_at,
       started_at, finished_at, result, last_error, idempotency_key, cancel_requested_at,
       scheduled_for, workflow_id, workflow_step, pause_requested_at, progress
FROM task WHERE id = %(id)s

-- get_workflow_tasks --
-- A workflow's step tasks, in step order (one probe of task_workflow_step_idx).
SELECT id, task_name, queue, priority, status, args, max_retries, timeout_seconds,
       backoff_seconds, attempt_count, failure_count, run_after, parent_id, root_id, worker_id, created_at,
       started_at, finished_at, result, last_error, idempotency_key, cancel_requested_at,
       scheduled_for, workflow_id, workflow_step, pause_requested_at, progress
FROM task WHERE workflow_id = %(id)s::uuid
ORDER BY workflow_step

-- get_task_runs --
SELECT task_id, attempt_number, status, worker_id, claimed_at, started_at, finished_at, result,
       error_type, error_message, traceback
FROM task_run WHERE task_id = %(id)s ORDER BY attempt_number

-- migrations_table_exists --
SELECT to_regclass('schema_migrations') IS NOT NULL

-- lock_migrations --
-- One migrator at a time, across every schema and process (released at commit).
SELECT pg_advisory_xact_lock(%(key)s)

-- create_migrations_table --
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)

-- record_migration --
INSERT INTO schema_migrations (version, name) VALUES (%(version)s, %(name)s)

-- schema_version --
SELECT max(version) FROM schema_migrations

-- list_tasks --
SELECT id, task_name, queue, priority, status, args, attempt_count, created_at
FROM task
WHERE (%(task_name)s::text IS NULL OR task_name = %(task_name)s::text)
  AND (%(status)s::text IS NULL OR status = %(status)s::text)
ORDER BY created_at, id
LIMIT %(limit)s

-- try_lead_rescue --
-- One worker per schema runs the rescue scan: the one holding this session lock. PostgreSQL
-- releases it when that connection ends, and another worker takes it at its next pass.
SELECT pg_try_advisory_lock(%(lock_class)s, hashtext(current_schema()))

-- release_rescue --
-- A stopping rescuer hands over at once rather than when its connection's end is noticed.
SELECT pg_advisory_unlock(%(lock_class)s, hashtext(current_schema()))

-- watch_client --
-- Server-side keepalives on the upkeep connection: if the worker's host vanishes, the server
-- ends its session (freeing the rescuer's lock) in about 30 s, not after the OS's 2 hours.
SELECT set_config('tcp_keepalives_idle', '10', false),
       set_config('tcp_keepalives_interval', '5', false),
       set_config('tcp_keepalives_count', '3', false),
       set_config('tcp_user_timeout', '30000', false)

-- cancel_tasks --
-- Cancel a task (with %(children)s, also every task sent from it, at any depth): a queued (or
-- paused) one becomes canceled at once; a running one gets cancel_requested_at, and its worker is told on
-- the control channel (payload: worker id, space, task id). One UPDATE, so a claim or a finish
-- racing it is waited for and re-read: the row it changes is the latest. Returns the tasks it
-- changed, with their new status (canceled, or running: a stop was requested).
WITH RECURSIVE tree AS (
    SELECT %(id)s::uuid AS id
    UNION
    SELECT t.id FROM task AS t JOIN tree ON t.parent_id = tree.id WHERE %(children)s::boolean
), changed AS (
    UPDATE task AS t
    SET status = CASE WHEN t.status = 'running' THEN t.status ELSE 'canceled' END,
        finished_at = CASE WHEN t.status = 'running' THEN t.finished_at ELSE now() END,
        cancel_requested_at = coalesce(t.cancel_requested_at, now())
    FROM tree
    WHERE t.id = tree.id AND t.status IN ('queued', 'running', 'paused')
    RETURNING t.id, t.status, t.worker_id
)
SELECT id, status,
       CASE WHEN status = 'running'
            THEN pg_notify(%(control)s, worker_id::text || ' ' || id::text) END AS told
FROM changed

-- retry_task --
-- Retry by hand: a failed or canceled task is queued again with a fresh retry budget (its
-- attempt numbers go on; its runs stay). A key it holds may be taken meanwhile: then the
-- unique index refuses, and the caller says so.
WITH queued AS (
    UPDATE task
    SET status = 'queued', failure_count = 0, run_after = now(), finished_at = NULL,
        cancel_requested_at = NULL, pause_requested_at = NULL, worker_id = NULL
    WHERE id = %(id)s::uuid AND status IN ('failed', 'canceled')
      -- a workflow's step only while its run goes on (resume a paused one; a canceled one is over)
      AND (workflow_id IS NULL
           OR EXISTS (SELECT 1 FROM workflow AS w
                      WHERE w.id = task.workflow_id AND w.state = 'running'))
    RETURNING id
)
SELECT id, pg_notify('hyrex_like_' || current_schema(), '') FROM queued

-- prune_candidates --
-- Retention, step 1: look at the next %(limit)s tasks in id order after %(after)s (a walk of the
-- primary key: no index on finished_at for the send and finish paths to pay for) and return the
-- last id looked at (NULL: the walk is over) with those of them finished in %(statuses)s before
-- the cutoff. Bounded by the rows looked at, not the rows found, so that one step takes about
-- the same short time however few tasks are due (the worker's retention has a time budget).
WITH seen AS (
    SELECT id, status, finished_at FROM task
    WHERE id > %(after)s::uuid
    ORDER BY id
    LIMIT %(limit)s
)
SELECT (SELECT id FROM seen ORDER BY id DESC LIMIT 1) AS last,
       ARRAY(SELECT id FROM seen
             WHERE status = ANY(%(statuses)s::text[])
               AND finished_at < now() - make_interval(secs => %(older_than)s)
             ORDER BY id) AS due

-- prune_tasks --
-- Retention, step 2: delete a small batch of those tasks and their runs, re-checked here. A
-- task of a tree (its root and every task sent from inside it, at any depth) of which a task
-- is still queued or running stays: the tree stays whole while it runs. A row another
-- transaction holds is skipped, never waited for.
WITH doomed AS (
    SELECT t.id FROM task AS t
    WHERE t.id = ANY(%(ids)s::uuid[]) AND t.status = ANY(%(statuses)s::text[])
      AND t.finished_at < now() - make_interval(secs => %(older_than)s)
      -- the tree's root (a pk lookup), then its other unfinished tasks (task_tree_live_idx)
      AND NOT EXISTS (SELECT 1 FROM task AS r
                      WHERE r.id = t.root_id AND r.status IN ('queued', 'running'))
      AND NOT EXISTS (SELECT 1 FROM task AS w
                      WHERE w.root_id = coalesce(t.root_id, t.id)
                        AND w.root_id IS NOT NULL AND w.status IN ('queued', 'running'))
      -- a step of a workflow that is not over (running, including failed and resumable, or
      -- paused) stays: its results feed the steps still to run
      AND NOT EXISTS (SELECT 1 FROM workflow AS f
                      WHERE f.id = t.workflow_id AND f.state IN ('running', 'paused'))
    FOR UPDATE OF t SKIP LOCKED
), runs AS (
    DELETE FROM task_run AS r USING doomed AS d WHERE r.task_id = d.id
)
DELETE FROM task AS t USING doomed AS d WHERE t.id = d.id

-- prune_workflows --
-- Retention, last step of a walk: delete up to %(limit)s completed or canceled workflows that
-- finished before the cutoff and have no step task left (the walk deleted them).
DELETE FROM workflow AS f
WHERE f.id IN (SELECT w.id FROM workflow AS w
               WHERE w.state IN ('completed', 'canceled')
                 AND w.finished_at < now() - make_interval(secs => %(older_than)s)
                 AND NOT EXISTS (SELECT 1 FROM task AS t WHERE t.workflow_id = w.id)
               LIMIT %(limit)s
               FOR UPDATE SKIP LOCKED)

-- insert_schedule_ticks --
-- A scheduler's pass for one schedule (its name is its task's name): the ticks it found due,
-- each with a task id made beforehand, as one statement. A tick another scheduler recorded
-- first is skipped (ON CONFLICT: the insert waits for that scheduler's commit, then does
-- nothing); the tasks are inserted from the tick rows this statement inserted, so a tick has
-- its task or no row at all, whatever crashes when. Ticks go in in time order, so two
-- schedulers racing on the same ticks wait for each other in one order, never in a circle.
-- Returns the tick times it made tasks for, and wakes the workers when there are any.
WITH ticked AS (
    INSERT INTO schedule_tick (schedule_name, tick_at, task_id)
    SELECT %(schedule_name)s, i.tick_at, i.id
    FROM unnest(%(ticks)s::timestamptz[], %(ids)s::uuid[]) AS i(tick_at, id)
    ORDER BY i.tick_at
    ON CONFLICT (schedule_name, tick_at) DO NOTHING
    RETURNING tick_at, task_id
), made AS (
    -- due at once (run_after = created_at: out of task_due_idx like any send), but never
    -- before its tick by this server's clock: a scheduler whose host clock runs fast finds a
    -- tick due early, and the task then waits for its time as a delayed one does
    INSERT INTO task (id, task_name, queue, priority, args, max_retries, timeout_seconds,
                      backoff_seconds, run_after, scheduled_for)
    SELECT k.task_id, %(schedule_name)s, %(queue)s, %(priority)s, %(args)s::jsonb,
           %(max_retries)s, %(timeout_seconds)s, %(backoff_seconds)s::double precision[],
           greatest(now(), k.tick_at), k.tick_at
    FROM ticked AS k
    RETURNING scheduled_for
)
SELECT coalesce(array_agg(m.scheduled_for ORDER BY m.scheduled_for), ARRAY[]::timestamptz[]) AS made,
       CASE WHEN count(*) > 0 THEN pg_notify('hyrex_like_' || current_schema(), '') END
           AS notified
FROM made AS m

-- schedule_last_ticks --
-- The newest tick recorded for each of these schedules (none: no row): where a scheduler that
-- starts or reconnects resumes. One backward probe of the primary key per name.
SELECT n.name, s.tick_at
FROM unnest(%(names)s::text[]) AS n(name)
CROSS JOIN LATERAL (
    SELECT k.tick_at FROM schedule_tick AS k
    WHERE k.schedule_name = n.name
    ORDER BY k.tick_at DESC
    LIMIT 1) AS s

-- schedule_states --
-- For hy.schedules(): the newest tick of each of these schedules, its task and that task's
-- status (NULL when the task was pruned since).
SELECT n.name, s.tick_at, s.task_id, t.status
FROM unnest(%(names)s::text[]) AS n(name)
CROSS JOIN LATERAL (
    SELECT k.tick_at, k.task_id FROM schedule_tick AS k
    WHERE k.schedule_name = n.name
    ORDER BY k.tick_at DESC
    LIMIT 1) AS s
LEFT JOIN task AS t ON t.id = s.task_id

-- prune_schedule_ticks --
-- The scheduler's upkeep: delete up to %(limit)s tick rows of a schedule older than %(before)s,
-- never its newest (where schedulers resume). A scheduler only ever fires ticks after the
-- newest it read, so a tick well older than that is never fired again, recorded or not (the
-- caller's cutoff keeps the catch-up window and a day more). Rows another scheduler is
-- deleting are skipped, not waited for.
WITH doomed AS (
    SELECT k.tick_at FROM schedule_tick AS k
    WHERE k.schedule_name = %(schedule_name)s
      AND k.tick_at < %(before)s::timestamptz
      AND k.tick_at < (SELECT n.tick_at FROM schedule_tick AS n
                       WHERE n.schedule_name = %(schedule_name)s
                       ORDER BY n.tick_at DESC LIMIT 1)
    ORDER BY k.tick_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM schedule_tick AS k
USING doomed AS d
WHERE k.schedule_name = %(schedule_name)s AND k.tick_at = d.tick_at

-- write_progress --
-- What running tasks last reported with update_progress (coalesced by their worker), written
-- only onto the running attempt that reported it: a late write never covers a newer attempt's
-- value, nor the last value an ended attempt's outcome wrote (finish_runs). Rows another transaction holds (a finish, a claim) are skipped, not waited for: the
-- worker writes them at its next pass. Returns the ids written. (No status change: the
-- workflow trigger does not fire.)
WITH input AS MATERIALIZED (
    SELECT i.task_id, i.attempt, i.progress
    FROM unnest(%(task_ids)s::uuid[], %(attempts)s::integer[], %(progress)s::jsonb[])
         AS i(task_id, attempt, progress)
), held AS (
    SELECT t.id, i.attempt, i.progress
    FROM input AS i JOIN task AS t ON t.id = i.task_id AND t.attempt_count = i.attempt
    WHERE t.status = 'running'  -- an ended attempt's last value came with its outcome
    FOR UPDATE OF t SKIP LOCKED
)
UPDATE task AS t SET progress = h.progress, progress_attempt = h.attempt
FROM held AS h
WHERE t.id = h.id
RETURNING t.id

-- insert_workflow --
-- A workflow and the task rows of its first steps, in one statement: both or neither. (Sent
-- again after a lost connection, when the first try committed, it does nothing.)
WITH wf AS (
    INSERT INTO workflow (id, name, steps, args, on_failure)
    VALUES (%(id)s::uuid, %(name)s, %(steps)s::jsonb, %(args)s::jsonb, %(on_failure)s::jsonb)
    ON CONFLICT (id) DO NOTHING
    RETURNING *
)
SELECT workflow_start_ready(wf, %(sources)s::integer[]) FROM wf

-- get_workflow --
SELECT id, name, state, steps, args, on_failure, on_failure_task_id, created_at, paused_at,
       finished_at
FROM workflow WHERE id = %(id)s::uuid

-- list_workflows --
-- Newest first, keyset-paginated by (created_at, id); with each its steps' task statuses in
-- step order (with their step numbers and attempt counts), from which the summary is read.
SELECT w.id, w.name, w.state, w.created_at, w.finished_at, jsonb_array_length(w.steps) AS n,
       ARRAY(SELECT t.status::text FROM task AS t WHERE t.workflow_id = w.id
             ORDER BY t.workflow_step) AS statuses,
       ARRAY(SELECT t.workflow_step FROM task AS t WHERE t.workflow_id = w.id
             ORDER BY t.workflow_step) AS started,
       ARRAY(SELECT t.attempt_count::integer FROM task AS t WHERE t.workflow_id = w.id
             ORDER BY t.workflow_step) AS attempts, w.steps
FROM workflow AS w
WHERE (%(name)s::text IS NULL OR w.name = %(name)s)
  AND (%(before)s::timestamptz IS NULL OR (w.created_at, w.id) < (%(before)s, %(before_id)s::uuid))
ORDER BY w.created_at DESC, w.id DESC
LIMIT %(limit)s

-- lock_workflow_steps --
-- The second transaction of a pause, resume or cancel (the run's new state is committed) locks
-- the run's unfinished step tasks before the workflow row, the order a hand-off takes them in:
-- it waits for every hand-off that may have read the old state (see db/workflows.py).
SELECT id FROM task
WHERE workflow_id = %(id)s::uuid AND status IN ('queued', 'running', 'paused')
ORDER BY workflow_step
FOR UPDATE

-- lock_workflow --
SELECT state FROM workflow WHERE id = %(id)s::uuid FOR UPDATE

-- set_workflow_state --
UPDATE workflow
SET state = %(state)s,
    paused_at = CASE WHEN %(state)s = 'paused' THEN now() ELSE NULL END,
    finished_at = CASE WHEN %(state)s = 'canceled' THEN now() ELSE finished_at END
WHERE id = %(id)s::uuid

-- pause_workflow_steps --
-- Hold the queued steps (paused) and ask the workers of the running ones to stop them, as for
-- a cancel (the control channel; the heartbeat as fallback). A separate statement from the
-- state change, so that it sees every step a completion inserted before that change.
WITH held AS (
    UPDATE task AS t
    SET status = CASE WHEN t.status = 'queued' THEN 'paused' ELSE t.status END,
        pause_requested_at = now()
    WHERE t.workflow_id = %(id)s::uuid AND t.status IN ('queued', 'running')
    RETURNING t.id, t.status, t.worker_id
)
SELECT id, status,
       CASE WHEN status = 'running'
            THEN pg_notify(%(control)s, worker_id::text || ' ' || id::text) END AS told
FROM held

-- resume_workflow_steps --
-- Queue the held steps again (and withdraw the stop asked of running ones, which then end
-- interrupted and are requeued), then start every step whose predecessors completed meanwhile.
WITH queued AS (
    UPDATE task AS t
    SET status = CASE WHEN t.status = 'paused' THEN 'queued' ELSE t.status END,
        pause_requested_at = NULL, run_after = now()
    WHERE t.workflow_id = %(id)s::uuid AND t.status IN ('paused', 'running')
    RETURNING t.id
)
SELECT (SELECT count(*) FROM queued) AS queued,
       pg_notify('hyrex_like_' || current_schema(), '') AS told

-- start_ready_steps --
SELECT workflow_start_ready(w, ARRAY(SELECT generate_series(0, jsonb_array_length(w.steps) - 1)))
FROM workflow AS w WHERE w.id = %(id)s::uuid

-- retry_failed_steps --
-- Resume a failed workflow: its failed steps are queued again with a fresh retry budget, as a
-- retry by hand does (attempt numbers go on; runs stay).
WITH queued AS (
    UPDATE task
    SET status = 'queued', failure_count = 0, run_after = now(), finished_at = NULL,
        worker_id = NULL
    WHERE workflow_id = %(id)s::uuid AND status = 'failed'
    RETURNING id
)
SELECT count(*) AS queued, pg_notify('hyrex_like_' || current_schema(), '') AS told FROM queued

-- cancel_workflow_steps --
-- Cancel every unfinished step: queued or paused ones at once, running ones by their worker.
WITH changed AS (
    UPDATE task AS t
    SET status = CASE WHEN t.status = 'running' THEN t.status ELSE 'canceled' END,
        finished_at = CASE WHEN t.status = 'running' THEN t.finished_at ELSE now() END,
        cancel_requested_at = coalesce(t.cancel_requested_at, now())
    WHERE t.workflow_id = %(id)s::uuid AND t.status IN ('queued', 'running', 'paused')
    RETURNING t.id, t.status, t.worker_id
)
SELECT id, status,
       CASE WHEN status = 'running'
            THEN pg_notify(%(control)s, worker_id::text || ' ' || id::text) END AS told
FROM changed

-- ===== The key-value store (hy.kv, #17) =====
-- Expiry is compared with statement_timestamp(): inside a caller's long transaction (conn=) a
-- key expires when its time comes, not when the transaction began. An expired row is never
-- read back and counts as absent; the worker's upkeep deletes such rows (kv_delete_expired).

-- kv_set --
INSERT INTO kv (key, value, expires_at, updated_at)
VALUES (%(key)s, %(value)s::jsonb,
        statement_timestamp() + %(ttl)s::float8 * interval '1 second', statement_timestamp())
ON CONFLICT (key) DO UPDATE
SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at, updated_at = EXCLUDED.updated_at

-- kv_set_if_absent --
-- A row comes back if this statement wrote: a new key, or one whose value had expired. A
-- concurrent insert of the same key waits for the first to commit, then sees its live row.
INSERT INTO kv (key, value, expires_at, updated_at)
VALUES (%(key)s, %(value)s::jsonb,
        statement_timestamp() + %(ttl)s::float8 * interval '1 second', statement_timestamp())
ON CONFLICT (key) DO UPDATE
SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at, updated_at = EXCLUDED.updated_at
WHERE kv.expires_at <= statement_timestamp()
RETURNING true AS written

-- kv_get --
SELECT value FROM kv
WHERE key = %(key)s AND (expires_at IS NULL OR expires_at > statement_timestamp())

-- kv_delete --
-- Deletes an expired row too, but says whether the key was live.
DELETE FROM kv WHERE key = %(key)s
RETURNING expires_at IS NULL OR expires_at > statement_timestamp() AS live

-- kv_delete_expired --
-- One batch of expired keys (kv_expires_idx), skipping rows another transaction holds; the
-- outer condition is checked again on the locked row (a key set again meanwhile stays).
DELETE FROM kv
WHERE key IN (
    SELECT key FROM kv WHERE expires_at <= statement_timestamp()
    ORDER BY expires_at LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
) AND expires_at <= statement_timestamp()

-- lock_queue_settings --
-- Taken before a setting changes, in the same transaction: waits for the claims under way
-- (each holds the table's ACCESS SHARE lock while it runs) and holds new ones back until the
-- change commits, so no claim that read the old setting is still running afterwards.
LOCK TABLE queue IN ACCESS EXCLUSIVE MODE

-- queue_set_limit --
-- A queue's concurrency limit (NULL: none); the queue's row is made if it has none. Wakes the
-- workers, who may now claim more.
WITH changed AS (
    INSERT INTO queue (name, concurrency_limit) VALUES (%(name)s, %(limit)s)
    ON CONFLICT (name) DO UPDATE SET concurrency_limit = excluded.concurrency_limit,
                                     updated_at = now()
    RETURNING name
)
SELECT name, pg_notify(%(channel)s, '') FROM changed

-- queue_pause --
-- Pause a queue (kept paused if it was): claims leave it out from now on. Tells the workers on
-- the control channel, so each hands back what it claimed of it and has not started.
WITH changed AS (
    INSERT INTO queue (name, paused_at) VALUES (%(name)s, now())
    ON CONFLICT (name) DO UPDATE SET paused_at = coalesce(queue.paused_at, now()),
                                     updated_at = now()
    RETURNING name
)
SELECT name, pg_notify(%(control)s, 'pause ' || name) FROM changed

-- queue_resume --
-- Resume a queue: true if it was paused. Wakes the workers to claim it.
WITH changed AS (
    UPDATE queue SET paused_at = NULL, updated_at = now()
    WHERE name = %(name)s AND paused_at IS NOT NULL
    RETURNING name
)
SELECT EXISTS (SELECT 1 FROM changed), pg_notify(%(channel)s, '')

-- list_queues --
-- Every queue with a setting or with tasks queued or running: its limit, when it was paused,
-- and how many of its tasks are queued (ready or waiting) and running.
WITH counts AS (
    SELECT queue, count(*) FILTER (WHERE status = 'queued') AS queued,
           count(*) FILTER (WHERE status = 'running') AS running
    FROM task
    WHERE status IN ('queued', 'running')
    GROUP BY queue
)
SELECT coalesce(q.name, c.queue)::text AS name, q.concurrency_limit, q.paused_at,
       coalesce(c.queued, 0) AS queued, coalesce(c.running, 0) AS running
FROM queue AS q
FULL JOIN counts AS c ON c.queue = q.name
ORDER BY 1

-- list_workers --
-- The workers running now and those that stopped or were declared lost in the last
-- %(recent)s seconds, newest first, each with how many tasks it holds as running now
-- (task_running_idx). Two branches, each on its partial index (worker_alive_idx,
-- worker_ended_idx), so the rows of workers that ended long ago are never read.
SELECT w.id, w.hostname, w.pid, w.queues, w.task_names, w.processes, w.status, w.started_at,
       w.heartbeat_at, w.stopped_at,
       (SELECT count(*) FROM task AS t WHERE t.status = 'running' AND t.worker_id = w.id)
FROM (
    SELECT * FROM worker WHERE status = 'running'
    UNION ALL
    SELECT * FROM worker
    WHERE status <> 'running' AND stopped_at >= now() - make_interval(secs => %(recent)s)
) AS w
ORDER BY w.started_at DESC, w.id

-- ==================================================================== inspection (#18) --
-- Reads for hy.list_tasks / task_detail / stats / throughput (hyrex_like/db/inspect.py) and
-- the worker's minute tallies. Each is served by an index (docs/performance.md, "Inspection
-- reads"); a status filter has its own statement so the partial indexes match generic plans.

-- inspect_tasks --
-- A page of tasks, newest first: walk the primary key (ids are time-ordered UUIDv7) down from
-- %(after)s to %(floor)s, at most %(budget)s rows, keeping those that match.
SELECT s.id, s.task_name, s.queue, s.status, s.priority, s.attempt_count, s.max_retries,
       s.created_at, s.run_after, s.parent_id, s.workflow_id
FROM (
    SELECT id, task_name, queue, status, priority, attempt_count, max_retries, created_at,
           run_after, parent_id, workflow_id
    FROM task
    WHERE id < %(after)s::uuid AND id >= %(floor)s::uuid
    ORDER BY id DESC
    LIMIT %(budget)s
) AS s
WHERE (%(name)s::text IS NULL OR s.task_name = %(name)s::text)
  AND (%(queue)s::text IS NULL OR s.queue = %(queue)s::text)
  AND (%(status)s::text IS NULL OR s.status = %(status)s::text)
  AND (%(since)s::timestamptz IS NULL OR s.created_at >= %(since)s::timestamptz)
ORDER BY s.id DESC
LIMIT %(limit)s

-- inspect_tasks_scanned --
-- Where inspect_tasks's walk of the primary key ended if it read all %(budget)s rows: the
-- last id it read (no row: the walk reached the end first). Read in the page's snapshot
-- (a REPEATABLE READ transaction), so the next page starts exactly where this one stopped.
SELECT id FROM task
WHERE id < %(after)s::uuid AND id >= %(floor)s::uuid
ORDER BY id DESC
OFFSET %(budget)s - 1
LIMIT 1

-- inspect_tasks_running --
-- Running tasks, newest first (task_running_idx): every running one that matches, then the
-- newest of them after the cursor. Materialized, with the cursor applied outside: otherwise a
-- generic plan takes the cursor's id range for a narrow one and walks the primary key down to
-- the floor instead. Its cost grows with the running tasks (at most the workers' processes).
-- (Queued tasks, whose backlog can be huge, are listed by inspect_tasks instead: a walk of the
-- primary key down from the newest, bounded by the scan budget.)
WITH hit AS MATERIALIZED (
    SELECT id, task_name, queue, status, priority, attempt_count, max_retries, created_at,
           run_after, parent_id, workflow_id
    FROM task
    WHERE status = 'running'
      AND (%(name)s::text IS NULL OR task_name = %(name)s::text)
      AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s::timestamptz)
)
SELECT id, task_name, queue, status, priority, attempt_count, max_retries, created_at,
       run_after, parent_id, workflow_id
FROM hit
WHERE id < %(after)s::uuid AND id >= %(floor)s::uuid
ORDER BY id DESC
LIMIT %(limit)s

-- inspect_tasks_running_in_queue --
-- inspect_tasks_running for one queue (task_queue_running_idx).
WITH hit AS MATERIALIZED (
    SELECT id, task_name, queue, status, priority, attempt_count, max_retries, created_at,
           run_after, parent_id, workflow_id
    FROM task
    WHERE status = 'running' AND queue = %(queue)s::text
      AND (%(name)s::text IS NULL OR task_name = %(name)s::text)
      AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s::timestamptz)
)
SELECT id, task_name, queue, status, priority, attempt_count, max_retries, created_at,
       run_after, parent_id, workflow_id
FROM hit
WHERE id < %(after)s::uuid AND id >= %(floor)s::uuid
ORDER BY id DESC
LIMIT %(limit)s

-- inspect_tasks_paused --
-- Paused tasks are steps of paused workflows: those (workflow_live_idx), then their steps
-- (task_workflow_step_idx), each step set materialized as inspect_tasks_running (a generic
-- plan would otherwise walk every step of every workflow ever run).
WITH paused AS MATERIALIZED (
    SELECT id FROM workflow WHERE state = 'paused'
), hit AS MATERIALIZED (
    SELECT t.id, t.task_name, t.queue, t.status, t.priority, t.attempt_count, t.max_retries,
           t.created_at, t.run_after, t.parent_id, t.workflow_id
    FROM paused AS w JOIN task AS t ON t.workflow_id = w.id
    WHERE t.status = 'paused'
      AND (%(queue)s::text IS NULL OR t.queue = %(queue)s::text)
      AND (%(name)s::text IS NULL OR t.task_name = %(name)s::text)
      AND (%(since)s::timestamptz IS NULL OR t.created_at >= %(since)s::timestamptz)
)
SELECT id, task_name, queue, status, priority, attempt_count, max_retries, created_at,
       run_after, parent_id, workflow_id
FROM hit
WHERE id < %(after)s::uuid AND id >= %(floor)s::uuid
ORDER BY id DESC
LIMIT %(limit)s

-- inspect_task_summary --
-- One task as a summary row (the primary key).
SELECT id, task_name, queue, status, priority, attempt_count, max_retries, created_at,
       run_after, parent_id, workflow_id
FROM task WHERE id = %(id)s::uuid

-- inspect_children --
-- The tasks a task sent, oldest first, at most 200 (task_parent_idx).
SELECT id, task_name, queue, status, priority, attempt_count, max_retries, created_at,
       run_after, parent_id, workflow_id
FROM task WHERE parent_id = %(id)s::uuid
ORDER BY id
LIMIT 200

-- inspect_queue_stats --
-- Per queue: ready (due) and waiting queued tasks (task_queue_idx), running ones
-- (task_queue_running_idx), when the oldest ready one became due (one probe per priority) and
-- its settings. The queues: those with settings, those with queued or running tasks (found
-- by skipping through the partial indexes, one probe per queue), and those with ended
-- attempts in the last %(minutes)s minutes (queue_minute).
WITH RECURSIVE queued_names AS (
    (SELECT queue FROM task WHERE status = 'queued' ORDER BY queue LIMIT 1)
    UNION ALL
    SELECT (SELECT t.queue FROM task AS t
            WHERE t.status = 'queued' AND t.queue > n.queue ORDER BY t.queue LIMIT 1)
    FROM queued_names AS n WHERE n.queue IS NOT NULL
), running_names AS (
    (SELECT queue FROM task WHERE status = 'running' ORDER BY queue LIMIT 1)
    UNION ALL
    SELECT (SELECT t.queue FROM task AS t
            WHERE t.status = 'running' AND t.queue > n.queue ORDER BY t.queue LIMIT 1)
    FROM running_names AS n WHERE n.queue IS NOT NULL
), names AS (
    SELECT name::text AS queue FROM queue
    UNION SELECT queue::text FROM queued_names WHERE queue IS NOT NULL
    UNION SELECT queue::text FROM running_names WHERE queue IS NOT NULL
    UNION SELECT queue::text FROM queue_minute
          WHERE minute >= to_timestamp((floor(extract(epoch FROM now()) / 60) - %(minutes)s) * 60)
            AND minute <= now()
)
SELECT n.queue,
       (SELECT count(*) FROM task AS t
        WHERE t.status = 'queued' AND t.queue = n.queue AND t.run_after <= now()),
       (SELECT count(*) FROM task AS t
        WHERE t.status = 'queued' AND t.queue = n.queue AND t.run_after > now()),
       (SELECT count(*) FROM task AS t WHERE t.status = 'running' AND t.queue = n.queue),
       extract(epoch FROM now() - (
           SELECT min(o.run_after)
           FROM generate_series(1, 10) AS p
           CROSS JOIN LATERAL (
               SELECT t.run_after FROM task AS t
               WHERE t.status = 'queued' AND t.queue = n.queue AND t.priority = p::smallint
                 AND t.run_after <= now()
               ORDER BY t.run_after LIMIT 1
           ) AS o
       ))::float8,
       s.concurrency_limit, s.paused_at IS NOT NULL
FROM names AS n
LEFT JOIN queue AS s ON s.name = n.queue
ORDER BY n.queue

-- inspect_throughput --
-- Attempts ended in the window per queue and run status, from the workers' minute tallies (a
-- range of queue_minute's primary key: the bound on both sides keeps a generic plan on it).
SELECT queue::text, status, sum(attempts)::bigint, sum(run_seconds)::float8
FROM queue_minute
WHERE minute >= to_timestamp((floor(extract(epoch FROM now()) / 60) - %(minutes)s) * 60)
  AND minute <= now()
GROUP BY queue, status

-- inspect_window --
-- The start of the last %(minutes)s whole minutes and the current one, and now.
SELECT to_timestamp((floor(extract(epoch FROM now()) / 60) - %(minutes)s) * 60), now()

-- inspect_throughput_minutes --
-- inspect_throughput per minute, oldest first.
SELECT minute, queue::text, status, sum(attempts)::bigint
FROM queue_minute
WHERE minute >= to_timestamp((floor(extract(epoch FROM now()) / 60) - %(minutes)s) * 60)
  AND minute <= now()
GROUP BY minute, queue, status
ORDER BY minute, queue

-- inspect_workers_alive --
-- How many workers are running (worker_alive_idx).
SELECT count(*) FROM worker WHERE status = 'running'

-- record_minutes --
-- Add a worker's minute tallies (one row per minute, queue and run status) to queue_minute.
-- Only this worker writes its rows, so workers never wait on each other.
INSERT INTO queue_minute AS m (minute, worker_id, queue, status, attempts, run_seconds)
SELECT to_timestamp(u.minute * 60), %(worker_id)s::uuid, u.queue, u.status, u.attempts,
       u.run_seconds
FROM unnest(%(minutes)s::bigint[], %(queues)s::text[], %(statuses)s::text[],
            %(attempts)s::int[], %(run_seconds)s::float8[])
     AS u (minute, queue, status, attempts, run_seconds)
ON CONFLICT (minute, worker_id, queue, status) DO UPDATE
SET attempts = m.attempts + EXCLUDED.attempts,
    run_seconds = m.run_seconds + EXCLUDED.run_seconds

-- prune_queue_minutes --
-- Retention: minute tallies older than a day (a range of the primary key).
DELETE FROM queue_minute WHERE minute < now() - interval '1 day'

-- prune_workers --
-- Retention: rows of workers that stopped or were declared lost more than 7 days ago.
DELETE FROM worker WHERE status <> 'running' AND stopped_at < now() - interval '7 days'

-- inspect_snapshot --
-- First in the transaction of a read made of several statements (a page and where its walk
-- ended; the stats and their window): one snapshot and one now() for all of them.
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY

-- hyrex-like schema, version 11: the current schema, written out whole.
--
-- What migrations 0001..0011 produce, as one readable file (tests/test_schema_file.py applies
-- both to fresh schemas and compares the catalogs). The numbered migrations stay the way a
-- database gets here; change the schema with a new migration, then bring this file and the
-- version above in line with it. Names are unqualified: it runs with search_path set to the
-- configured schema, as a migration does. schema_migrations belongs to the migrations runner
-- (queries.sql: create_migrations_table), not to this file.
--
-- Task statuses and their transitions (hyrex_like/states.py holds them as enums):
--   queued    -> running             a worker claimed it (a task_run row is inserted at once)
--   running   -> completed           the function returned a value
--   running   -> queued              an attempt failed/timed out/was lost with retries left, or a
--                                    worker shut down / died and gave it back
--   running   -> failed              an attempt failed with no retries left
--   queued    -> canceled            canceled before a worker claimed it
--   running   -> canceled            canceled while running (cancel_requested_at set): the
--                                    attempt ended (stopped, failed, given back, its worker
--                                    lost) and the task is not run again
--   queued    -> paused              a workflow step held by a pause of its workflow
--   running   -> paused              its workflow was paused while it ran (pause_requested_at
--                                    set): the attempt ended any way but completion
--   paused    -> queued              its workflow was resumed
--   paused    -> canceled            its workflow (or the task) was canceled
-- completed, failed and canceled are final.
-- (A retry by hand queues a failed or canceled task again: see retry_task in queries.sql.)

-- The task table's rules are domain constraints, not table CHECKs: a domain's check comes
-- prepared from the type cache, while a table CHECK is prepared afresh by every statement that
-- writes a row (which a one-row send felt: ~45 us of server time). See 0003_send_path.sql.
CREATE DOMAIN task_label AS text
    CONSTRAINT task_label_length CHECK (length(VALUE) BETWEEN 1 AND 255);
CREATE DOMAIN task_priority AS smallint
    CONSTRAINT task_priority_range CHECK (VALUE BETWEEN 1 AND 10);
CREATE DOMAIN task_status AS text
    CONSTRAINT task_status_known
    CHECK (VALUE IN ('queued', 'running', 'completed', 'failed', 'canceled', 'paused'));
CREATE DOMAIN task_count AS integer
    CONSTRAINT task_count_not_negative CHECK (VALUE >= 0);
CREATE DOMAIN task_timeout AS double precision
    CONSTRAINT task_timeout_positive CHECK (VALUE > 0);

-- One row per send.
CREATE TABLE task (
    id               uuid PRIMARY KEY,  -- UUIDv7, made by the sender
    task_name        task_label  NOT NULL,
    queue            task_label  NOT NULL,
    priority         task_priority NOT NULL DEFAULT 5,
    status           task_status NOT NULL DEFAULT 'queued',
    args             jsonb       NOT NULL,
    max_retries      task_count  NOT NULL DEFAULT 0,
    timeout_seconds  task_timeout,
    -- one delay in seconds per retry, computed at send time (retry_backoff may be a callable)
    backoff_seconds  double precision[] NOT NULL DEFAULT '{}',
    attempt_count    task_count  NOT NULL DEFAULT 0,
    -- attempts that failed, timed out or lost their executor: these use up max_retries (an
    -- attempt interrupted by a shutdown or lost with its whole worker does not)
    failure_count    task_count  NOT NULL DEFAULT 0,
    run_after        timestamptz NOT NULL DEFAULT now(),
    parent_id        uuid,
    root_id          uuid,
    idempotency_key  text,  -- at most one live (queued, running, completed) task per name and key
    worker_id        uuid,  -- set while running only: every way out of running clears it
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    result           jsonb,
    last_error       jsonb,
    -- a cancel of the running task was asked for: it ends canceled, whatever way its attempt ends
    -- (unless it completed)
    cancel_requested_at timestamptz,
    -- the tick time of a task made by a schedule (NULL for every other task)
    scheduled_for    timestamptz,
    -- a workflow step: its workflow and its step's index there (one task row per step, ever)
    workflow_id      uuid,
    workflow_step    smallint,
    -- its workflow was paused while it ran: it ends paused, whatever way its attempt ends
    -- (unless it completed)
    pause_requested_at timestamptz,
    -- what the task last reported with update_progress, and the attempt that reported it
    progress         jsonb,
    progress_attempt integer,
    -- the sender's W3C trace context ({"traceparent", "tracestate"}) when tracing is on
    trace_context    jsonb
);

-- Queue tables churn fast: keep statistics fresh so plans follow the queue's real size.
ALTER TABLE task SET (autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_scale_factor = 0.05);

-- The claim query's path: queued rows by priority, then age. Partial, so finished rows
-- (the vast majority over time) cost it nothing.
CREATE INDEX task_claim_idx ON task (priority DESC, run_after, id) WHERE status = 'queued';
-- The rescuer's path: running rows of a given worker.
CREATE INDEX task_running_idx ON task (worker_id) WHERE status = 'running';
CREATE INDEX task_parent_idx ON task (parent_id) WHERE parent_id IS NOT NULL;
-- When the next waiting task of a name is due (delayed sends, retries after a backoff), so an
-- idle worker wakes then. A task sent to run now has run_after = created_at and is not in it.
CREATE INDEX task_due_idx ON task (task_name, run_after)
    WHERE status = 'queued' AND run_after > created_at;
-- The unfinished tasks of each tree (sent from inside tasks): pruning keeps a tree that runs.
CREATE INDEX task_tree_live_idx ON task (root_id)
    WHERE root_id IS NOT NULL AND status IN ('queued', 'running');
-- Send once per key: one live task per name and key; a failed or canceled one frees the key.
CREATE UNIQUE INDEX task_idempotency_idx ON task (task_name, idempotency_key)
    WHERE idempotency_key IS NOT NULL AND status IN ('queued', 'running', 'completed');

-- One task row per workflow step.
CREATE UNIQUE INDEX task_workflow_step_idx ON task (workflow_id, workflow_step)
    WHERE workflow_id IS NOT NULL;

-- One row per attempt, keyed by its task and attempt number; never overwritten by a later
-- attempt. A run given back before it started is deleted, not closed.
CREATE TABLE task_run (
    -- No foreign key: the claim inserts run rows for rows it has just locked, and a key check
    -- per run row cost ~12% of the claim. Deleting tasks (retention) deletes their runs too.
    task_id         uuid        NOT NULL,
    attempt_number  integer     NOT NULL CHECK (attempt_number >= 1),
    status          text        NOT NULL DEFAULT 'running'
                    CHECK (status IN ('running', 'completed', 'failed', 'timed_out', 'lost',
                                      'interrupted', 'canceled')),
    worker_id       uuid,
    started_at      timestamptz,  -- when the body began, as the worker saw it (NULL: never did)
    finished_at     timestamptz,
    result          jsonb,
    error_type      text,
    error_message   text,
    traceback       text,
    claimed_at      timestamptz DEFAULT now(),  -- when a worker claimed it (NULL: before v4)
    -- No surrogate id: it cost every claimed task a sequence call and a second index entry.
    CONSTRAINT task_run_pkey PRIMARY KEY (task_id, attempt_number)
) WITH (fillfactor = 75);  -- room on the page so closing a run (an UPDATE) can be a HOT update

ALTER TABLE task_run SET (autovacuum_analyze_scale_factor = 0.05);

-- One row per worker process that ever ran, with its heartbeat; the rescuer marks workers
-- whose heartbeat went stale 'lost' and requeues their running tasks.
CREATE TABLE worker (
    id            uuid PRIMARY KEY,
    hostname      text        NOT NULL,
    pid           integer     NOT NULL,
    queues        text[]      NOT NULL DEFAULT '{}',
    task_names    text[]      NOT NULL DEFAULT '{}',
    processes     integer     NOT NULL,
    status        text        NOT NULL DEFAULT 'running'
                  CHECK (status IN ('running', 'stopped', 'lost')),
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    stopped_at    timestamptz
);
CREATE INDEX worker_alive_idx ON worker (heartbeat_at) WHERE status = 'running';

-- One row per tick a scheduler fired, keyed by (schedule name = task name, tick time): the
-- statement that inserts a tick inserts its task (insert_schedule_ticks), so any number of
-- schedulers racing on a tick make one task, and a tick never lacks its task.
CREATE TABLE schedule_tick (
    schedule_name  text        NOT NULL,
    tick_at        timestamptz NOT NULL,
    task_id        uuid        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT schedule_tick_pkey PRIMARY KEY (schedule_name, tick_at)
);

-- No trigger: senders wake workers with a NOTIFY after their insert has committed (channel
-- 'hyrex_like_' || the schema name); rows inserted by other SQL are found by the workers' poll.

-- One row per workflow run (#16). Its steps are task rows (task.workflow_id); the hand-off
-- from a step to the next is the trigger below, in the transaction that records the completion.
CREATE TABLE workflow (
    id                  uuid PRIMARY KEY,  -- UUIDv7, made by the sender
    name                task_label  NOT NULL,
    state               text        NOT NULL DEFAULT 'running'
                        CHECK (state IN ('running', 'paused', 'canceled', 'completed')),
    -- one object per step, in order: {"name", "task_name", "queue", "priority", "max_retries",
    -- "timeout_seconds", "backoff_seconds", "after": [step...], "next": [step...], "fan_in"}
    steps               jsonb       NOT NULL,
    args                jsonb       NOT NULL,  -- the payload of the first steps
    -- the task queued when a step fails: {"task_name", "queue", "priority", "max_retries",
    -- "timeout_seconds", "backoff_seconds"}
    on_failure          jsonb,
    on_failure_task_id  uuid,                   -- the last such task
    created_at          timestamptz NOT NULL DEFAULT now(),
    paused_at           timestamptz,
    finished_at         timestamptz
);
CREATE INDEX workflow_created_idx ON workflow (created_at, id);

-- Insert the task row of each of these steps whose predecessors have all completed (a source
-- step has none: it gets the workflow's payload). A step's payload is its predecessor's result,
-- or, for a step that several steps lead into, an object of their results by step name. A step
-- that has its row already is left alone. Wakes the workers when it inserted any. Returns how
-- many rows it inserted.
CREATE FUNCTION workflow_start_ready(wf workflow, candidates integer[]) RETURNS integer
LANGUAGE plpgsql SET search_path FROM CURRENT SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    n integer;
BEGIN
    WITH cand AS (
        SELECT c.i, wf.steps -> c.i AS s
        FROM unnest(candidates) AS c(i)
    ), ready AS (
        SELECT cand.i, cand.s,
               CASE WHEN jsonb_array_length(cand.s -> 'after') = 0 THEN wf.args
                    WHEN NOT (cand.s ->> 'fan_in')::boolean
                    THEN (SELECT p.result FROM task AS p
                          WHERE p.workflow_id = wf.id
                            AND p.workflow_step = (cand.s -> 'after' ->> 0)::integer)
                    ELSE (SELECT jsonb_object_agg(wf.steps -> p.workflow_step ->> 'name',
                                                  coalesce(p.result, 'null'::jsonb))
                          FROM task AS p
                          WHERE p.workflow_id = wf.id
                            AND p.workflow_step IN (SELECT a::integer FROM jsonb_array_elements_text(
                                                        cand.s -> 'after') AS a)) END AS args
        FROM cand
        WHERE NOT EXISTS (
            SELECT 1 FROM jsonb_array_elements_text(cand.s -> 'after') AS a
            WHERE NOT EXISTS (SELECT 1 FROM task AS p
                              WHERE p.workflow_id = wf.id AND p.workflow_step = a::integer
                                AND p.status = 'completed'))
    ), inserted AS (
        INSERT INTO task (id, task_name, queue, priority, args, max_retries, timeout_seconds,
                          backoff_seconds, workflow_id, workflow_step)
        SELECT workflow_task_id(), r.s ->> 'task_name', r.s ->> 'queue',
               (r.s ->> 'priority')::smallint, coalesce(r.args, 'null'::jsonb),
               (r.s ->> 'max_retries')::integer, (r.s ->> 'timeout_seconds')::double precision,
               ARRAY(SELECT b::double precision
                     FROM jsonb_array_elements_text(r.s -> 'backoff_seconds') AS b),
               wf.id, r.i
        FROM ready AS r
        ORDER BY r.i
        ON CONFLICT (workflow_id, workflow_step) WHERE workflow_id IS NOT NULL DO NOTHING
        RETURNING 1
    )
    SELECT count(*) INTO n FROM inserted;
    IF n > 0 THEN
        PERFORM pg_notify('hyrex_like_' || current_schema(), '');
    END IF;
    RETURN n;
END
$$;

-- A step's task id: time-ordered like every id the library makes (UUIDv7 layout: the current
-- time in milliseconds, the version, then a v4 UUID's random bits and variant).
CREATE FUNCTION workflow_task_id() RETURNS uuid
LANGUAGE sql VOLATILE AS $$
    SELECT (lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0')
            || '7' || substr(replace(gen_random_uuid()::text, '-', ''), 14))::uuid
$$;

-- The hand-off: a step's task changed status. It runs inside the statement that changed it
-- (a worker's finish of a whole batch, a rescue, a retry by hand), once per step row, so it is
-- kept short: its statements are planned once per session (generic plans), and the common case,
-- a step with one step after it, is one read of the workflow row and one insert whose payload
-- is the row's own result.
--
-- Why the workflow row is read, not locked, there: a pause, resume or cancel commits the new
-- state first (a transaction of its own), and only then, in a second one, locks the run's
-- unfinished step tasks (lock_workflow_steps) and holds, releases or cancels them. A hand-off
-- that starts after the state's commit reads it. One that read the old state belongs to a
-- transaction that holds its completing step's task row, a row the second transaction's lock
-- includes (the step was unfinished when it began): that lock waits for the hand-off's commit,
-- and the statements after it see the steps it inserted. A step that several steps lead into
-- does take the workflow row, exclusively: two of its predecessors completing at once must not
-- both miss the other.
CREATE FUNCTION workflow_step_changed() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    wf_state text;
    steps jsonb;
    nexts jsonb;
    nxt integer;
    joins integer[] := '{}';
    wf workflow;
    handler uuid;
BEGIN
    IF NEW.status = 'completed' THEN
        SELECT w.state, w.steps INTO wf_state, steps FROM workflow AS w WHERE w.id = NEW.workflow_id;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
        nexts := steps -> NEW.workflow_step -> 'next';
        IF nexts IS NULL THEN
            RETURN NULL;
        END IF;
        IF jsonb_array_length(nexts) = 0 THEN  -- the final step: the run completed
            -- (also when a pause came too late to stop it: every step completed)
            UPDATE workflow SET state = 'completed', paused_at = NULL, finished_at = now()
            WHERE id = NEW.workflow_id AND state IN ('running', 'paused');
            RETURN NULL;
        END IF;
        IF wf_state <> 'running' THEN
            RETURN NULL;  -- paused: the resume starts what is ready; canceled: nothing more
        END IF;
        FOR nxt IN SELECT x::integer FROM jsonb_array_elements_text(nexts) AS x LOOP
            IF (steps -> nxt ->> 'fan_in')::boolean THEN
                joins := joins || nxt;
            ELSE
                INSERT INTO task (id, task_name, queue, priority, args, max_retries,
                                  timeout_seconds, backoff_seconds, workflow_id, workflow_step)
                SELECT workflow_task_id(), s ->> 'task_name', s ->> 'queue',
                       (s ->> 'priority')::smallint, coalesce(NEW.result, 'null'::jsonb),
                       (s ->> 'max_retries')::integer, (s ->> 'timeout_seconds')::double precision,
                       ARRAY(SELECT b::double precision
                             FROM jsonb_array_elements_text(s -> 'backoff_seconds') AS b),
                       NEW.workflow_id, nxt
                FROM (SELECT steps -> nxt AS s) AS one
                ON CONFLICT (workflow_id, workflow_step) WHERE workflow_id IS NOT NULL DO NOTHING;
            END IF;
        END LOOP;
        IF cardinality(joins) > 0 THEN
            SELECT * INTO wf FROM workflow WHERE id = NEW.workflow_id FOR UPDATE;
            IF wf.state = 'running' THEN
                PERFORM workflow_start_ready(wf, joins);
            END IF;
        END IF;
        PERFORM pg_notify('hyrex_like_' || current_schema(), '');
    ELSIF NEW.status = 'failed' THEN
        SELECT * INTO wf FROM workflow WHERE id = NEW.workflow_id;
        IF FOUND AND wf.on_failure IS NOT NULL AND wf.state IN ('running', 'paused') THEN
            handler := workflow_task_id();
            INSERT INTO task (id, task_name, queue, priority, args, max_retries, timeout_seconds,
                              backoff_seconds, parent_id, root_id)
            VALUES (handler, wf.on_failure ->> 'task_name', wf.on_failure ->> 'queue',
                    (wf.on_failure ->> 'priority')::smallint,
                    jsonb_build_object('workflow_id', wf.id, 'workflow_name', wf.name,
                                       'step', wf.steps -> NEW.workflow_step ->> 'name',
                                       'task_id', NEW.id, 'error', NEW.last_error),
                    (wf.on_failure ->> 'max_retries')::integer,
                    (wf.on_failure ->> 'timeout_seconds')::double precision,
                    ARRAY(SELECT b::double precision
                          FROM jsonb_array_elements_text(wf.on_failure -> 'backoff_seconds') AS b),
                    NEW.id, coalesce(NEW.root_id, NEW.id));
            UPDATE workflow SET on_failure_task_id = handler WHERE id = wf.id;
            PERFORM pg_notify('hyrex_like_' || current_schema(), '');
        END IF;
    ELSIF NEW.status = 'canceled' THEN
        -- a step canceled by hand (or stopped by a cancel) ends its run: nothing more starts
        UPDATE workflow SET state = 'canceled', finished_at = now()
        WHERE id = NEW.workflow_id AND state IN ('running', 'paused');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER task_workflow_advance
    AFTER UPDATE OF status ON task
    FOR EACH ROW
    WHEN (NEW.workflow_id IS NOT NULL AND NEW.status IS DISTINCT FROM OLD.status)
    EXECUTE FUNCTION workflow_step_changed();

-- Keys and JSON values for tasks and applications (#17), with an optional expiry.
CREATE TABLE kv (
    key         text        PRIMARY KEY CHECK (length(key) BETWEEN 1 AND 512),
    value       jsonb       NOT NULL,
    expires_at  timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX kv_expires_idx ON kv (expires_at) WHERE expires_at IS NOT NULL;

-- Queues a user paused or limited (#17); see 0009_queues.sql for how the claims use them.
CREATE TABLE queue (
    name               task_label  PRIMARY KEY,
    concurrency_limit  integer     CHECK (concurrency_limit > 0),
    paused_at          timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- A limited queue's next tasks, and the queued count per queue, without walking other queues.
CREATE INDEX task_queue_idx ON task (queue, priority DESC, run_after, id) WHERE status = 'queued';
-- How many tasks of a queue are running now (the limited claim counts them).
CREATE INDEX task_queue_running_idx ON task (queue) WHERE status = 'running';

-- Claim up to `most` tasks from the limited queues this worker serves (`queues`, empty: all)
-- and can run (`names`), never more per queue than its limit less what runs there now. Returns
-- the claimed rows (the claim_tasks columns); with `blocked` true on one extra row (id NULL)
-- when a queue with tasks ready was at its limit. VOLATILE plpgsql: each statement takes a new
-- snapshot, so the count, taken after the lock was granted, sees every claim that held it
-- before. A lock held longer than lock_timeout fails this call; the worker claims again soon.
CREATE FUNCTION claim_limited_tasks(worker uuid, names text[], queues text[], most integer)
RETURNS TABLE (id uuid, task_name text, queue text, priority smallint, args text,
               attempt_count integer, max_retries integer, timeout_seconds double precision,
               parent_id uuid, root_id uuid, scheduled_for timestamptz, trace_context text,
               blocked boolean)
LANGUAGE plpgsql
SET search_path FROM CURRENT SET plan_cache_mode = force_generic_plan SET lock_timeout = '5s'
AS $$
#variable_conflict use_column
DECLARE
    lq record;
    running integer;
    room integer;
    got integer;
    is_blocked boolean := false;
BEGIN
    FOR lq IN
        SELECT q.name, q.concurrency_limit FROM queue AS q
        WHERE q.concurrency_limit IS NOT NULL AND q.paused_at IS NULL
          AND (cardinality(queues) = 0 OR q.name = ANY(queues))
          AND EXISTS (SELECT 1 FROM task AS r
                      WHERE r.status = 'queued' AND r.queue = q.name AND r.run_after <= now()
                        AND r.task_name = ANY(names))
        ORDER BY q.name
        FOR UPDATE OF q
    LOOP
        EXIT WHEN most <= 0;
        SELECT count(*) INTO running FROM task AS r WHERE r.status = 'running' AND r.queue = lq.name;
        room := least(lq.concurrency_limit - running, most);
        IF room <= 0 THEN
            is_blocked := true;
            CONTINUE;
        END IF;
        RETURN QUERY
        WITH picked AS (
            SELECT r.id FROM task AS r
            WHERE r.status = 'queued' AND r.queue = lq.name AND r.run_after <= now()
              AND r.task_name = ANY(names)
            ORDER BY r.priority DESC, r.run_after, r.id
            LIMIT room
            FOR UPDATE SKIP LOCKED
        ), claimed AS (
            UPDATE task AS t
            SET status = 'running', attempt_count = t.attempt_count + 1, worker_id = worker,
                started_at = coalesce(t.started_at, now())
            FROM picked
            WHERE t.id = picked.id
            RETURNING t.id, t.task_name, t.queue, t.priority, t.args, t.attempt_count,
                      t.max_retries, t.timeout_seconds, t.parent_id, t.root_id, t.scheduled_for,
                      t.trace_context
        ), opened AS (
            -- claimed now, after the lock wait (now() is when the statement began)
            INSERT INTO task_run (task_id, attempt_number, status, worker_id, claimed_at)
            SELECT c.id, c.attempt_count, 'running', worker, clock_timestamp() FROM claimed AS c
        )
        SELECT c.id, c.task_name::text, c.queue::text, c.priority::smallint, c.args::text,
               c.attempt_count::integer, c.max_retries::integer,
               c.timeout_seconds::double precision, c.parent_id, c.root_id, c.scheduled_for,
               c.trace_context::text, false
        FROM claimed AS c;
        GET DIAGNOSTICS got = ROW_COUNT;
        most := most - got;
    END LOOP;
    IF is_blocked THEN
        RETURN QUERY SELECT NULL::uuid, NULL::text, NULL::text, NULL::smallint, NULL::text,
                            NULL::integer, NULL::integer, NULL::double precision, NULL::uuid,
                            NULL::uuid, NULL::timestamptz, NULL::text, true;
    END IF;
END
$$;

-- Attempts ended per minute, worker, queue and way they ended (see 0010_inspect.sql): each
-- worker adds its own tallies with its heartbeat; throughput reads a range of the primary key.
CREATE TABLE queue_minute (
    minute       timestamptz      NOT NULL,
    worker_id    uuid             NOT NULL,
    queue        task_label       NOT NULL,
    status       text             NOT NULL,  -- a task_run status an attempt ended with
    attempts     integer          NOT NULL,
    run_seconds  double precision NOT NULL,
    PRIMARY KEY (minute, worker_id, queue, status)
);

-- Workflows that are running or paused, newest first, without reading ended ones.
CREATE INDEX workflow_live_idx ON workflow (created_at, id) WHERE state IN ('running', 'paused');

-- Workers that ended, by when (hy.list_workers' "ended in the last hour"): the running ones
-- come from worker_alive_idx, so listing never reads every worker row ever written.
CREATE INDEX worker_ended_idx ON worker (stopped_at) WHERE status <> 'running';

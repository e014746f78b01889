-- hyrex-like schema, version 6: the current schema, written out whole.
--
-- What migrations 0001..0006 produce, as one readable file (tests/test_schema_file.py applies
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
    CHECK (VALUE IN ('queued', 'running', 'completed', 'failed', 'canceled'));
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
    scheduled_for    timestamptz
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

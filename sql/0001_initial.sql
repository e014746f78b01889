-- hyrex-like schema, version 1.
-- Applied by the migrations runner with search_path set to the configured schema, inside one
-- transaction holding an advisory lock, so concurrent first starts are safe.

-- Task statuses and their transitions (the one place they are documented):
--   queued    -> running             a worker claimed it (a task_run row is inserted at once)
--   running   -> completed           the function returned a value
--   running   -> queued              an attempt failed/timed out/was lost with retries left, or a
--                                    worker shut down / died and gave it back
--   running   -> failed              an attempt failed with no retries left
--   queued    -> canceled            (reserved for cancellation)
-- completed, failed and canceled are final.
CREATE TABLE task (
    id               uuid PRIMARY KEY,
    task_name        text        NOT NULL CHECK (length(task_name) BETWEEN 1 AND 255),
    queue            text        NOT NULL CHECK (length(queue) BETWEEN 1 AND 255),
    priority         smallint    NOT NULL DEFAULT 5 CHECK (priority BETWEEN 1 AND 10),
    status           text        NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'completed', 'failed', 'canceled')),
    args             jsonb       NOT NULL,
    max_retries      integer     NOT NULL DEFAULT 0 CHECK (max_retries >= 0),
    timeout_seconds  double precision CHECK (timeout_seconds > 0),
    -- one delay in seconds per retry, computed at send time (retry_backoff may be a callable)
    backoff_seconds  double precision[] NOT NULL DEFAULT '{}',
    attempt_count    integer     NOT NULL DEFAULT 0 CHECK (attempt_count >= 0),
    -- attempts that failed, timed out or lost their executor: these use up max_retries (an
    -- attempt interrupted by a shutdown or lost with its whole worker does not)
    failure_count    integer     NOT NULL DEFAULT 0 CHECK (failure_count >= 0),
    run_after        timestamptz NOT NULL DEFAULT now(),
    parent_id        uuid,
    root_id          uuid,
    idempotency_key  text,
    worker_id        uuid,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    result           jsonb,
    last_error       jsonb
);

-- The claim query's path: queued rows by priority, then age. Partial, so finished rows
-- (the vast majority over time) cost it nothing.
CREATE INDEX task_claim_idx ON task (priority DESC, run_after, id) WHERE status = 'queued';
-- The rescuer's path: running rows of a given worker.
CREATE INDEX task_running_idx ON task (worker_id) WHERE status = 'running';
CREATE INDEX task_parent_idx ON task (parent_id) WHERE parent_id IS NOT NULL;

-- One row per attempt; never overwritten by a later attempt.
CREATE TABLE task_run (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- No foreign key: the claim inserts run rows for rows it has just locked, and a key check
    -- per run row cost ~12% of the claim. Deleting tasks (retention) deletes their runs too.
    task_id         uuid        NOT NULL,
    attempt_number  integer     NOT NULL CHECK (attempt_number >= 1),
    status          text        NOT NULL DEFAULT 'running'
                    CHECK (status IN ('running', 'completed', 'failed', 'timed_out', 'lost',
                                      'interrupted')),
    worker_id       uuid,
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    result          jsonb,
    error_type      text,
    error_message   text,
    traceback       text,
    UNIQUE (task_id, attempt_number)
) WITH (fillfactor = 75);  -- room on the page so closing a run (an UPDATE) can be a HOT update

-- Queue tables churn fast: keep statistics fresh so plans follow the queue's real size.
ALTER TABLE task SET (autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_scale_factor = 0.05);
ALTER TABLE task_run SET (autovacuum_analyze_scale_factor = 0.05);

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

-- Wake idle workers when tasks arrive. Statement level, so a bulk send notifies once.
CREATE FUNCTION notify_task_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('hyrex_like_' || TG_TABLE_SCHEMA, '');
    RETURN NULL;
END
$$;

CREATE TRIGGER task_inserted AFTER INSERT ON task
    FOR EACH STATEMENT EXECUTE FUNCTION notify_task_inserted();

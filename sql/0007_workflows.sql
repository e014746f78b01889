-- hyrex-like schema, version 7: workflows (#16) and progress.
--
-- 1. workflow: one row per workflow run: its definition (steps, as JSON: each step's task name,
--    queue, priority, retry budget, timeout, backoff, and the steps it follows), the payload of
--    its first steps, and its control state (running, paused, canceled, completed). Its
--    summary status (pending, running, failed, ...) is read from its steps' tasks.
-- 2. task.workflow_id / task.workflow_step: a step is an ordinary task row; one row per step,
--    ever (task_workflow_step_idx): a resume queues the same row again.
-- 3. The hand-off is a trigger: when a step's task becomes completed, the statement that
--    recorded it (whichever it is: a worker's finish, a rescue, a retry by hand) also inserts
--    the steps that were waiting for it, in the same transaction. A crash cannot lose a step
--    between two steps, nor make one twice (the unique index). When a step's task fails, the
--    workflow's on_failure task is queued the same way, and when one is canceled (by hand),
--    its run is canceled.
-- 4. task_status 'paused': a step held by a pause of its workflow, never claimed.
--    task.pause_requested_at: a running step whose workflow was paused; its worker stops it as
--    it stops a canceled task, and the task is held ('paused'), not canceled.
-- 5. task.progress / task.progress_attempt: what a task last reported with
--    ctx.update_progress(), and the attempt that reported it.
--
-- Cheap on a large table: nullable columns without defaults (no rewrite). Re-checking the
-- status domain reads the table once, under its lock; the trigger fires only for the rows of
-- workflow steps (its WHEN clause is checked in C for every other row).
ALTER DOMAIN task_status DROP CONSTRAINT task_status_known;
ALTER DOMAIN task_status ADD CONSTRAINT task_status_known
    CHECK (VALUE IN ('queued', 'running', 'completed', 'failed', 'canceled', 'paused'));

ALTER TABLE task
    ADD COLUMN workflow_id uuid,
    ADD COLUMN workflow_step smallint,
    ADD COLUMN pause_requested_at timestamptz,
    ADD COLUMN progress jsonb,
    ADD COLUMN progress_attempt integer;

CREATE UNIQUE INDEX task_workflow_step_idx ON task (workflow_id, workflow_step)
    WHERE workflow_id IS NOT NULL;

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

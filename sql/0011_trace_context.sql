-- hyrex-like schema, version 11: the claim of limited queues returns the sender's trace context
-- (task.trace_context, added by 0010), as claim_tasks does, so the attempt's span is the send's
-- child (tracing, #18). A function's result columns cannot change in place: DROP and CREATE,
-- in the migration's one transaction. A worker of the previous version expects the old
-- columns and fails each claim of a limited queue until it is restarted on the new version:
-- stop the workers, migrate, start them (or accept that limited queues wait for the restart).
DROP FUNCTION claim_limited_tasks(uuid, text[], text[], integer);

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

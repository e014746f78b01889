-- hyrex-like schema, version 6: periodic tasks (#15), exactly once per tick across the cluster.
--
-- 1. schedule_tick: one row per tick a scheduler fired, keyed by (schedule name, tick time).
--    The schedule's name is its task's name. A scheduler inserts the ticks it finds due and,
--    in the same statement, the tasks of the ticks it inserted (insert_schedule_ticks): any
--    number of schedulers may race on one tick; the key lets one of them insert it, and a tick
--    has its task or no row at all. The newest row of a name is where a scheduler that starts
--    (or reconnects) resumes.
-- 2. task.scheduled_for: the tick time of a task made by a schedule (NULL for every other
--    task), given to the task as its context's scheduled_for.
--
-- Both are cheap on a large table: a new table, and a nullable column without a default (no
-- rewrite).
CREATE TABLE schedule_tick (
    schedule_name  text        NOT NULL,
    tick_at        timestamptz NOT NULL,
    task_id        uuid        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT schedule_tick_pkey PRIMARY KEY (schedule_name, tick_at)
);

ALTER TABLE task ADD COLUMN scheduled_for timestamptz;

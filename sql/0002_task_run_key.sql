-- hyrex-like schema, version 2: a run row is identified by its task and attempt number.
-- The surrogate id cost every claimed task a sequence call and a second index entry (about 7%
-- of the database's work per task in the tuned drain); nothing ever looked a run up by it.
ALTER TABLE task_run
    DROP CONSTRAINT task_run_pkey,
    DROP COLUMN id,
    DROP CONSTRAINT task_run_task_id_attempt_number_key,
    ADD CONSTRAINT task_run_pkey PRIMARY KEY (task_id, attempt_number);

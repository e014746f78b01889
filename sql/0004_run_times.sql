-- hyrex-like schema, version 4: a run row tells when its attempt was claimed and when its body
-- really began.
--
-- Until now started_at was filled with now() when the claim opened the run, and only a run the
-- executor finished overwrote it with the body's start: a task that waited in a worker's buffer
-- and then timed out showed the wait as run time. claimed_at (new) is the claim's time;
-- started_at is NULL until the worker reports when the body began.
--
-- Every step changes only the catalog (no table rewrite, no scan). Runs written before this
-- version keep their started_at and have no claimed_at.
ALTER TABLE task_run
    ADD COLUMN claimed_at timestamptz,
    ALTER COLUMN claimed_at SET DEFAULT now(),
    ALTER COLUMN started_at DROP NOT NULL,
    ALTER COLUMN started_at DROP DEFAULT;

-- hyrex-like schema, version 10: what inspection, the dashboard and tracing read (#18).
--
-- queue_minute: how many attempts ended per minute, per worker, per queue and per way they
-- ended, with the seconds they ran. Each worker tallies the attempts it writes in memory and
-- adds them here with its heartbeat (one upsert per heartbeat, its own rows only, so workers
-- never wait on each other); throughput over the last minutes is a range scan of the primary
-- key, never a scan of task or task_run. The elected rescuer deletes rows older than a day
-- (every 10 minutes, with or without --retention). A worker killed with SIGKILL loses at most
-- one heartbeat's counts.
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

-- The sender's trace context (W3C: {"traceparent": ..., "tracestate": ...}) when tracing is on,
-- so the attempt's span is the send's child; NULL otherwise. Adding a NULL column rewrites
-- nothing.
ALTER TABLE task ADD COLUMN trace_context jsonb;

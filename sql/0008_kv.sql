-- hyrex-like schema, version 8: a key-value store for tasks and applications (#17).
--
-- kv: keys and JSON values, with an optional expiry: an expired key is never read back (every
-- statement compares expires_at with the statement's time) and the elected rescuer worker
-- deletes expired rows in short batches (kv_expires_idx). A new table: no cost to the others.
CREATE TABLE kv (
    key         text        PRIMARY KEY CHECK (length(key) BETWEEN 1 AND 512),
    value       jsonb       NOT NULL,
    expires_at  timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX kv_expires_idx ON kv (expires_at) WHERE expires_at IS NOT NULL;

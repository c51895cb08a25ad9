-- Durable jobs: a queue with leases and fencing tokens (research notes §5).
-- A claim is one UPDATE of a pending row; every later update names the
-- lease token it holds, and a stale token changes nothing.

CREATE TABLE jobs (
    job_id              TEXT PRIMARY KEY,
    org_id              TEXT NOT NULL,
    pool                TEXT NOT NULL,
    job_type            TEXT NOT NULL,
    payload             BYTEA NOT NULL,
    credentials_json    TEXT NOT NULL DEFAULT '[]',
    priority            BIGINT NOT NULL DEFAULT 0,
    -- pending, assigned, running, succeeded, failed, cancelled, unschedulable
    state               TEXT NOT NULL,
    -- Not claimed before this time (retry backoff).
    run_at_ms           BIGINT NOT NULL,
    -- Time allowed per attempt.
    attempt_timeout_ms  BIGINT NOT NULL,
    attempts            BIGINT NOT NULL DEFAULT 0,
    max_attempts        BIGINT NOT NULL,
    lease_token         BIGINT NOT NULL DEFAULT 0,
    lease_agent         TEXT NOT NULL DEFAULT '',
    lease_session       TEXT NOT NULL DEFAULT '',
    lease_expires_ms    BIGINT NOT NULL DEFAULT 0,
    -- When the current attempt must be over.
    attempt_deadline_ms BIGINT NOT NULL DEFAULT 0,
    created_ms          BIGINT NOT NULL,
    started_ms          BIGINT NOT NULL DEFAULT 0,
    finished_ms         BIGINT NOT NULL DEFAULT 0,
    result              BYTEA NOT NULL DEFAULT '',
    error               TEXT NOT NULL DEFAULT '',
    idempotency_key     TEXT NOT NULL DEFAULT '',
    log_lines           BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX jobs_idempotency ON jobs (org_id, idempotency_key) WHERE idempotency_key <> '';
CREATE INDEX jobs_claim ON jobs (org_id, pool, state, priority, created_ms);
CREATE INDEX jobs_lease ON jobs (state, lease_expires_ms);
CREATE INDEX jobs_agent ON jobs (lease_agent, state);
CREATE INDEX jobs_list ON jobs (org_id, created_ms);

-- One row per attempt: who held which lease, from when to when, and how it
-- ended (the record that no two live leases ever overlapped).
CREATE TABLE job_attempts (
    job_id       TEXT NOT NULL,
    lease_token  BIGINT NOT NULL,
    agent_id     TEXT NOT NULL,
    session_id   TEXT NOT NULL,
    started_ms   BIGINT NOT NULL,
    ended_ms     BIGINT NOT NULL DEFAULT 0,
    outcome      TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (job_id, lease_token)
);

CREATE TABLE job_logs (
    id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id   TEXT NOT NULL,
    time_ms  BIGINT NOT NULL,
    line     TEXT NOT NULL
);
CREATE INDEX job_logs_job ON job_logs (job_id, id);

-- Day-2 operations: drain that survives reconnects, pool pins (drift),
-- health history and agent events.

ALTER TABLE agents ADD COLUMN drained_ms BIGINT NOT NULL DEFAULT 0;

CREATE TABLE pools (
    org_id              TEXT NOT NULL,
    name                TEXT NOT NULL,
    pinned_version      TEXT NOT NULL DEFAULT '',
    pinned_config_hash  TEXT NOT NULL DEFAULT '',
    updated_ms          BIGINT NOT NULL,
    PRIMARY KEY (org_id, name)
);

-- Protobuf-encoded HealthSample, a bounded number per agent.
CREATE TABLE health_samples (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id    TEXT NOT NULL,
    time_ms     BIGINT NOT NULL,
    sample      BYTEA NOT NULL
);
CREATE INDEX health_samples_agent_time ON health_samples (agent_id, time_ms);

CREATE TABLE agent_events (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id      TEXT NOT NULL,
    agent_id    TEXT NOT NULL,
    pool        TEXT NOT NULL,
    time_ms     BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    detail      TEXT NOT NULL,
    alert       BIGINT NOT NULL
);
CREATE INDEX agent_events_org_id ON agent_events (org_id, id);
CREATE INDEX agent_events_time ON agent_events (time_ms);

-- Tether control plane, first schema. Times are integer Unix milliseconds;
-- 0 means "never". Secrets are stored only as SHA-256 hashes.

CREATE TABLE enrollment_tokens (
    token_id     TEXT PRIMARY KEY,
    org_id       TEXT NOT NULL,
    pool         TEXT NOT NULL,
    secret_hash  BYTEA NOT NULL,
    created_ms   BIGINT NOT NULL,
    expires_ms   BIGINT NOT NULL,
    max_uses     BIGINT NOT NULL,
    uses         BIGINT NOT NULL DEFAULT 0,
    last_used_ms BIGINT NOT NULL DEFAULT 0,
    revoked_ms   BIGINT NOT NULL DEFAULT 0,
    labels_json  TEXT NOT NULL DEFAULT '{}',
    description  TEXT NOT NULL DEFAULT ''
);
CREATE INDEX enrollment_tokens_org ON enrollment_tokens (org_id, created_ms);

CREATE TABLE agents (
    agent_id          TEXT PRIMARY KEY,
    org_id            TEXT NOT NULL,
    pool              TEXT NOT NULL,
    token_id          TEXT NOT NULL,
    enrolled_ms       BIGINT NOT NULL,
    cert_serial       TEXT NOT NULL,
    cert_not_after_ms BIGINT NOT NULL,
    hostname          TEXT NOT NULL DEFAULT '',
    version           TEXT NOT NULL DEFAULT '',
    labels_json       TEXT NOT NULL DEFAULT '{}',
    capabilities_json TEXT NOT NULL DEFAULT '[]',
    credentials_json  TEXT NOT NULL DEFAULT '[]',
    config_hash       TEXT NOT NULL DEFAULT '',
    last_connected_ms BIGINT NOT NULL DEFAULT 0,
    last_heartbeat_ms BIGINT NOT NULL DEFAULT 0,
    rtt_us            BIGINT NOT NULL DEFAULT 0,
    clock_skew_ms     BIGINT NOT NULL DEFAULT 0,
    revoked_ms        BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX agents_org_pool ON agents (org_id, pool);

CREATE TABLE connections (
    org_id         TEXT NOT NULL,
    name           TEXT NOT NULL,
    pool           TEXT NOT NULL,
    target_host    TEXT NOT NULL,
    target_port    BIGINT NOT NULL,
    gateway_listen TEXT NOT NULL DEFAULT '',
    created_ms     BIGINT NOT NULL,
    PRIMARY KEY (org_id, name)
);

CREATE TABLE api_keys (
    key_id      TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL,
    role        TEXT NOT NULL,
    secret_hash BYTEA NOT NULL,
    created_ms  BIGINT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    revoked_ms  BIGINT NOT NULL DEFAULT 0
);

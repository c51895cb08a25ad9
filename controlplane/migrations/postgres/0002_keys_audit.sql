-- API key grants and last use; the audit log.

ALTER TABLE api_keys ADD COLUMN connections_json TEXT NOT NULL DEFAULT '[]';
ALTER TABLE api_keys ADD COLUMN pools_json TEXT NOT NULL DEFAULT '[]';
ALTER TABLE api_keys ADD COLUMN last_used_ms BIGINT NOT NULL DEFAULT 0;
CREATE INDEX api_keys_org ON api_keys (org_id, created_ms);

CREATE TABLE audit_events (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id      TEXT NOT NULL,
    time_ms     BIGINT NOT NULL,
    key_id      TEXT NOT NULL,
    role        TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    peer        TEXT NOT NULL,
    result      TEXT NOT NULL,
    detail      TEXT NOT NULL
);
CREATE INDEX audit_events_org_time ON audit_events (org_id, time_ms);

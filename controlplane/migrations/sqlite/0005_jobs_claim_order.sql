-- The claim takes the first pending job in (priority DESC, created_ms,
-- job_id) order. An index in exactly that order lets the database walk it
-- and stop at the first job the agent can run; the old one (priority
-- ascending) made every claim read and sort every pending job of the pool,
-- so a deep queue cost a quadratic amount of work.
DROP INDEX jobs_claim;
CREATE INDEX jobs_claim ON jobs (org_id, pool, state, priority DESC, created_ms, job_id);

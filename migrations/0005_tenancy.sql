-- Tenants, their API keys and quota overrides (owned by ingest); job quotas and the global
-- job feed (owned by the scheduler).
CREATE SCHEMA IF NOT EXISTS auth;

CREATE TABLE auth.tenants (
    name       text PRIMARY KEY,
    -- Quota overrides: {"jobs_per_hour": 100, ...}; a missing field takes the default.
    quotas     jsonb       NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE auth.api_keys (
    id           uuid PRIMARY KEY,
    tenant       text        NOT NULL REFERENCES auth.tenants (name),
    name         text        NOT NULL DEFAULT '',
    -- The first characters of the secret, shown to tell keys apart.
    prefix       text        NOT NULL,
    -- SHA-256 of the secret (256 random bits: a slow hash adds nothing).
    hash         bytea       NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);

CREATE INDEX api_keys_tenant ON auth.api_keys (tenant);
CREATE INDEX api_keys_prefix ON auth.api_keys (prefix);

-- Jobs per hour and per day are counted from here.
CREATE INDEX jobs_tenant_created ON scheduler.jobs (tenant, created_at);

-- Stored bytes per tenant.
CREATE INDEX media_tenant ON ingest.media (tenant);

-- Jobs of a tenant dispatched and not finished, at most (0 or absent: no limit); written by
-- every CreateJobs from the tenant's quota.
CREATE TABLE scheduler.tenant_limits (
    tenant       text PRIMARY KEY,
    running_jobs integer     NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- WatchJobs reads the events of all of a tenant's jobs in commit order: by the writing
-- transaction's id, and only below the oldest transaction still running, so that an event
-- that commits late is never skipped by a reader that moved past it.
ALTER TABLE scheduler.job_events ADD COLUMN xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX job_events_xid ON scheduler.job_events (xid, seq);

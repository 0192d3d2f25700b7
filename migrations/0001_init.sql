-- One schema per owning service: ingest owns media, scheduler owns jobs and their history.
CREATE SCHEMA IF NOT EXISTS ingest;
CREATE SCHEMA IF NOT EXISTS scheduler;

CREATE TABLE ingest.media (
    id           uuid PRIMARY KEY,
    tenant       text        NOT NULL,
    filename     text        NOT NULL,
    content_type text        NOT NULL,
    kind         text        NOT NULL,
    bytes        bigint      NOT NULL,
    sha256       text        NOT NULL,
    width        integer,
    height       integer,
    blob_key     text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant, sha256)
);

CREATE TABLE scheduler.jobs (
    id              uuid PRIMARY KEY,
    tenant          text        NOT NULL,
    kind            text        NOT NULL,
    queue           text        NOT NULL,
    state           text        NOT NULL,
    priority        smallint    NOT NULL,
    media_id        uuid,
    payload         jsonb       NOT NULL DEFAULT '{}',
    -- attempts started so far; the next dispatch runs attempt + 1
    attempt         integer     NOT NULL DEFAULT 0,
    -- the job may run until attempt = max_attempts; a retry adds budget to it
    max_attempts    integer     NOT NULL,
    budget          integer     NOT NULL,
    timeout_ms      bigint      NOT NULL,
    run_at          timestamptz NOT NULL,
    idempotency_key text,
    -- set when the current attempt was published to JetStream
    dispatched_at   timestamptz,
    result          jsonb,
    error_code      text,
    error_message   text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    UNIQUE (tenant, idempotency_key)
);

CREATE INDEX jobs_due ON scheduler.jobs (priority DESC, run_at)
    WHERE state IN ('QUEUED', 'SCHEDULED') AND dispatched_at IS NULL;
CREATE INDEX jobs_in_flight ON scheduler.jobs (queue, dispatched_at)
    WHERE state IN ('QUEUED', 'RUNNING') AND dispatched_at IS NOT NULL;
CREATE INDEX jobs_media ON scheduler.jobs (media_id);
CREATE INDEX jobs_state_kind ON scheduler.jobs (state, kind);

CREATE TABLE scheduler.attempts (
    job_id        uuid        NOT NULL REFERENCES scheduler.jobs (id) ON DELETE CASCADE,
    attempt       integer     NOT NULL,
    worker_id     text        NOT NULL,
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz,
    outcome       text        NOT NULL,
    error_code    text,
    error_message text,
    PRIMARY KEY (job_id, attempt)
);

-- Every state change, in order: WatchJob replays it and resumes from a seq.
CREATE TABLE scheduler.job_events (
    seq     bigserial PRIMARY KEY,
    job_id  uuid        NOT NULL REFERENCES scheduler.jobs (id) ON DELETE CASCADE,
    state   text        NOT NULL,
    attempt integer     NOT NULL,
    at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX job_events_job ON scheduler.job_events (job_id, seq);

-- Dependencies, fair dispatch and retention.

-- Dependencies not ended yet: a job is dispatched only when this is 0.
ALTER TABLE scheduler.jobs
    ADD COLUMN pending_deps integer NOT NULL DEFAULT 0,
    -- FAIL, SKIP or CONTINUE: what a failed or cancelled dependency does to this job
    ADD COLUMN on_dependency_failure text NOT NULL DEFAULT 'FAIL',
    -- MM_JOBS stream sequence of the current attempt's message: the stale check asks JetStream
    -- whether it is still there before sending the attempt again
    ADD COLUMN dispatch_seq bigint;

CREATE TABLE scheduler.job_dependencies (
    job_id     uuid NOT NULL REFERENCES scheduler.jobs (id) ON DELETE CASCADE,
    depends_on uuid NOT NULL REFERENCES scheduler.jobs (id) ON DELETE CASCADE,
    -- set once depends_on has ended and job_id's pending_deps counted it
    settled    boolean NOT NULL DEFAULT false,
    PRIMARY KEY (job_id, depends_on)
);

CREATE INDEX job_dependencies_on ON scheduler.job_dependencies (depends_on);

-- The dispatcher ranks due jobs per queue and tenant.
DROP INDEX scheduler.jobs_due;
CREATE INDEX jobs_due ON scheduler.jobs (queue, tenant, priority DESC, run_at)
    WHERE state IN ('QUEUED', 'SCHEDULED') AND dispatched_at IS NULL AND pending_deps = 0;

-- Retention and rates walk finished jobs per tenant and state, oldest first.
CREATE INDEX jobs_finished ON scheduler.jobs (tenant, state, finished_at)
    WHERE finished_at IS NOT NULL;

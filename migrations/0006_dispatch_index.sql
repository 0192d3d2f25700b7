-- The dispatcher's claim reads, per queue, the tenants with due jobs and each tenant's oldest
-- due jobs per priority level: index probes whose cost does not grow with the backlog.
CREATE INDEX jobs_due_tenant ON scheduler.jobs (queue, tenant, priority, run_at)
    WHERE state IN ('QUEUED', 'SCHEDULED') AND dispatched_at IS NULL AND pending_deps = 0;

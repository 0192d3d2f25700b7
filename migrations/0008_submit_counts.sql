-- Jobs submitted per tenant and bucket: the jobs-per-hour quota adds up the last hour's
-- minute buckets and the jobs-per-day quota the last day's hour buckets, instead of counting
-- the tenant's jobs under a lock (ADR 6). Written by every submit in the transaction that
-- stores its jobs; buckets older than a day are pruned by retention.
CREATE TABLE scheduler.submit_counts (
    tenant text        NOT NULL,
    -- 'minute' or 'hour': the span of the bucket, and the date_trunc field that starts it
    span   text        NOT NULL,
    start  timestamptz NOT NULL,
    jobs   bigint      NOT NULL,
    PRIMARY KEY (tenant, span, start)
);

-- The jobs of the last day, counted into buckets once, so that quotas hold across the upgrade.
INSERT INTO scheduler.submit_counts (tenant, span, start, jobs)
SELECT tenant, s.span, date_trunc(s.span, created_at), count(*)
FROM scheduler.jobs CROSS JOIN (VALUES ('minute'), ('hour')) AS s(span)
WHERE created_at > now() - interval '1 day' AND (s.span = 'hour' OR created_at > now() - interval '1 hour')
GROUP BY 1, 2, 3;

-- Nothing else reads jobs by tenant and creation time in order (ListJobs pages by id).
DROP INDEX IF EXISTS scheduler.jobs_tenant_created;

-- Every state change of a job rewrites its row in every index that is not partial, so each
-- index costs on every transition. Two are no longer read:
-- jobs_due: the claim probes jobs_due_tenant (same columns and predicate, 0006).
DROP INDEX IF EXISTS scheduler.jobs_due;
-- jobs_state_kind: every query by state is per tenant (jobs_finished, jobs_tenant_created);
-- the metrics' counts read the whole table either way.
DROP INDEX IF EXISTS scheduler.jobs_state_kind;
-- Room on each page for the new row version of an update that changes no indexed column
-- (the recorded dispatch sequence), so that it stays on the page (a HOT update) and touches
-- no index. Applies to pages written from now on.
ALTER TABLE scheduler.jobs SET (fillfactor = 85);

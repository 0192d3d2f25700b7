-- Every job_events and attempts row inserted checked its job row through a foreign key (a
-- key-share lock on the job and an index probe), on the hot path of every job. Rows are only
-- ever written in the transaction that changed their job (after its guarded update), and
-- retention deletes a job's history with it (libs/store, prune_finished), so the keys guard
-- nothing that the code does not already hold.
DO $$
DECLARE
    c record;
BEGIN
    FOR c IN
        SELECT conrelid::regclass AS tbl, conname FROM pg_constraint
        WHERE contype = 'f'
          AND conrelid IN ('scheduler.job_events'::regclass, 'scheduler.attempts'::regclass)
    LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', c.tbl, c.conname);
    END LOOP;
END $$;

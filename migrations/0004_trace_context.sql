-- The W3C trace context (`traceparent`) of the request that created a job, so that its
-- dispatch, the worker's attempts and the events they report join the submitter's trace.
ALTER TABLE scheduler.jobs ADD COLUMN traceparent text;

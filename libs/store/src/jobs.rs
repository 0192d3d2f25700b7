use chrono::{DateTime, Utc};
use mediamesh_core::JobState;
use uuid::Uuid;

use crate::{Result, Store};

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct JobRow {
    pub id: Uuid,
    pub tenant: String,
    pub kind: String,
    pub queue: String,
    pub state: String,
    pub priority: i16,
    pub media_id: Option<Uuid>,
    pub payload: serde_json::Value,
    pub attempt: i32,
    pub max_attempts: i32,
    pub budget: i32,
    pub timeout_ms: i64,
    pub run_at: DateTime<Utc>,
    pub idempotency_key: Option<String>,
    pub dispatched_at: Option<DateTime<Utc>>,
    pub result: Option<serde_json::Value>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub pending_deps: i32,
    pub on_dependency_failure: String,
    pub dispatch_seq: Option<i64>,
    /// The submitter's W3C trace context (absent from queries that do not select it).
    #[sqlx(default)]
    pub traceparent: Option<String>,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct AttemptRow {
    pub job_id: Uuid,
    pub attempt: i32,
    pub worker_id: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub outcome: String,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct JobEventRow {
    pub seq: i64,
    pub job_id: Uuid,
    pub state: String,
    pub attempt: i32,
    pub at: DateTime<Utc>,
}

#[derive(Clone, Debug)]
pub struct NewJob {
    pub id: Uuid,
    pub tenant: String,
    pub kind: String,
    pub queue: String,
    pub priority: i16,
    pub media_id: Option<Uuid>,
    pub payload: serde_json::Value,
    pub max_attempts: i32,
    pub timeout_ms: i64,
    pub run_at: DateTime<Utc>,
    pub idempotency_key: Option<String>,
    pub depends_on: Vec<Uuid>,
    /// FAIL, SKIP or CONTINUE.
    pub on_dependency_failure: String,
    /// The submitter's W3C trace context, carried to the job's dispatches.
    pub traceparent: Option<String>,
}

/// A worker's report about one attempt, as [`Store::apply_reports`] applies it.
#[derive(Clone, Copy, Debug)]
pub enum Report<'a> {
    Started {
        job_id: Uuid,
        attempt: i32,
        worker_id: &'a str,
        at: DateTime<Utc>,
    },
    Succeeded {
        job_id: Uuid,
        attempt: i32,
        worker_id: &'a str,
        result: &'a serde_json::Value,
        at: DateTime<Utc>,
    },
    Failed {
        job_id: Uuid,
        attempt: i32,
        worker_id: &'a str,
        code: &'a str,
        message: &'a str,
        retryable: bool,
        backoff: std::time::Duration,
        at: DateTime<Utc>,
    },
}

/// A state change in the feed of all of a tenant's jobs, with its place in commit order.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct FeedEvent {
    /// The writing transaction's id: the feed's order is (xid, seq).
    pub xid: i64,
    pub seq: i64,
    pub job_id: Uuid,
    pub state: String,
    pub attempt: i32,
    pub at: DateTime<Utc>,
}

/// Which of a tenant's job changes a feed carries.
#[derive(Clone, Debug, Default)]
pub struct FeedFilter {
    pub tenant: String,
    pub kind: Option<String>,
    pub state: Option<JobState>,
    pub media_id: Option<Uuid>,
}

/// Inserts `jobs` (one statement for the jobs and their first events, whatever their number
/// and tenants) and links their dependencies. A job whose idempotency key is taken comes back
/// as the job that holds it, marked not new. In the order of `jobs`.
pub(crate) async fn insert_jobs(tx: &mut sqlx::PgConnection, jobs: &[&NewJob]) -> Result<Vec<(JobRow, bool)>> {
    let inserted: Vec<JobRow> = sqlx::query_as(
        "WITH input AS ( \
           SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int2[], $6::uuid[], \
             $7::jsonb[], $8::int4[], $9::int8[], $10::timestamptz[], $11::text[], $12::text[], $13::text[]) \
           WITH ORDINALITY AS t(id, tenant, kind, queue, priority, media_id, payload, max_attempts, \
             timeout_ms, run_at, idempotency_key, on_dependency_failure, traceparent, n)), \
         ins AS ( \
           INSERT INTO scheduler.jobs \
             (id, tenant, kind, queue, state, priority, media_id, payload, max_attempts, budget, \
              timeout_ms, run_at, idempotency_key, on_dependency_failure, traceparent) \
           SELECT id, tenant, kind, queue, CASE WHEN run_at > now() THEN 'SCHEDULED' ELSE 'QUEUED' END, \
             priority, media_id, payload, max_attempts, max_attempts, timeout_ms, run_at, idempotency_key, \
             on_dependency_failure, traceparent \
           FROM input ORDER BY n \
           ON CONFLICT (tenant, idempotency_key) DO NOTHING RETURNING *), \
         events AS ( \
           INSERT INTO scheduler.job_events (job_id, state, attempt) \
           SELECT ins.id, ins.state, 0 FROM ins JOIN input USING (id) ORDER BY input.n) \
         SELECT * FROM ins",
    )
    .bind(jobs.iter().map(|j| j.id).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.tenant.as_str()).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.kind.as_str()).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.queue.as_str()).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.priority).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.media_id).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.payload.clone()).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.max_attempts).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.timeout_ms).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.run_at).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.idempotency_key.as_deref()).collect::<Vec<_>>())
    .bind(
        jobs.iter()
            .map(|j| j.on_dependency_failure.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(jobs.iter().map(|j| j.traceparent.as_deref()).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await?;
    let mut inserted: std::collections::HashMap<Uuid, JobRow> = inserted.into_iter().map(|row| (row.id, row)).collect();
    let mut out = Vec::with_capacity(jobs.len());
    for job in jobs {
        match inserted.remove(&job.id) {
            Some(row) => {
                let row = if job.depends_on.is_empty() {
                    row
                } else {
                    link_dependencies(&mut *tx, &row, &job.depends_on).await?
                };
                out.push((row, true));
            }
            None => {
                let existing: JobRow =
                    sqlx::query_as("SELECT * FROM scheduler.jobs WHERE tenant = $1 AND idempotency_key = $2")
                        .bind(&job.tenant)
                        .bind(&job.idempotency_key)
                        .fetch_one(&mut *tx)
                        .await?;
                out.push((existing, false));
            }
        }
    }
    Ok(out)
}

/// Which finished jobs `retry_jobs` takes.
#[derive(Clone, Debug)]
pub struct RetryFilter {
    pub tenant: String,
    /// FAILED or CANCELLED.
    pub state: JobState,
    pub kind: Option<String>,
    pub error_code: Option<String>,
    pub finished_after: Option<DateTime<Utc>>,
    pub finished_before: Option<DateTime<Utc>>,
    pub media_id: Option<Uuid>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    pub limit: i64,
    pub dry_run: bool,
}

/// How many finished jobs to keep per tenant and state, and for how long.
#[derive(Clone, Copy, Debug)]
pub struct RetentionPolicy {
    pub succeeded: i64,
    pub failed: i64,
    pub cancelled: i64,
    pub max_age_secs: f64,
    /// Jobs deleted per call, at most.
    pub batch: i64,
}

/// What one retention pass deleted: the jobs, and the output blobs no remaining job refers to.
#[derive(Clone, Debug, Default)]
pub struct Pruned {
    pub jobs: Vec<Uuid>,
    pub orphaned_blobs: Vec<String>,
}

/// A dependency of an aggregate, as it ended.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ChildResult {
    pub id: Uuid,
    pub kind: String,
    pub state: String,
    pub result: Option<serde_json::Value>,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct QueueRates {
    pub queue: String,
    pub kind: String,
    pub succeeded_5m: i64,
    pub failed_5m: i64,
    pub oldest_wait_secs: Option<f64>,
    pub mean_run_secs: Option<f64>,
}

#[derive(Clone, Debug, Default)]
pub struct JobFilter {
    pub tenant: String,
    pub media_id: Option<Uuid>,
    pub state: Option<JobState>,
    pub kind: Option<String>,
    pub after: Option<Uuid>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    /// Jobs whose recorded error has this code (`BAD_INPUT`, ...).
    pub error_code: Option<String>,
    /// Newest first: `after` then pages back in time.
    pub newest_first: bool,
    pub limit: i64,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct QueueCounts {
    pub queue: String,
    pub kind: String,
    pub state: String,
    pub count: i64,
}

/// A transition that took effect: the event row it wrote, and those of the jobs that depend
/// on it and ended because of it (a failed dependency).
#[derive(Clone, Debug)]
pub struct CompletedTransition {
    pub event: JobEventRow,
    pub cascaded: Vec<JobEventRow>,
    /// For a finished attempt (succeeded or failed): the job's kind and when the attempt
    /// started.
    pub attempt_run: Option<AttemptRun>,
    /// Jobs this transition left with no dependency to wait for: due now, unless their
    /// `run_at` is later. The dispatcher learns of them from here.
    pub released: Vec<Uuid>,
}

/// The kind of job a finished attempt belonged to, and when it started.
#[derive(Clone, Debug)]
pub struct AttemptRun {
    pub kind: String,
    pub started_at: DateTime<Utc>,
}

impl CompletedTransition {
    /// Every event the transition wrote, its own first.
    pub fn events(&self) -> impl Iterator<Item = &JobEventRow> {
        std::iter::once(&self.event).chain(self.cascaded.iter())
    }
}

impl Store {
    /// The dependencies of the given jobs, as (job id, dependency id) pairs.
    pub async fn dependencies_of(&self, job_ids: &[Uuid]) -> Result<Vec<(Uuid, Uuid)>> {
        Ok(sqlx::query_as(
            "SELECT job_id, depends_on FROM scheduler.job_dependencies WHERE job_id = ANY($1) \
             ORDER BY job_id, depends_on",
        )
        .bind(job_ids)
        .fetch_all(self.pool())
        .await?)
    }

    /// The dependencies of a job with their outcome and result (what an aggregate combines).
    pub async fn dependency_results(&self, job_id: Uuid) -> Result<Vec<ChildResult>> {
        Ok(sqlx::query_as(
            "SELECT j.id, j.kind, j.state, j.result FROM scheduler.job_dependencies d \
             JOIN scheduler.jobs j ON j.id = d.depends_on WHERE d.job_id = $1 ORDER BY j.id",
        )
        .bind(job_id)
        .fetch_all(self.pool())
        .await?)
    }

    pub async fn get_job(&self, tenant: &str, id: Uuid) -> Result<Option<JobRow>> {
        Ok(
            sqlx::query_as("SELECT * FROM scheduler.jobs WHERE tenant = $1 AND id = $2")
                .bind(tenant)
                .bind(id)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    /// The tenant's jobs among `ids`.
    pub async fn jobs_by_id(&self, tenant: &str, ids: &[Uuid]) -> Result<Vec<JobRow>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(
            sqlx::query_as("SELECT * FROM scheduler.jobs WHERE tenant = $1 AND id = ANY($2)")
                .bind(tenant)
                .bind(ids)
                .fetch_all(self.pool())
                .await?,
        )
    }

    pub async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobRow>> {
        // The filter, shared by both orders (a literal, so that sqlx sees static SQL).
        macro_rules! matching {
            () => {
                "SELECT * FROM scheduler.jobs WHERE tenant = $1 \
                 AND ($2::uuid IS NULL OR media_id = $2) \
                 AND ($3::text IS NULL OR state = $3) \
                 AND ($4::text IS NULL OR kind = $4) \
                 AND ($7::timestamptz IS NULL OR created_at >= $7) \
                 AND ($8::timestamptz IS NULL OR created_at < $8) \
                 AND ($9::text IS NULL OR error_code = $9) "
            };
        }
        let query: &'static str = if filter.newest_first {
            concat!(
                matching!(),
                "AND ($5::uuid IS NULL OR id < $5) ORDER BY id DESC LIMIT $6"
            )
        } else {
            concat!(matching!(), "AND ($5::uuid IS NULL OR id > $5) ORDER BY id LIMIT $6")
        };
        Ok(sqlx::query_as(query)
            .bind(&filter.tenant)
            .bind(filter.media_id)
            .bind(filter.state.map(JobState::as_str))
            .bind(filter.kind.as_deref())
            .bind(filter.after)
            .bind(filter.limit)
            .bind(filter.created_after)
            .bind(filter.created_before)
            .bind(filter.error_code.as_deref())
            .fetch_all(self.pool())
            .await?)
    }

    /// Where a feed that starts now begins: below the oldest transaction still running,
    /// everything has been committed (or never will be).
    pub async fn feed_start(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
                .fetch_one(self.pool())
                .await?,
        )
    }

    /// The tenant's job changes after (xid, seq), in commit order, that no transaction still
    /// running can precede: a change committed later always sorts after what this returned.
    pub async fn feed(&self, filter: &FeedFilter, after: (i64, i64), limit: i64) -> Result<Vec<FeedEvent>> {
        Ok(sqlx::query_as(
            "SELECT e.xid::text::bigint AS xid, e.seq, e.job_id, e.state, e.attempt, e.at \
             FROM scheduler.job_events e JOIN scheduler.jobs j ON j.id = e.job_id \
             WHERE (e.xid, e.seq) > ($2::text::xid8, $3) \
               AND e.xid < pg_snapshot_xmin(pg_current_snapshot()) \
               AND j.tenant = $1 \
               AND ($4::text IS NULL OR j.kind = $4) \
               AND ($5::text IS NULL OR e.state = $5) \
               AND ($6::uuid IS NULL OR j.media_id = $6) \
             ORDER BY e.xid, e.seq LIMIT $7",
        )
        .bind(&filter.tenant)
        .bind(after.0.to_string())
        .bind(after.1)
        .bind(filter.kind.as_deref())
        .bind(filter.state.map(JobState::as_str))
        .bind(filter.media_id)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    /// The attempts of the given jobs, in order per job.
    pub async fn attempts_of(&self, job_ids: &[Uuid]) -> Result<Vec<AttemptRow>> {
        Ok(
            sqlx::query_as("SELECT * FROM scheduler.attempts WHERE job_id = ANY($1) ORDER BY job_id, attempt")
                .bind(job_ids)
                .fetch_all(self.pool())
                .await?,
        )
    }

    pub async fn job_events(&self, job_id: Uuid, after_seq: i64) -> Result<Vec<JobEventRow>> {
        Ok(
            sqlx::query_as("SELECT * FROM scheduler.job_events WHERE job_id = $1 AND seq > $2 ORDER BY seq")
                .bind(job_id)
                .bind(after_seq)
                .fetch_all(self.pool())
                .await?,
        )
    }

    /// QUEUED -> RUNNING for this attempt, and the attempt's record. A later attempt of a job
    /// that is already running is a redelivery (its worker died or went silent past
    /// `ack_wait`): the lost attempt is closed as UNAVAILABLE and the job moves on to the new
    /// one. Returns the event when the job changed; a late or repeated report changes nothing.
    pub async fn mark_started(
        &self,
        job_id: Uuid,
        attempt: i32,
        worker_id: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<CompletedTransition>> {
        let report = Report::Started {
            job_id,
            attempt,
            worker_id,
            at,
        };
        Ok(self.apply_reports(std::slice::from_ref(&report)).await?.pop().flatten())
    }

    /// Records a successful attempt: RUNNING (or QUEUED, when the start report was lost) ->
    /// SUCCEEDED with the result.
    pub async fn mark_succeeded(
        &self,
        job_id: Uuid,
        attempt: i32,
        worker_id: &str,
        result: &serde_json::Value,
        at: DateTime<Utc>,
    ) -> Result<Option<CompletedTransition>> {
        let report = Report::Succeeded {
            job_id,
            attempt,
            worker_id,
            result,
            at,
        };
        Ok(self.apply_reports(std::slice::from_ref(&report)).await?.pop().flatten())
    }

    /// Records a failed attempt. A retryable failure with attempts left goes to SCHEDULED with
    /// `run_at = at + backoff`; anything else is FAILED.
    #[allow(clippy::too_many_arguments)]
    pub async fn mark_failed(
        &self,
        job_id: Uuid,
        attempt: i32,
        worker_id: &str,
        code: &str,
        message: &str,
        retryable: bool,
        backoff: std::time::Duration,
        at: DateTime<Utc>,
    ) -> Result<Option<CompletedTransition>> {
        let report = Report::Failed {
            job_id,
            attempt,
            worker_id,
            code,
            message,
            retryable,
            backoff,
            at,
        };
        Ok(self.apply_reports(std::slice::from_ref(&report)).await?.pop().flatten())
    }

    /// Applies workers' reports in order, in one transaction (one commit for the lot). Each
    /// gets the transition it made, or None when it changed nothing (late, repeated, for
    /// another attempt). An error undoes the whole batch: apply its reports one by one then.
    pub async fn apply_reports(&self, reports: &[Report<'_>]) -> Result<Vec<Option<CompletedTransition>>> {
        let mut tx = self.pool().begin().await?;
        if reports.len() > 1 && set_applicable(reports) {
            let out = apply_set(&mut tx, reports).await?;
            tx.commit().await?;
            return Ok(out);
        }
        let mut out = Vec::with_capacity(reports.len());
        for report in reports {
            out.push(match *report {
                Report::Started {
                    job_id,
                    attempt,
                    worker_id,
                    at,
                } => started_in(&mut tx, job_id, attempt, worker_id, at).await?,
                Report::Succeeded {
                    job_id,
                    attempt,
                    worker_id,
                    result,
                    at,
                } => succeeded_in(&mut tx, job_id, attempt, worker_id, result, at).await?,
                Report::Failed {
                    job_id,
                    attempt,
                    worker_id,
                    code,
                    message,
                    retryable,
                    backoff,
                    at,
                } => {
                    failed_in(
                        &mut tx, job_id, attempt, worker_id, code, message, retryable, backoff, at,
                    )
                    .await?
                }
            });
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Any non-terminal state -> CANCELLED. Returns the transition when the job changed state,
    /// and the attempt the cancellation covers: the one running, or for a job waiting, the next
    /// one, which the row moves to (its message may already be on its way: the dispatcher
    /// records an attempt in the row only when it starts, or when it waits long, see
    /// [`Store::record_dispatches`]). A retry then runs as the attempt after it, never as one
    /// the cancellation covers.
    pub async fn cancel_job(&self, tenant: &str, job_id: Uuid) -> Result<Option<(CompletedTransition, i32)>> {
        let mut tx = self.pool().begin().await?;
        let cancelled: Option<i32> = sqlx::query_scalar(
            "UPDATE scheduler.jobs j SET state = 'CANCELLED', finished_at = now(), updated_at = now(), \
               error_code = 'CANCELLED', error_message = 'cancelled by request', \
               attempt = CASE WHEN old.waiting THEN j.attempt + 1 ELSE j.attempt END, \
               dispatched_at = NULL, dispatch_seq = NULL \
             FROM (SELECT id, state IN ('QUEUED', 'SCHEDULED') AND dispatched_at IS NULL AS waiting \
                   FROM scheduler.jobs \
                   WHERE tenant = $1 AND id = $2 AND state IN ('QUEUED', 'SCHEDULED', 'RUNNING') \
                   FOR UPDATE) old \
             WHERE j.id = old.id \
             RETURNING j.attempt",
        )
        .bind(tenant)
        .bind(job_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(attempt) = cancelled else {
            return Ok(None);
        };
        sqlx::query(
            "UPDATE scheduler.attempts SET finished_at = now(), outcome = 'CANCELLED', \
               error_code = 'CANCELLED', error_message = 'cancelled by request' \
             WHERE job_id = $1 AND attempt = $2 AND finished_at IS NULL",
        )
        .bind(job_id)
        .bind(attempt)
        .execute(&mut *tx)
        .await?;
        let event = insert_event(&mut tx, job_id, JobState::Cancelled, attempt).await?;
        let (cascaded, released) = settle_dependents(&mut tx, job_id, JobState::Cancelled).await?;
        tx.commit().await?;
        Ok(Some((
            CompletedTransition {
                event,
                cascaded,
                attempt_run: None,
                released,
            },
            attempt,
        )))
    }

    /// FAILED or CANCELLED -> QUEUED with a fresh attempt budget. Returns the job as the
    /// retry left it, with the event.
    pub async fn retry_job(&self, tenant: &str, job_id: Uuid) -> Result<Option<(JobRow, CompletedTransition)>> {
        let mut tx = self.pool().begin().await?;
        let row: Option<JobRow> = sqlx::query_as(
            "UPDATE scheduler.jobs SET state = 'QUEUED', max_attempts = attempt + budget, \
               run_at = now(), dispatched_at = NULL, finished_at = NULL, error_code = NULL, \
               error_message = NULL, result = NULL, updated_at = now() \
             WHERE tenant = $1 AND id = $2 AND state IN ('FAILED', 'CANCELLED') RETURNING *",
        )
        .bind(tenant)
        .bind(job_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let event = insert_event(&mut tx, job_id, JobState::Queued, row.attempt).await?;
        tx.commit().await?;
        Ok(Some((
            row,
            CompletedTransition {
                event,
                cascaded: Vec::new(),
                attempt_run: None,
                released: Vec::new(),
            },
        )))
    }

    /// Retries the FAILED (or CANCELLED) jobs that match, oldest first; with `dry_run` only
    /// lists them. Returns the ids and the events written.
    pub async fn retry_jobs(&self, filter: &RetryFilter) -> Result<Vec<(Uuid, Option<JobEventRow>)>> {
        let mut tx = self.pool().begin().await?;
        // The filter, shared by both queries (a literal, so that sqlx sees static SQL).
        macro_rules! matching {
            () => {
                "SELECT id FROM scheduler.jobs WHERE tenant = $1 AND state = $2 \
                 AND ($3::text IS NULL OR kind = $3) AND ($4::text IS NULL OR error_code = $4) \
                 AND ($5::timestamptz IS NULL OR finished_at >= $5) \
                 AND ($6::timestamptz IS NULL OR finished_at < $6) \
                 AND ($8::uuid IS NULL OR media_id = $8) \
                 AND ($9::timestamptz IS NULL OR created_at >= $9) \
                 AND ($10::timestamptz IS NULL OR created_at < $10) \
                 ORDER BY finished_at, id LIMIT $7"
            };
        }
        let query: &'static str = if filter.dry_run {
            matching!()
        } else {
            concat!(
                "WITH picked AS (",
                matching!(),
                " FOR UPDATE SKIP LOCKED) \
                 UPDATE scheduler.jobs j SET state = 'QUEUED', max_attempts = j.attempt + j.budget, \
                   run_at = now(), dispatched_at = NULL, finished_at = NULL, error_code = NULL, \
                   error_message = NULL, result = NULL, updated_at = now() \
                 FROM picked WHERE j.id = picked.id RETURNING j.id"
            )
        };
        let ids: Vec<Uuid> = sqlx::query_scalar(query)
            .bind(&filter.tenant)
            .bind(filter.state.as_str())
            .bind(filter.kind.as_deref())
            .bind(filter.error_code.as_deref())
            .bind(filter.finished_after)
            .bind(filter.finished_before)
            .bind(filter.limit)
            .bind(filter.media_id)
            .bind(filter.created_after)
            .bind(filter.created_before)
            .fetch_all(&mut *tx)
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if filter.dry_run {
                out.push((id, None));
            } else {
                let attempt: i32 = sqlx::query_scalar("SELECT attempt FROM scheduler.jobs WHERE id = $1")
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
                let event = insert_event(&mut tx, id, JobState::Queued, attempt).await?;
                out.push((id, Some(event)));
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    pub async fn queue_counts(&self, tenant: &str) -> Result<Vec<QueueCounts>> {
        Ok(sqlx::query_as(
            "SELECT queue, kind, state, count(*) AS count FROM scheduler.jobs WHERE tenant = $1 \
             GROUP BY queue, kind, state ORDER BY queue, kind, state",
        )
        .bind(tenant)
        .fetch_all(self.pool())
        .await?)
    }

    /// Per queue and kind: jobs ended SUCCEEDED and FAILED in the last five minutes, the wait
    /// of the oldest due job, and the mean run time of attempts ended in the last five minutes.
    pub async fn queue_rates(&self, tenant: &str) -> Result<Vec<QueueRates>> {
        Ok(sqlx::query_as(
            "WITH recent AS ( \
               SELECT queue, kind, count(*) FILTER (WHERE state = 'SUCCEEDED') AS succeeded_5m, \
                 count(*) FILTER (WHERE state = 'FAILED') AS failed_5m \
               FROM scheduler.jobs WHERE tenant = $1 AND finished_at > now() - interval '5 minutes' \
               GROUP BY queue, kind), \
             waiting AS ( \
               SELECT queue, kind, extract(epoch FROM now() - min(run_at))::float8 AS oldest_wait_secs \
               FROM scheduler.jobs WHERE tenant = $1 AND state IN ('QUEUED', 'SCHEDULED') \
                 AND run_at <= now() GROUP BY queue, kind), \
             runs AS ( \
               SELECT j.queue, j.kind, \
                 avg(extract(epoch FROM a.finished_at - a.started_at))::float8 AS mean_run_secs \
               FROM scheduler.attempts a JOIN scheduler.jobs j ON j.id = a.job_id \
               WHERE j.tenant = $1 AND a.finished_at > now() - interval '5 minutes' \
               GROUP BY j.queue, j.kind) \
             SELECT queue, kind, coalesce(r.succeeded_5m, 0) AS succeeded_5m, \
               coalesce(r.failed_5m, 0) AS failed_5m, w.oldest_wait_secs, u.mean_run_secs \
             FROM recent r FULL JOIN waiting w USING (queue, kind) FULL JOIN runs u USING (queue, kind)",
        )
        .bind(tenant)
        .fetch_all(self.pool())
        .await?)
    }

    /// Deletes finished jobs beyond the policy's count per tenant and state, or older than its
    /// age, except those a job still waiting depends on, with their events and attempts (no
    /// foreign key cascades to them: the hot path does not pay for one). Returns them, with the output blob
    /// keys that no remaining job refers to (the caller deletes those blobs).
    pub async fn prune_finished(&self, policy: &RetentionPolicy) -> Result<Pruned> {
        let mut tx = self.pool().begin().await?;
        let deleted: Vec<(Uuid, Option<serde_json::Value>)> = sqlx::query_as(
            "WITH ranked AS ( \
               SELECT id, state, finished_at, \
                 row_number() OVER (PARTITION BY tenant, state ORDER BY finished_at DESC, id DESC) AS n \
               FROM scheduler.jobs \
               WHERE state IN ('SUCCEEDED', 'FAILED', 'CANCELLED') AND finished_at IS NOT NULL), \
             doomed AS ( \
               SELECT r.id FROM ranked r \
               WHERE (r.n > CASE r.state WHEN 'SUCCEEDED' THEN $1 WHEN 'FAILED' THEN $2 ELSE $3 END \
                   OR r.finished_at < now() - make_interval(secs => $4)) \
                 AND NOT EXISTS ( \
                   SELECT 1 FROM scheduler.job_dependencies d JOIN scheduler.jobs p ON p.id = d.job_id \
                   WHERE d.depends_on = r.id AND p.state IN ('QUEUED', 'SCHEDULED', 'RUNNING')) \
               LIMIT $5), \
             gone AS (DELETE FROM scheduler.jobs j USING doomed WHERE j.id = doomed.id \
               RETURNING j.id, j.result), \
             events AS (DELETE FROM scheduler.job_events e USING gone WHERE e.job_id = gone.id), \
             attempts AS (DELETE FROM scheduler.attempts a USING gone WHERE a.job_id = gone.id) \
             SELECT id, result FROM gone",
        )
        .bind(policy.succeeded)
        .bind(policy.failed)
        .bind(policy.cancelled)
        .bind(policy.max_age_secs)
        .bind(policy.batch)
        .fetch_all(&mut *tx)
        .await?;
        let mut keys: Vec<String> = deleted
            .iter()
            .filter_map(|(_, result)| result.as_ref()?.get("outputs")?.as_array().cloned())
            .flatten()
            .filter_map(|output| output.get("blob_key")?.as_str().map(str::to_owned))
            .collect();
        keys.sort();
        keys.dedup();
        let still_used: Vec<String> = if keys.is_empty() {
            Vec::new()
        } else {
            sqlx::query_scalar(
                "SELECT DISTINCT o->>'blob_key' FROM scheduler.jobs j, \
                   jsonb_array_elements(CASE WHEN jsonb_typeof(j.result->'outputs') = 'array' \
                     THEN j.result->'outputs' ELSE '[]'::jsonb END) o \
                 WHERE j.result IS NOT NULL AND o->>'blob_key' = ANY($1)",
            )
            .bind(&keys)
            .fetch_all(&mut *tx)
            .await?
        };
        tx.commit().await?;
        keys.retain(|key| !still_used.contains(key));
        Ok(Pruned {
            jobs: deleted.into_iter().map(|(id, _)| id).collect(),
            orphaned_blobs: keys,
        })
    }
}

/// Records the dependencies of a job just inserted. Those already ended are settled at once;
/// one that ended FAILED or CANCELLED ends the job (policy FAIL or SKIP) before it ever runs.
async fn started_in(
    tx: &mut sqlx::PgConnection,
    job_id: Uuid,
    attempt: i32,
    worker_id: &str,
    at: DateTime<Utc>,
) -> Result<Option<CompletedTransition>> {
    let previous: Option<(i32, String, Option<DateTime<Utc>>)> = sqlx::query_as(
        "WITH old AS (SELECT attempt, state, dispatched_at FROM scheduler.jobs WHERE id = $1 FOR UPDATE) \
         UPDATE scheduler.jobs j SET state = 'RUNNING', attempt = $2, dispatched_at = NULL, \
           dispatch_seq = NULL, updated_at = now() FROM old \
         WHERE j.id = $1 AND ((old.state = 'QUEUED' AND old.attempt = $2) \
           OR (old.state IN ('QUEUED', 'SCHEDULED', 'RUNNING') AND old.attempt < $2)) \
         RETURNING old.attempt, old.state, old.dispatched_at",
    )
    .bind(job_id)
    .bind(attempt)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((previous_attempt, previous_state, dispatched_at)) = previous else {
        return Ok(None);
    };
    // The attempts sent and lost before this one: from the one the row was at when it was
    // running or recorded as sent; from the next one when the row was waiting (the one it is
    // at ended, or was never sent).
    let first_lost = if dispatched_at.is_none() && previous_state != "RUNNING" {
        previous_attempt + 1
    } else {
        previous_attempt.max(1)
    };
    if previous_attempt < attempt {
        sqlx::query(
            "UPDATE scheduler.attempts SET finished_at = $3, outcome = 'FAILED', \
               error_code = 'UNAVAILABLE', \
               error_message = 'worker ' || worker_id || ' stopped reporting; the job was delivered again' \
             WHERE job_id = $1 AND attempt < $2 AND finished_at IS NULL",
        )
        .bind(job_id)
        .bind(attempt)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        // Deliveries whose worker died before it reported anything (a short job reports its
        // start with its outcome) are attempts all the same: on the record, as lost.
        sqlx::query(
            "INSERT INTO scheduler.attempts \
               (job_id, attempt, worker_id, started_at, finished_at, outcome, error_code, error_message) \
             SELECT $1, a, '', coalesce($4, $3), $3, 'FAILED', 'UNAVAILABLE', \
               'its worker stopped reporting before it reported a start; the job was delivered again' \
             FROM generate_series($5, $2 - 1) AS a \
             ON CONFLICT (job_id, attempt) DO NOTHING",
        )
        .bind(job_id)
        .bind(attempt)
        .bind(at)
        .bind(dispatched_at)
        .bind(first_lost)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "INSERT INTO scheduler.attempts (job_id, attempt, worker_id, started_at, outcome) \
         VALUES ($1, $2, $3, $4, 'RUNNING') ON CONFLICT (job_id, attempt) DO NOTHING",
    )
    .bind(job_id)
    .bind(attempt)
    .bind(worker_id)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    let event = insert_event(&mut *tx, job_id, JobState::Running, attempt).await?;
    Ok(Some(CompletedTransition {
        event,
        cascaded: Vec::new(),
        attempt_run: None,
        released: Vec::new(),
    }))
}

async fn succeeded_in(
    tx: &mut sqlx::PgConnection,
    job_id: Uuid,
    attempt: i32,
    worker_id: &str,
    result: &serde_json::Value,
    at: DateTime<Utc>,
) -> Result<Option<CompletedTransition>> {
    let kind: Option<String> = sqlx::query_scalar(
        "UPDATE scheduler.jobs SET state = 'SUCCEEDED', attempt = $2, result = $3, error_code = NULL, \
           error_message = NULL, finished_at = $4, dispatched_at = NULL, dispatch_seq = NULL, \
           updated_at = now() \
         WHERE id = $1 AND ((attempt = $2 AND state IN ('QUEUED', 'RUNNING')) \
           OR (attempt = $2 - 1 AND state IN ('QUEUED', 'SCHEDULED') AND dispatched_at IS NULL)) \
         RETURNING kind",
    )
    .bind(job_id)
    .bind(attempt)
    .bind(result)
    .bind(at)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(kind) = kind else {
        return Ok(None);
    };
    let started_at = finish_attempt(&mut *tx, job_id, attempt, worker_id, at, "SUCCEEDED", None, None).await?;
    let event = insert_event(&mut *tx, job_id, JobState::Succeeded, attempt).await?;
    let (cascaded, released) = settle_dependents(&mut *tx, job_id, JobState::Succeeded).await?;
    Ok(Some(CompletedTransition {
        event,
        cascaded,
        attempt_run: Some(AttemptRun { kind, started_at }),
        released,
    }))
}

#[allow(clippy::too_many_arguments)]
async fn failed_in(
    tx: &mut sqlx::PgConnection,
    job_id: Uuid,
    attempt: i32,
    worker_id: &str,
    code: &str,
    message: &str,
    retryable: bool,
    backoff: std::time::Duration,
    at: DateTime<Utc>,
) -> Result<Option<CompletedTransition>> {
    let backoff_secs = backoff.as_secs_f64();
    let new_state: Option<(String, String)> = sqlx::query_as(
        "UPDATE scheduler.jobs SET attempt = $2, \
           state = CASE WHEN $5 AND $2 < max_attempts THEN 'SCHEDULED' ELSE 'FAILED' END, \
           run_at = CASE WHEN $5 AND $2 < max_attempts \
             THEN $6 + make_interval(secs => $7) ELSE run_at END, \
           dispatched_at = NULL, dispatch_seq = NULL, error_code = $3, error_message = $4, \
           finished_at = CASE WHEN $5 AND $2 < max_attempts THEN NULL ELSE $6 END, \
           updated_at = now() \
         WHERE id = $1 AND ((attempt = $2 AND state IN ('QUEUED', 'RUNNING')) \
           OR (attempt = $2 - 1 AND state IN ('QUEUED', 'SCHEDULED') AND dispatched_at IS NULL)) \
         RETURNING state, kind",
    )
    .bind(job_id)
    .bind(attempt)
    .bind(code)
    .bind(message)
    .bind(retryable)
    .bind(at)
    .bind(backoff_secs)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((new_state, kind)) = new_state else {
        return Ok(None);
    };
    let started_at = finish_attempt(
        &mut *tx,
        job_id,
        attempt,
        worker_id,
        at,
        "FAILED",
        Some(code),
        Some(message),
    )
    .await?;
    let state = JobState::parse(&new_state).unwrap_or(JobState::Failed);
    let event = insert_event(&mut *tx, job_id, state, attempt).await?;
    let (cascaded, released) = if state.is_terminal() {
        settle_dependents(&mut *tx, job_id, state).await?
    } else {
        (Vec::new(), Vec::new())
    };
    Ok(Some(CompletedTransition {
        event,
        cascaded,
        attempt_run: Some(AttemptRun { kind, started_at }),
        released,
    }))
}

/// Whether a batch can be applied a statement per kind of change rather than per report:
/// only starts and successes, each job at most one of each, its start first.
fn set_applicable(reports: &[Report<'_>]) -> bool {
    let mut seen: std::collections::HashMap<Uuid, (bool, bool)> =
        std::collections::HashMap::with_capacity(reports.len());
    for report in reports {
        match *report {
            Report::Started { job_id, .. } => {
                let entry = seen.entry(job_id).or_default();
                if entry.0 || entry.1 {
                    return false;
                }
                entry.0 = true;
            }
            Report::Succeeded { job_id, .. } => {
                let entry = seen.entry(job_id).or_default();
                if entry.1 {
                    return false;
                }
                entry.1 = true;
            }
            Report::Failed { .. } => return false,
        }
    }
    true
}

/// Inserts one event per (job, state, attempt), in the given order; returns them by job.
async fn insert_events(
    tx: &mut sqlx::PgConnection,
    rows: &[(Uuid, i32)],
    state: JobState,
) -> Result<std::collections::HashMap<Uuid, JobEventRow>> {
    if rows.is_empty() {
        return Ok(std::collections::HashMap::new());
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.0).collect();
    let attempts: Vec<i32> = rows.iter().map(|r| r.1).collect();
    let events: Vec<JobEventRow> = sqlx::query_as(
        "INSERT INTO scheduler.job_events (job_id, state, attempt) \
         SELECT r.id, $3, r.attempt FROM unnest($1::uuid[], $2::int[]) WITH ORDINALITY AS r(id, attempt, n) \
         ORDER BY r.n RETURNING *",
    )
    .bind(&ids)
    .bind(&attempts)
    .bind(state.as_str())
    .fetch_all(&mut *tx)
    .await?;
    Ok(events.into_iter().map(|e| (e.job_id, e)).collect())
}

/// A success report of a batch: its place, job, attempt, worker, result and time.
type Success<'a> = (usize, Uuid, i32, &'a str, &'a serde_json::Value, DateTime<Utc>);

/// [`Store::apply_reports`] for a batch of starts and successes: the usual case of each
/// (a start of the dispatched attempt of a QUEUED job; a success of the attempt a job is at)
/// in a few statements for the whole batch, anything else report by report.
async fn apply_set(tx: &mut sqlx::PgConnection, reports: &[Report<'_>]) -> Result<Vec<Option<CompletedTransition>>> {
    let mut out: Vec<Option<CompletedTransition>> = vec![None; reports.len()];

    // Starts: QUEUED at this attempt -> RUNNING, with the attempt's record and the event.
    let starts: Vec<(usize, Uuid, i32, &str, DateTime<Utc>)> = reports
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match *r {
            Report::Started {
                job_id,
                attempt,
                worker_id,
                at,
            } => Some((i, job_id, attempt, worker_id, at)),
            _ => None,
        })
        .collect();
    // A start and a success of the same attempt in one batch (a short job reports both at
    // once): the job goes from QUEUED to SUCCEEDED in one update, both events written.
    let succeeding: std::collections::HashMap<Uuid, i32> = reports
        .iter()
        .filter_map(|r| match *r {
            Report::Succeeded { job_id, attempt, .. } => Some((job_id, attempt)),
            _ => None,
        })
        .collect();
    let (paired, starts): (Vec<_>, Vec<_>) = starts.into_iter().partition(|s| succeeding.get(&s.1) == Some(&s.2));
    let paired: std::collections::HashMap<Uuid, (usize, DateTime<Utc>)> =
        paired.into_iter().map(|s| (s.1, (s.0, s.4))).collect();
    if !starts.is_empty() {
        let ids: Vec<Uuid> = starts.iter().map(|s| s.1).collect();
        let attempts: Vec<i32> = starts.iter().map(|s| s.2).collect();
        let started: Vec<Uuid> = sqlx::query_scalar(
            "UPDATE scheduler.jobs j SET state = 'RUNNING', attempt = r.attempt, dispatched_at = NULL, \
               dispatch_seq = NULL, updated_at = now() \
             FROM unnest($1::uuid[], $2::int[]) AS r(id, attempt) \
             WHERE j.id = ANY($1) AND j.id = r.id AND (\
               (j.state = 'QUEUED' AND j.attempt = r.attempt) \
               OR (j.state IN ('QUEUED', 'SCHEDULED') AND j.attempt = r.attempt - 1 AND j.dispatched_at IS NULL)) \
             RETURNING j.id",
        )
        .bind(&ids)
        .bind(&attempts)
        .fetch_all(&mut *tx)
        .await?;
        let started: std::collections::HashSet<Uuid> = started.into_iter().collect();
        let done: Vec<_> = starts.iter().filter(|s| started.contains(&s.1)).collect();
        if !done.is_empty() {
            let ids: Vec<Uuid> = done.iter().map(|s| s.1).collect();
            let attempts: Vec<i32> = done.iter().map(|s| s.2).collect();
            let workers: Vec<&str> = done.iter().map(|s| s.3).collect();
            let ats: Vec<DateTime<Utc>> = done.iter().map(|s| s.4).collect();
            sqlx::query(
                "INSERT INTO scheduler.attempts (job_id, attempt, worker_id, started_at, outcome) \
                 SELECT r.id, r.attempt, r.worker, r.at, 'RUNNING' \
                 FROM unnest($1::uuid[], $2::int[], $3::text[], $4::timestamptz[]) AS r(id, attempt, worker, at) \
                 ON CONFLICT (job_id, attempt) DO NOTHING",
            )
            .bind(&ids)
            .bind(&attempts)
            .bind(&workers)
            .bind(&ats)
            .execute(&mut *tx)
            .await?;
            let rows: Vec<(Uuid, i32)> = done.iter().map(|s| (s.1, s.2)).collect();
            let mut events = insert_events(&mut *tx, &rows, JobState::Running).await?;
            for s in &done {
                if let Some(event) = events.remove(&s.1) {
                    out[s.0] = Some(CompletedTransition {
                        event,
                        cascaded: Vec::new(),
                        attempt_run: None,
                        released: Vec::new(),
                    });
                }
            }
        }
        // The rest (a redelivered attempt, a late or repeated report): one by one.
        for s in starts.iter().filter(|s| !started.contains(&s.1)) {
            out[s.0] = started_in(&mut *tx, s.1, s.2, s.3, s.4).await?;
        }
    }

    // Successes: at this attempt and QUEUED or RUNNING -> SUCCEEDED.
    let successes: Vec<Success<'_>> = reports
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match *r {
            Report::Succeeded {
                job_id,
                attempt,
                worker_id,
                result,
                at,
            } => Some((i, job_id, attempt, worker_id, result, at)),
            _ => None,
        })
        .collect();
    if !successes.is_empty() {
        let ids: Vec<Uuid> = successes.iter().map(|s| s.1).collect();
        let attempts: Vec<i32> = successes.iter().map(|s| s.2).collect();
        let results: Vec<&serde_json::Value> = successes.iter().map(|s| s.4).collect();
        let ats: Vec<DateTime<Utc>> = successes.iter().map(|s| s.5).collect();
        let is_paired: Vec<bool> = successes.iter().map(|s| paired.contains_key(&s.1)).collect();
        // A paired success needs the job still QUEUED (its start is applied with it).
        let finished: Vec<(Uuid, String)> = sqlx::query_as(
            "UPDATE scheduler.jobs j SET state = 'SUCCEEDED', attempt = r.attempt, result = r.result, \
               error_code = NULL, error_message = NULL, finished_at = r.at, dispatched_at = NULL, \
               dispatch_seq = NULL, updated_at = now() \
             FROM unnest($1::uuid[], $2::int[], $3::jsonb[], $4::timestamptz[], $5::bool[]) \
               AS r(id, attempt, result, at, paired) \
             WHERE j.id = ANY($1) AND j.id = r.id AND ( \
               (j.attempt = r.attempt AND (j.state = 'QUEUED' OR (j.state = 'RUNNING' AND NOT r.paired))) \
               OR (j.attempt = r.attempt - 1 AND j.state IN ('QUEUED', 'SCHEDULED') \
                   AND j.dispatched_at IS NULL)) \
             RETURNING j.id, j.kind",
        )
        .bind(&ids)
        .bind(&attempts)
        .bind(&results)
        .bind(&ats)
        .bind(&is_paired)
        .fetch_all(&mut *tx)
        .await?;
        let kinds: std::collections::HashMap<Uuid, String> = finished.into_iter().collect();
        let done: Vec<_> = successes.iter().filter(|s| kinds.contains_key(&s.1)).collect();
        if !done.is_empty() {
            let ids: Vec<Uuid> = done.iter().map(|s| s.1).collect();
            let attempts: Vec<i32> = done.iter().map(|s| s.2).collect();
            let workers: Vec<&str> = done.iter().map(|s| s.3).collect();
            let ats: Vec<DateTime<Utc>> = done.iter().map(|s| s.5).collect();
            let starts: Vec<DateTime<Utc>> = done.iter().map(|s| paired.get(&s.1).map_or(s.5, |p| p.1)).collect();
            let started: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
                "INSERT INTO scheduler.attempts (job_id, attempt, worker_id, started_at, finished_at, outcome) \
                 SELECT r.id, r.attempt, r.worker, r.started, r.at, 'SUCCEEDED' \
                 FROM unnest($1::uuid[], $2::int[], $3::text[], $4::timestamptz[], $5::timestamptz[]) \
                   AS r(id, attempt, worker, at, started) \
                 ON CONFLICT (job_id, attempt) DO UPDATE SET worker_id = EXCLUDED.worker_id, \
                   finished_at = EXCLUDED.finished_at, outcome = EXCLUDED.outcome, \
                   error_code = NULL, error_message = NULL \
                 RETURNING job_id, started_at",
            )
            .bind(&ids)
            .bind(&attempts)
            .bind(&workers)
            .bind(&ats)
            .bind(&starts)
            .fetch_all(&mut *tx)
            .await?;
            let started: std::collections::HashMap<Uuid, DateTime<Utc>> = started.into_iter().collect();
            // The paired ones' RUNNING events first, so that each job's history stays in order.
            let running: Vec<(Uuid, i32)> = done
                .iter()
                .filter(|s| paired.contains_key(&s.1))
                .map(|s| (s.1, s.2))
                .collect();
            let running_events = insert_events(&mut *tx, &running, JobState::Running).await?;
            for (job_id, event) in running_events {
                if let Some((index, _)) = paired.get(&job_id) {
                    out[*index] = Some(CompletedTransition {
                        event,
                        cascaded: Vec::new(),
                        attempt_run: None,
                        released: Vec::new(),
                    });
                }
            }
            let rows: Vec<(Uuid, i32)> = done.iter().map(|s| (s.1, s.2)).collect();
            let mut events = insert_events(&mut *tx, &rows, JobState::Succeeded).await?;
            // Their dependents have one dependency fewer to wait for (a success ends none).
            let mut released: Vec<Uuid> = sqlx::query_as::<_, (Uuid, i32)>(
                "WITH settled AS ( \
                   UPDATE scheduler.job_dependencies SET settled = true \
                   WHERE depends_on = ANY($1) AND NOT settled RETURNING job_id), \
                 counts AS (SELECT job_id, count(*) AS n FROM settled GROUP BY job_id) \
                 UPDATE scheduler.jobs j SET pending_deps = greatest(j.pending_deps - counts.n, 0) \
                 FROM counts WHERE j.id = counts.job_id RETURNING j.id, j.pending_deps",
            )
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .filter_map(|(id, pending)| (pending == 0).then_some(id))
            .collect();
            for s in &done {
                if let (Some(event), Some(kind), Some(started_at)) =
                    (events.remove(&s.1), kinds.get(&s.1), started.get(&s.1))
                {
                    out[s.0] = Some(CompletedTransition {
                        event,
                        cascaded: Vec::new(),
                        attempt_run: Some(AttemptRun {
                            kind: kind.clone(),
                            started_at: *started_at,
                        }),
                        // The batch's released dependents go with its first success.
                        released: std::mem::take(&mut released),
                    });
                }
            }
        }
        // The rest, one by one (a paired one's start first).
        for s in successes.iter().filter(|s| !kinds.contains_key(&s.1)) {
            if let Some((index, at)) = paired.get(&s.1) {
                out[*index] = started_in(&mut *tx, s.1, s.2, s.3, *at).await?;
            }
            out[s.0] = succeeded_in(&mut *tx, s.1, s.2, s.3, s.4, s.5).await?;
        }
    }
    Ok(out)
}

async fn link_dependencies(tx: &mut sqlx::PgConnection, row: &JobRow, depends_on: &[Uuid]) -> Result<JobRow> {
    let mut ids = depends_on.to_vec();
    ids.sort();
    ids.dedup();
    // FOR SHARE waits for a transition of a dependency under way, so that it either ended
    // before (seen here) or settles this job after (it sees the row inserted below).
    let found: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT id, state FROM scheduler.jobs WHERE tenant = $1 AND id = ANY($2) ORDER BY id FOR SHARE")
            .bind(&row.tenant)
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?;
    if found.len() != ids.len() {
        let missing = ids
            .iter()
            .find(|id| !found.iter().any(|(f, _)| f == *id))
            .map(Uuid::to_string)
            .unwrap_or_default();
        return Err(crate::Error::NotFound(format!("depends_on: job {missing} not found")));
    }
    let ended = |state: &str| JobState::parse(state).is_ok_and(JobState::is_terminal);
    let settled: Vec<bool> = found.iter().map(|(_, state)| ended(state)).collect();
    let found_ids: Vec<Uuid> = found.iter().map(|(id, _)| *id).collect();
    sqlx::query(
        "INSERT INTO scheduler.job_dependencies (job_id, depends_on, settled) \
         SELECT $1, d, s FROM unnest($2::uuid[], $3::bool[]) AS t(d, s)",
    )
    .bind(row.id)
    .bind(&found_ids)
    .bind(&settled)
    .execute(&mut *tx)
    .await?;
    let pending = i32::try_from(settled.iter().filter(|s| !**s).count()).unwrap_or(i32::MAX);
    sqlx::query("UPDATE scheduler.jobs SET pending_deps = $2 WHERE id = $1")
        .bind(row.id)
        .bind(pending)
        .execute(&mut *tx)
        .await?;
    let failed = found
        .iter()
        .find(|(_, state)| state == "FAILED" || state == "CANCELLED");
    if let Some((dependency, state)) = failed
        && row.on_dependency_failure != "CONTINUE"
    {
        end_for_dependency(&mut *tx, row.id, &row.on_dependency_failure, *dependency, state).await?;
    }
    Ok(sqlx::query_as("SELECT * FROM scheduler.jobs WHERE id = $1")
        .bind(row.id)
        .fetch_one(&mut *tx)
        .await?)
}

/// Ends a waiting job because `dependency` ended `state`: FAILED with DEPENDENCY_FAILED
/// (policy FAIL) or CANCELLED (policy SKIP). Returns the event when the job changed.
async fn end_for_dependency(
    tx: &mut sqlx::PgConnection,
    job_id: Uuid,
    policy: &str,
    dependency: Uuid,
    state: &str,
) -> Result<Option<(JobEventRow, JobState)>> {
    let (new_state, code, message) = if policy == "SKIP" {
        (
            JobState::Cancelled,
            "CANCELLED",
            format!("skipped: dependency {dependency} ended {state}"),
        )
    } else {
        (
            JobState::Failed,
            "DEPENDENCY_FAILED",
            format!("dependency {dependency} ended {state}"),
        )
    };
    let attempt: Option<i32> = sqlx::query_scalar(
        "UPDATE scheduler.jobs SET state = $2, error_code = $3, error_message = $4, \
           finished_at = now(), updated_at = now() \
         WHERE id = $1 AND state IN ('QUEUED', 'SCHEDULED') AND dispatched_at IS NULL RETURNING attempt",
    )
    .bind(job_id)
    .bind(new_state.as_str())
    .bind(code)
    .bind(&message)
    .fetch_optional(&mut *tx)
    .await?;
    match attempt {
        Some(attempt) => Ok(Some((insert_event(tx, job_id, new_state, attempt).await?, new_state))),
        None => Ok(None),
    }
}

/// After `job_id` ended `state`: counts it off every job that depends on it, and ends those
/// whose policy says a failed dependency fails or skips them, and so on down the graph.
/// Returns the events written and the jobs left with nothing to wait for.
async fn settle_dependents(
    tx: &mut sqlx::PgConnection,
    job_id: Uuid,
    state: JobState,
) -> Result<(Vec<JobEventRow>, Vec<Uuid>)> {
    let mut events = Vec::new();
    let mut released = Vec::new();
    let mut ended = vec![(job_id, state)];
    while let Some((dependency, state)) = ended.pop() {
        let dependents: Vec<(Uuid, String, i32)> = sqlx::query_as(
            "WITH settled AS ( \
               UPDATE scheduler.job_dependencies SET settled = true \
               WHERE depends_on = $1 AND NOT settled RETURNING job_id) \
             UPDATE scheduler.jobs j SET pending_deps = greatest(j.pending_deps - 1, 0) \
             FROM settled WHERE j.id = settled.job_id \
             RETURNING j.id, j.on_dependency_failure, j.pending_deps",
        )
        .bind(dependency)
        .fetch_all(&mut *tx)
        .await?;
        let failed = matches!(state, JobState::Failed | JobState::Cancelled);
        for (dependent, policy, pending) in dependents {
            if failed && policy != "CONTINUE" {
                if let Some((event, new_state)) =
                    end_for_dependency(&mut *tx, dependent, &policy, dependency, state.as_str()).await?
                {
                    events.push(event);
                    ended.push((dependent, new_state));
                }
            } else if pending == 0 {
                released.push(dependent);
            }
        }
    }
    Ok((events, released))
}

async fn insert_event(tx: &mut sqlx::PgConnection, job_id: Uuid, state: JobState, attempt: i32) -> Result<JobEventRow> {
    Ok(
        sqlx::query_as("INSERT INTO scheduler.job_events (job_id, state, attempt) VALUES ($1, $2, $3) RETURNING *")
            .bind(job_id)
            .bind(state.as_str())
            .bind(attempt)
            .fetch_one(tx)
            .await?,
    )
}

#[allow(clippy::too_many_arguments)]
async fn finish_attempt(
    tx: &mut sqlx::PgConnection,
    job_id: Uuid,
    attempt: i32,
    worker_id: &str,
    at: DateTime<Utc>,
    outcome: &str,
    code: Option<&str>,
    message: Option<&str>,
) -> Result<DateTime<Utc>> {
    Ok(sqlx::query_scalar(
        "INSERT INTO scheduler.attempts \
           (job_id, attempt, worker_id, started_at, finished_at, outcome, error_code, error_message) \
         VALUES ($1, $2, $3, $4, $4, $5, $6, $7) \
         ON CONFLICT (job_id, attempt) DO UPDATE SET worker_id = EXCLUDED.worker_id, \
           finished_at = EXCLUDED.finished_at, outcome = EXCLUDED.outcome, \
           error_code = EXCLUDED.error_code, error_message = EXCLUDED.error_message \
         RETURNING started_at",
    )
    .bind(job_id)
    .bind(attempt)
    .bind(worker_id)
    .bind(at)
    .bind(outcome)
    .bind(code)
    .bind(message)
    .fetch_one(tx)
    .await?)
}

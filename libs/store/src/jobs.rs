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
}

/// A job claimed for dispatch: its new attempt has been committed, the message is still to send.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct DueJob {
    pub id: Uuid,
    pub tenant: String,
    pub kind: String,
    pub queue: String,
    pub media_id: Option<Uuid>,
    pub payload: serde_json::Value,
    pub attempt: i32,
    pub timeout_ms: i64,
    pub priority: i16,
}

#[derive(Clone, Debug, Default)]
pub struct JobFilter {
    pub tenant: String,
    pub media_id: Option<Uuid>,
    pub state: Option<JobState>,
    pub kind: Option<String>,
    pub after: Option<Uuid>,
    pub limit: i64,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct QueueCounts {
    pub queue: String,
    pub kind: String,
    pub state: String,
    pub count: i64,
}

/// A transition that took effect: the event row it wrote.
#[derive(Clone, Debug)]
pub struct CompletedTransition {
    pub event: JobEventRow,
}

impl Store {
    /// Commits the jobs in one transaction. A job whose idempotency key the tenant used before
    /// is not inserted: the earlier job is returned with `false`.
    pub async fn create_jobs(&self, jobs: &[NewJob]) -> Result<Vec<(JobRow, bool)>> {
        let mut tx = self.pool().begin().await?;
        let mut out = Vec::with_capacity(jobs.len());
        for job in jobs {
            let inserted: Option<JobRow> = sqlx::query_as(
                "INSERT INTO scheduler.jobs \
                 (id, tenant, kind, queue, state, priority, media_id, payload, max_attempts, budget, \
                  timeout_ms, run_at, idempotency_key) \
                 VALUES ($1, $2, $3, $4, 'QUEUED', $5, $6, $7, $8, $8, $9, $10, $11) \
                 ON CONFLICT (tenant, idempotency_key) DO NOTHING RETURNING *",
            )
            .bind(job.id)
            .bind(&job.tenant)
            .bind(&job.kind)
            .bind(&job.queue)
            .bind(job.priority)
            .bind(job.media_id)
            .bind(&job.payload)
            .bind(job.max_attempts)
            .bind(job.timeout_ms)
            .bind(job.run_at)
            .bind(&job.idempotency_key)
            .fetch_optional(&mut *tx)
            .await?;
            match inserted {
                Some(row) => {
                    sqlx::query("INSERT INTO scheduler.job_events (job_id, state, attempt) VALUES ($1, 'QUEUED', 0)")
                        .bind(row.id)
                        .execute(&mut *tx)
                        .await?;
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
        tx.commit().await?;
        Ok(out)
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

    pub async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobRow>> {
        Ok(sqlx::query_as(
            "SELECT * FROM scheduler.jobs WHERE tenant = $1 \
             AND ($2::uuid IS NULL OR media_id = $2) \
             AND ($3::text IS NULL OR state = $3) \
             AND ($4::text IS NULL OR kind = $4) \
             AND ($5::uuid IS NULL OR id > $5) \
             ORDER BY id LIMIT $6",
        )
        .bind(&filter.tenant)
        .bind(filter.media_id)
        .bind(filter.state.map(JobState::as_str))
        .bind(filter.kind.as_deref())
        .bind(filter.after)
        .bind(filter.limit)
        .fetch_all(self.pool())
        .await?)
    }

    pub async fn attempts(&self, job_id: Uuid) -> Result<Vec<AttemptRow>> {
        Ok(
            sqlx::query_as("SELECT * FROM scheduler.attempts WHERE job_id = $1 ORDER BY attempt")
                .bind(job_id)
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

    /// Claims up to `limit` due jobs of `queue` for dispatch, highest priority first, while the
    /// queue has fewer than `max_in_flight` jobs dispatched and not finished. Each claimed job's
    /// attempt is incremented and committed before it is published.
    pub async fn claim_due_jobs(&self, queue: &str, limit: i64, max_in_flight: i64) -> Result<Vec<DueJob>> {
        let mut tx = self.pool().begin().await?;
        let in_flight: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM scheduler.jobs \
             WHERE queue = $1 AND state IN ('QUEUED', 'RUNNING') AND dispatched_at IS NOT NULL",
        )
        .bind(queue)
        .fetch_one(&mut *tx)
        .await?;
        let room = (max_in_flight - in_flight).min(limit);
        if room <= 0 {
            return Ok(Vec::new());
        }
        let claimed: Vec<DueJob> = sqlx::query_as(
            "WITH due AS ( \
               SELECT id FROM scheduler.jobs \
               WHERE queue = $1 AND state IN ('QUEUED', 'SCHEDULED') AND dispatched_at IS NULL \
                 AND run_at <= now() \
               ORDER BY priority DESC, run_at, id LIMIT $2 FOR UPDATE SKIP LOCKED) \
             UPDATE scheduler.jobs j SET attempt = j.attempt + 1, state = 'QUEUED', \
               dispatched_at = now(), updated_at = now() \
             FROM due WHERE j.id = due.id \
             RETURNING j.id, j.tenant, j.kind, j.queue, j.media_id, j.payload, j.attempt, \
               j.timeout_ms, j.priority",
        )
        .bind(queue)
        .bind(room)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(claimed)
    }

    /// Jobs dispatched more than `older_than_secs` ago that no worker has started: their message
    /// may have been lost with the broker. They are published again (same attempt, same
    /// message id).
    pub async fn stale_dispatches(&self, queue: &str, older_than_secs: f64, limit: i64) -> Result<Vec<DueJob>> {
        Ok(sqlx::query_as(
            "UPDATE scheduler.jobs SET dispatched_at = now() WHERE id IN ( \
               SELECT id FROM scheduler.jobs WHERE queue = $1 AND state = 'QUEUED' \
                 AND dispatched_at < now() - make_interval(secs => $2) \
               ORDER BY dispatched_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING id, tenant, kind, queue, media_id, payload, attempt, timeout_ms, priority",
        )
        .bind(queue)
        .bind(older_than_secs)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    /// QUEUED -> RUNNING for this attempt, and the attempt's record. Returns the event when the
    /// job changed state; a late or repeated report changes nothing.
    pub async fn mark_started(
        &self,
        job_id: Uuid,
        attempt: i32,
        worker_id: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<CompletedTransition>> {
        let mut tx = self.pool().begin().await?;
        let changed = sqlx::query(
            "UPDATE scheduler.jobs SET state = 'RUNNING', updated_at = now() \
             WHERE id = $1 AND attempt = $2 AND state = 'QUEUED'",
        )
        .bind(job_id)
        .bind(attempt)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // A redelivery of the same attempt to another worker updates who runs it.
        sqlx::query(
            "INSERT INTO scheduler.attempts (job_id, attempt, worker_id, started_at, outcome) \
             SELECT $1, $2, $3, $4, 'RUNNING' FROM scheduler.jobs \
               WHERE id = $1 AND attempt = $2 AND state = 'RUNNING' \
             ON CONFLICT (job_id, attempt) DO UPDATE SET worker_id = EXCLUDED.worker_id \
               WHERE scheduler.attempts.finished_at IS NULL",
        )
        .bind(job_id)
        .bind(attempt)
        .bind(worker_id)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        let event = if changed == 1 {
            Some(insert_event(&mut tx, job_id, JobState::Running, attempt).await?)
        } else {
            None
        };
        tx.commit().await?;
        Ok(event.map(|event| CompletedTransition { event }))
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
        let mut tx = self.pool().begin().await?;
        let changed = sqlx::query(
            "UPDATE scheduler.jobs SET state = 'SUCCEEDED', result = $3, error_code = NULL, \
               error_message = NULL, finished_at = $4, updated_at = now() \
             WHERE id = $1 AND attempt = $2 AND state IN ('QUEUED', 'RUNNING')",
        )
        .bind(job_id)
        .bind(attempt)
        .bind(result)
        .bind(at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            return Ok(None);
        }
        finish_attempt(&mut tx, job_id, attempt, worker_id, at, "SUCCEEDED", None, None).await?;
        let event = insert_event(&mut tx, job_id, JobState::Succeeded, attempt).await?;
        tx.commit().await?;
        Ok(Some(CompletedTransition { event }))
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
        let mut tx = self.pool().begin().await?;
        let backoff_secs = backoff.as_secs_f64();
        let new_state: Option<String> = sqlx::query_scalar(
            "UPDATE scheduler.jobs SET \
               state = CASE WHEN $5 AND attempt < max_attempts THEN 'SCHEDULED' ELSE 'FAILED' END, \
               run_at = CASE WHEN $5 AND attempt < max_attempts \
                 THEN $6 + make_interval(secs => $7) ELSE run_at END, \
               dispatched_at = NULL, error_code = $3, error_message = $4, \
               finished_at = CASE WHEN $5 AND attempt < max_attempts THEN NULL ELSE $6 END, \
               updated_at = now() \
             WHERE id = $1 AND attempt = $2 AND state IN ('QUEUED', 'RUNNING') \
             RETURNING state",
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
        let Some(new_state) = new_state else {
            return Ok(None);
        };
        finish_attempt(
            &mut tx,
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
        let event = insert_event(&mut tx, job_id, state, attempt).await?;
        tx.commit().await?;
        Ok(Some(CompletedTransition { event }))
    }

    /// Any non-terminal state -> CANCELLED. Returns the event when the job changed state.
    pub async fn cancel_job(&self, tenant: &str, job_id: Uuid) -> Result<Option<CompletedTransition>> {
        let mut tx = self.pool().begin().await?;
        let attempt: Option<i32> = sqlx::query_scalar(
            "UPDATE scheduler.jobs SET state = 'CANCELLED', finished_at = now(), updated_at = now(), \
               error_code = 'CANCELLED', error_message = 'cancelled by request' \
             WHERE tenant = $1 AND id = $2 AND state IN ('QUEUED', 'SCHEDULED', 'RUNNING') \
             RETURNING attempt",
        )
        .bind(tenant)
        .bind(job_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(attempt) = attempt else {
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
        tx.commit().await?;
        Ok(Some(CompletedTransition { event }))
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
        Ok(Some((row, CompletedTransition { event })))
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
) -> Result<()> {
    sqlx::query(
        "INSERT INTO scheduler.attempts \
           (job_id, attempt, worker_id, started_at, finished_at, outcome, error_code, error_message) \
         VALUES ($1, $2, $3, $4, $4, $5, $6, $7) \
         ON CONFLICT (job_id, attempt) DO UPDATE SET worker_id = EXCLUDED.worker_id, \
           finished_at = EXCLUDED.finished_at, outcome = EXCLUDED.outcome, \
           error_code = EXCLUDED.error_code, error_message = EXCLUDED.error_message",
    )
    .bind(job_id)
    .bind(attempt)
    .bind(worker_id)
    .bind(at)
    .bind(outcome)
    .bind(code)
    .bind(message)
    .execute(tx)
    .await?;
    Ok(())
}

impl Store {
    /// Undoes a dispatch whose message could not be sent: the attempt is taken back and the
    /// job is due again.
    pub async fn undispatch(&self, job_id: Uuid, attempt: i32) -> Result<()> {
        sqlx::query(
            "UPDATE scheduler.jobs SET attempt = attempt - 1, dispatched_at = NULL \
             WHERE id = $1 AND attempt = $2 AND state = 'QUEUED'",
        )
        .bind(job_id)
        .bind(attempt)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}

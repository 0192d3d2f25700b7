//! What the dispatcher reads and writes. It holds due jobs in memory and writes nothing to
//! PostgreSQL to dispatch one: a job's next attempt goes out as `attempt + 1` of its row, and
//! the worker's start report is what moves the row to it. The row records a dispatch only when
//! its message has waited unstarted for a while ([`Store::record_dispatches`]), so that a
//! dispatcher that takes over knows which messages are out there. PostgreSQL is read to
//! recover (at start, after losing track, for backlogs larger than memory) and to check
//! dispatches that went quiet.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::jobs::JobRow;
use crate::{Result, Store};

/// A job as the dispatcher holds it: its row's dispatch fields.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct DueJob {
    pub id: Uuid,
    pub tenant: String,
    pub kind: String,
    pub queue: String,
    /// QUEUED, SCHEDULED or RUNNING.
    pub state: String,
    pub media_id: Option<Uuid>,
    pub payload: serde_json::Value,
    /// The attempt the row is at: the last one started or recorded as dispatched.
    pub attempt: i32,
    pub timeout_ms: i64,
    pub priority: i16,
    pub max_attempts: i32,
    /// When the job is due.
    pub run_at: DateTime<Utc>,
    /// Set when a dispatch of `attempt` was recorded and it has not started yet.
    pub dispatched_at: Option<DateTime<Utc>>,
    /// The stream sequence of that recorded dispatch's message.
    pub dispatch_seq: Option<i64>,
    /// The submitter's W3C trace context.
    pub traceparent: Option<String>,
}

impl DueJob {
    /// The job as a submit stored it, if it can run once due (no dependency to wait for).
    pub fn from_submitted(row: &JobRow) -> Option<Self> {
        (row.pending_deps == 0 && matches!(row.state.as_str(), "QUEUED" | "SCHEDULED")).then(|| Self {
            id: row.id,
            tenant: row.tenant.clone(),
            kind: row.kind.clone(),
            queue: row.queue.clone(),
            state: row.state.clone(),
            media_id: row.media_id,
            payload: row.payload.clone(),
            attempt: row.attempt,
            timeout_ms: row.timeout_ms,
            priority: row.priority,
            max_attempts: row.max_attempts,
            run_at: row.run_at,
            dispatched_at: row.dispatched_at,
            dispatch_seq: row.dispatch_seq,
            traceparent: row.traceparent.clone(),
        })
    }
}

/// Where a job the dispatcher sent out stands in its row.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct DispatchState {
    pub id: Uuid,
    pub state: String,
    pub attempt: i32,
    pub dispatched_at: Option<DateTime<Utc>>,
}

const DUE_COLUMNS: &str = "id, tenant, kind, queue, state, media_id, payload, attempt, timeout_ms, priority, \
     max_attempts, run_at, dispatched_at, dispatch_seq, traceparent";

impl Store {
    /// Jobs that are waiting to run or running (no dependency left to wait for), by id from
    /// `after`: what a dispatcher that starts or takes over must hold.
    pub async fn dispatch_backlog(&self, after: Uuid, limit: i64) -> Result<Vec<DueJob>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {DUE_COLUMNS} FROM scheduler.jobs \
             WHERE state IN ('QUEUED', 'SCHEDULED', 'RUNNING') AND pending_deps = 0 AND id > $1 \
             ORDER BY id LIMIT $2"
        )))
        .bind(after)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    /// The given jobs, those of them waiting to run or running (retried, released by their
    /// dependencies, or found out of step).
    pub async fn due_jobs_by_id(&self, ids: &[Uuid]) -> Result<Vec<DueJob>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {DUE_COLUMNS} FROM scheduler.jobs \
             WHERE id = ANY($1) AND state IN ('QUEUED', 'SCHEDULED', 'RUNNING') AND pending_deps = 0"
        )))
        .bind(ids)
        .fetch_all(self.pool())
        .await?)
    }

    /// Where the given jobs stand (those that still exist).
    pub async fn dispatch_states(&self, ids: &[Uuid]) -> Result<Vec<DispatchState>> {
        Ok(
            sqlx::query_as("SELECT id, state, attempt, dispatched_at FROM scheduler.jobs WHERE id = ANY($1)")
                .bind(ids)
                .fetch_all(self.pool())
                .await?,
        )
    }

    /// Records dispatches that are still waiting for a worker: (job id, attempt sent, stream
    /// sequence). A row moves to the attempt only if it is still waiting at the one before and
    /// no dispatch is recorded; one whose worker started it meanwhile is left alone. Returns
    /// how many rows took it.
    pub async fn record_dispatches(&self, sent: &[(Uuid, i32, i64)]) -> Result<u64> {
        if sent.is_empty() {
            return Ok(0);
        }
        let ids: Vec<Uuid> = sent.iter().map(|p| p.0).collect();
        let attempts: Vec<i32> = sent.iter().map(|p| p.1).collect();
        let seqs: Vec<i64> = sent.iter().map(|p| p.2).collect();
        let done = sqlx::query(
            "UPDATE scheduler.jobs j SET attempt = p.attempt, state = 'QUEUED', dispatched_at = now(), \
               dispatch_seq = p.seq, updated_at = now() \
             FROM unnest($1::uuid[], $2::int[], $3::bigint[]) AS p(id, attempt, seq) \
             WHERE j.id = ANY($1) AND j.id = p.id AND j.attempt = p.attempt - 1 \
               AND j.state IN ('QUEUED', 'SCHEDULED') AND j.dispatched_at IS NULL",
        )
        .bind(&ids)
        .bind(&attempts)
        .bind(&seqs)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }

    /// Each tenant's limit on jobs in flight, where it has one.
    pub async fn tenant_running_limits(&self) -> Result<Vec<(String, i32)>> {
        Ok(
            sqlx::query_as("SELECT tenant, running_jobs FROM scheduler.tenant_limits WHERE running_jobs > 0")
                .fetch_all(self.pool())
                .await?,
        )
    }
}

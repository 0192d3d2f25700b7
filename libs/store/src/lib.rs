//! PostgreSQL state of mediamesh: the pool, the migrations and the queries of each owning
//! service (`media` for ingest, `jobs` for the scheduler, `ai` for inference).

mod ai;
mod auth;
mod dispatch;
mod jobs;
mod media;
mod submit;

use std::time::Duration;

pub use ai::{AiCall, BudgetRow, SpendRow};
pub use auth::{ApiKeyRow, TenantUsageRow};
pub use dispatch::{DispatchState, DueJob};
pub use jobs::{
    AttemptRow, AttemptRun, ChildResult, CompletedTransition, FeedEvent, FeedFilter, JobEventRow, JobFilter, JobRow,
    NewJob, Pruned, QueueCounts, QueueRates, Report, RetentionPolicy, RetryFilter,
};
pub use media::{MediaRow, NewMedia};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
pub use submit::{JobQuota, QuotaHit, Submit, Submitted};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("invalid database url: {0}")]
    Url(String),
    #[error("not found: {0}")]
    NotFound(String),
}

impl From<Error> for mediamesh_core::Error {
    fn from(err: Error) -> Self {
        if !matches!(err, Error::NotFound(_)) {
            tracing::error!(error = %err, "database error");
        }
        match err {
            Error::Database(sqlx::Error::PoolTimedOut | sqlx::Error::Io(_)) => {
                mediamesh_core::Error::unavailable("database unavailable")
            }
            Error::NotFound(what) => mediamesh_core::Error::not_found(what),
            _ => mediamesh_core::Error::internal("database error"),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// A cheap-to-clone handle on the database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Connects (lazily: the first query opens the first connection, so a service can start
    /// while PostgreSQL is still coming up and report NOT_SERVING until it answers).
    pub fn connect_lazy(url: &str, max_connections: u32) -> Result<Self> {
        let options: PgConnectOptions = url.parse().map_err(|e: sqlx::Error| Error::Url(e.to_string()))?;
        // Every statement is planned with its parameters and the tables as they are now. A
        // prepared statement's cached generic plan is built from the statistics of its time:
        // one made while `scheduler.jobs` was empty (a new deployment, a drained queue) scans
        // the whole table on every claim and report until an ANALYZE, tens of milliseconds
        // each once it holds thousands of jobs. Planning these statements costs less.
        // No JIT: these are short statements, and the claim's estimated cost (a correlated
        // count per tenant limit) passes jit_above_cost, so PostgreSQL compiled it on every
        // call: 870 ms of LLVM for a claim that runs in 30 ms, measured by mesh-bench.
        let options = options
            .log_statements(tracing::log::LevelFilter::Trace)
            .options([("plan_cache_mode", "force_custom_plan"), ("jit", "off")]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options);
        Ok(Self { pool })
    }

    /// Applies `migrations/`. sqlx holds a PostgreSQL advisory lock while it migrates, so
    /// several replicas may start at once.
    pub async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// Retries `migrate` until it succeeds or `deadline` passes: PostgreSQL may still be
    /// starting when a service starts.
    pub async fn migrate_when_ready(&self, deadline: Duration) -> Result<()> {
        let started = std::time::Instant::now();
        loop {
            match self.migrate().await {
                Ok(()) => return Ok(()),
                Err(Error::Database(err)) if started.elapsed() < deadline && is_connect_error(&err) => {
                    tracing::warn!(error = %err, "database not ready, retrying migrations");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(Error::Migrate(sqlx::migrate::MigrateError::Execute(err)))
                    if started.elapsed() < deadline && is_connect_error(&err) =>
                {
                    tracing::warn!(error = %err, "database not ready, retrying migrations");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// True when PostgreSQL answers a trivial query.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn is_connect_error(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_)
    ) || matches!(err, sqlx::Error::Database(db) if db.code().is_some_and(|c| c == "57P03"))
}

/// Creates database `name` on the server behind `admin_url` unless it exists.
pub async fn ensure_database(admin_url: &str, name: &str) -> Result<()> {
    use sqlx::Connection;
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(Error::Url(format!("invalid database name {name:?}")));
    }
    let mut conn = sqlx::PgConnection::connect(admin_url).await?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut conn)
        .await?;
    if !exists {
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await?;
    }
    conn.close().await?;
    Ok(())
}

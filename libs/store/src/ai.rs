//! The inference service's tables: one `ai_metrics` row per provider call and the per-tenant
//! budget overrides.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{Result, Store};

/// One provider call, as the gateway reports it.
#[derive(Clone, Debug)]
pub struct AiCall {
    pub tenant: String,
    pub job_id: Option<Uuid>,
    pub provider: String,
    pub model: String,
    pub operation: String,
    pub latency_ms: i32,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub cost_usd: f64,
    /// `OK` or the stable error code.
    pub outcome: String,
}

/// Spend grouped by day, provider and model.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct SpendRow {
    pub day: chrono::NaiveDate,
    pub provider: String,
    pub model: String,
    pub calls: i64,
    pub failed: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub cost_usd: f64,
}

/// A tenant's budget overrides; `None` keeps the default for that period.
#[derive(Clone, Copy, Debug, Default, PartialEq, sqlx::FromRow)]
pub struct BudgetRow {
    pub daily_usd: Option<f64>,
    pub monthly_usd: Option<f64>,
}

impl Store {
    pub async fn record_ai_call(&self, call: &AiCall) -> Result<()> {
        sqlx::query(
            "INSERT INTO inference.ai_metrics \
             (tenant, job_id, provider, model, operation, latency_ms, tokens_in, tokens_out, cost_usd, outcome) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&call.tenant)
        .bind(call.job_id)
        .bind(&call.provider)
        .bind(&call.model)
        .bind(&call.operation)
        .bind(call.latency_ms)
        .bind(call.tokens_in)
        .bind(call.tokens_out)
        .bind(call.cost_usd)
        .bind(&call.outcome)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// What the tenant spent since `since` (USD).
    pub async fn ai_spend_since(&self, tenant: &str, since: DateTime<Utc>) -> Result<f64> {
        Ok(sqlx::query_scalar(
            "SELECT COALESCE(sum(cost_usd), 0)::double precision FROM inference.ai_metrics \
             WHERE tenant = $1 AND at >= $2",
        )
        .bind(tenant)
        .bind(since)
        .fetch_one(self.pool())
        .await?)
    }

    /// The tenant's spend per UTC day, provider and model since `since`, newest day first.
    pub async fn ai_spend_by_day(&self, tenant: &str, since: DateTime<Utc>) -> Result<Vec<SpendRow>> {
        Ok(sqlx::query_as(
            "SELECT (at AT TIME ZONE 'UTC')::date AS day, provider, model, count(*) AS calls, \
             count(*) FILTER (WHERE outcome <> 'OK') AS failed, \
             COALESCE(sum(tokens_in), 0)::bigint AS tokens_in, COALESCE(sum(tokens_out), 0)::bigint AS tokens_out, \
             COALESCE(sum(cost_usd), 0)::double precision AS cost_usd \
             FROM inference.ai_metrics WHERE tenant = $1 AND at >= $2 \
             GROUP BY 1, 2, 3 ORDER BY 1 DESC, 2, 3",
        )
        .bind(tenant)
        .bind(since)
        .fetch_all(self.pool())
        .await?)
    }

    /// Provider calls recorded for a job (oldest first): `(provider, model, outcome)`.
    pub async fn ai_calls_of_job(&self, job_id: Uuid) -> Result<Vec<(String, String, String)>> {
        Ok(
            sqlx::query_as("SELECT provider, model, outcome FROM inference.ai_metrics WHERE job_id = $1 ORDER BY id")
                .bind(job_id)
                .fetch_all(self.pool())
                .await?,
        )
    }

    pub async fn ai_budget(&self, tenant: &str) -> Result<BudgetRow> {
        Ok(
            sqlx::query_as("SELECT daily_usd, monthly_usd FROM inference.budgets WHERE tenant = $1")
                .bind(tenant)
                .fetch_optional(self.pool())
                .await?
                .unwrap_or_default(),
        )
    }

    pub async fn set_ai_budget(&self, tenant: &str, budget: BudgetRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO inference.budgets (tenant, daily_usd, monthly_usd) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant) DO UPDATE SET daily_usd = $2, monthly_usd = $3, updated_at = now()",
        )
        .bind(tenant)
        .bind(budget.daily_usd)
        .bind(budget.monthly_usd)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}

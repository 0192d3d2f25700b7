//! Tenants, API keys and quota overrides (`auth` schema, owned by ingest).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{Result, Store};

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ApiKeyRow {
    pub id: Uuid,
    pub tenant: String,
    pub name: String,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// What a tenant has used, for quotas and `GetTenant`.
#[derive(Clone, Copy, Debug, Default, sqlx::FromRow)]
pub struct TenantUsageRow {
    pub jobs_last_hour: i64,
    pub jobs_last_day: i64,
    pub stored_bytes: i64,
    pub running_jobs: i64,
}

/// The columns of [`ApiKeyRow`] (never the hash).
macro_rules! key_columns {
    () => {
        "id, tenant, name, prefix, created_at, last_used_at, revoked_at"
    };
}

impl Store {
    /// Stores a new key (by its hash) for `tenant`, creating the tenant when it is new.
    pub async fn create_api_key(&self, tenant: &str, name: &str, prefix: &str, hash: &[u8]) -> Result<ApiKeyRow> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("INSERT INTO auth.tenants (name) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(tenant)
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query_as(concat!(
            "INSERT INTO auth.api_keys (id, tenant, name, prefix, hash) VALUES ($1, $2, $3, $4, $5) \
             RETURNING ",
            key_columns!(),
            ""
        ))
        .bind(Uuid::now_v7())
        .bind(tenant)
        .bind(name)
        .bind(prefix)
        .bind(hash)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row)
    }

    /// The key with this hash, unless revoked; marks it used (at most once a minute).
    pub async fn authenticate_key(&self, hash: &[u8]) -> Result<Option<ApiKeyRow>> {
        Ok(sqlx::query_as(concat!(
            "UPDATE auth.api_keys SET last_used_at = CASE \
               WHEN last_used_at IS NULL OR last_used_at < now() - interval '1 minute' THEN now() \
               ELSE last_used_at END \
             WHERE hash = $1 AND revoked_at IS NULL RETURNING ",
            key_columns!(),
            ""
        ))
        .bind(hash)
        .fetch_optional(self.pool())
        .await?)
    }

    pub async fn list_api_keys(&self, tenant: Option<&str>, include_revoked: bool) -> Result<Vec<ApiKeyRow>> {
        Ok(sqlx::query_as(concat!(
            "SELECT ",
            key_columns!(),
            " FROM auth.api_keys \
             WHERE ($1::text IS NULL OR tenant = $1) AND ($2 OR revoked_at IS NULL) \
             ORDER BY tenant, created_at, id"
        ))
        .bind(tenant)
        .bind(include_revoked)
        .fetch_all(self.pool())
        .await?)
    }

    /// Revokes the key with this id, or the one key with this prefix; returns it (revoked
    /// earlier or now), or None when no single key matches.
    pub async fn revoke_api_key(&self, id: Option<Uuid>, prefix: &str) -> Result<Vec<ApiKeyRow>> {
        let matching: Vec<ApiKeyRow> = sqlx::query_as(concat!(
            "SELECT ",
            key_columns!(),
            " FROM auth.api_keys WHERE id = $1 OR prefix = $2"
        ))
        .bind(id)
        .bind(prefix)
        .fetch_all(self.pool())
        .await?;
        if matching.len() != 1 {
            return Ok(matching);
        }
        Ok(sqlx::query_as(concat!(
            "UPDATE auth.api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 \
             RETURNING ",
            key_columns!(),
            ""
        ))
        .bind(matching[0].id)
        .fetch_all(self.pool())
        .await?)
    }

    /// The tenant's quota overrides (`{}` for a tenant without any, or unknown).
    pub async fn tenant_quotas(&self, tenant: &str) -> Result<serde_json::Value> {
        Ok(sqlx::query_scalar("SELECT quotas FROM auth.tenants WHERE name = $1")
            .bind(tenant)
            .fetch_optional(self.pool())
            .await?
            .unwrap_or_else(|| serde_json::json!({})))
    }

    /// Replaces the tenant's quota overrides (creating the tenant when it is new).
    pub async fn set_tenant_quotas(&self, tenant: &str, quotas: &serde_json::Value) -> Result<()> {
        sqlx::query(
            "INSERT INTO auth.tenants (name, quotas) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET quotas = EXCLUDED.quotas",
        )
        .bind(tenant)
        .bind(quotas)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Jobs created in the last hour and day (as the job quotas count them: by the minute and
    /// by the hour), stored bytes and jobs in flight.
    pub async fn tenant_usage(&self, tenant: &str) -> Result<TenantUsageRow> {
        Ok(sqlx::query_as(
            "SELECT \
               (SELECT coalesce(sum(jobs), 0)::bigint FROM scheduler.submit_counts WHERE tenant = $1 \
                  AND span = 'minute' AND start > now() - interval '1 hour') AS jobs_last_hour, \
               (SELECT coalesce(sum(jobs), 0)::bigint FROM scheduler.submit_counts WHERE tenant = $1 \
                  AND span = 'hour' AND start > now() - interval '1 day') AS jobs_last_day, \
               (SELECT coalesce(sum(bytes), 0)::bigint FROM ingest.media WHERE tenant = $1) AS stored_bytes, \
               (SELECT count(*) FROM scheduler.jobs WHERE tenant = $1 \
                  AND state = 'RUNNING') AS running_jobs",
        )
        .bind(tenant)
        .fetch_one(self.pool())
        .await?)
    }
}

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{Result, Store};

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct MediaRow {
    pub id: Uuid,
    pub tenant: String,
    pub filename: String,
    pub content_type: String,
    pub kind: String,
    pub bytes: i64,
    pub sha256: String,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub blob_key: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug)]
pub struct NewMedia {
    pub id: Uuid,
    pub tenant: String,
    pub filename: String,
    pub content_type: String,
    pub kind: String,
    pub bytes: i64,
    pub sha256: String,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub blob_key: String,
}

impl Store {
    /// Inserts the media unless the tenant already has the same bytes; returns the row and
    /// whether it is new.
    pub async fn insert_media(&self, media: &NewMedia) -> Result<(MediaRow, bool)> {
        let inserted: Option<MediaRow> = sqlx::query_as(
            "INSERT INTO ingest.media \
             (id, tenant, filename, content_type, kind, bytes, sha256, width, height, blob_key) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (tenant, sha256) DO NOTHING RETURNING *",
        )
        .bind(media.id)
        .bind(&media.tenant)
        .bind(&media.filename)
        .bind(&media.content_type)
        .bind(&media.kind)
        .bind(media.bytes)
        .bind(&media.sha256)
        .bind(media.width)
        .bind(media.height)
        .bind(&media.blob_key)
        .fetch_optional(self.pool())
        .await?;
        if let Some(row) = inserted {
            return Ok((row, true));
        }
        let existing = self
            .media_by_sha256(&media.tenant, &media.sha256)
            .await?
            .ok_or(sqlx::Error::RowNotFound)?;
        Ok((existing, false))
    }

    pub async fn media_by_sha256(&self, tenant: &str, sha256: &str) -> Result<Option<MediaRow>> {
        Ok(
            sqlx::query_as("SELECT * FROM ingest.media WHERE tenant = $1 AND sha256 = $2")
                .bind(tenant)
                .bind(sha256)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    pub async fn get_media(&self, tenant: &str, id: Uuid) -> Result<Option<MediaRow>> {
        Ok(
            sqlx::query_as("SELECT * FROM ingest.media WHERE tenant = $1 AND id = $2")
                .bind(tenant)
                .bind(id)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    pub async fn delete_media(&self, id: Uuid) -> Result<()> {
        sqlx::query("DELETE FROM ingest.media WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub async fn count_media(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM ingest.media")
            .fetch_one(self.pool())
            .await?)
    }
}

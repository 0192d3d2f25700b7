use chrono::{DateTime, Utc};
use mediamesh_core::{MediaKind, to_timestamp};
use mediamesh_proto::v1 as pb;
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
    /// The media this one was made from (an enhanced photo's original).
    pub parent_id: Option<Uuid>,
    /// How a model made it: task, provider, model, prompt, cost, processing time.
    pub origin: Option<serde_json::Value>,
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
    pub parent_id: Option<Uuid>,
    pub origin: Option<serde_json::Value>,
}

impl MediaRow {
    /// The media as the API shows it, with the files its finished jobs made.
    pub fn to_proto(&self, derivatives: Vec<pb::Output>) -> pb::Media {
        let kind = MediaKind::parse(&self.kind).map_or(pb::MediaKind::Unspecified, MediaKind::to_proto);
        pb::Media {
            id: self.id.to_string(),
            tenant: self.tenant.clone(),
            filename: self.filename.clone(),
            content_type: self.content_type.clone(),
            kind: kind as i32,
            bytes: u64::try_from(self.bytes).unwrap_or(0),
            sha256: self.sha256.clone(),
            width: self.width.and_then(|w| u32::try_from(w).ok()).unwrap_or(0),
            height: self.height.and_then(|h| u32::try_from(h).ok()).unwrap_or(0),
            created_at: Some(to_timestamp(self.created_at)),
            derivatives,
            parent_id: self.parent_id.map(|id| id.to_string()).unwrap_or_default(),
            origin_json: self.origin.as_ref().map(ToString::to_string).unwrap_or_default(),
        }
    }
}

/// Inserts the media unless the tenant has the same bytes (then no row comes back).
fn insert_query(media: &NewMedia) -> sqlx::query::QueryAs<'_, sqlx::Postgres, MediaRow, sqlx::postgres::PgArguments> {
    sqlx::query_as(
        "INSERT INTO ingest.media \
         (id, tenant, filename, content_type, kind, bytes, sha256, width, height, blob_key, parent_id, origin) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
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
    .bind(media.parent_id)
    .bind(&media.origin)
}

impl Store {
    /// Inserts the media unless the tenant already has the same bytes; returns the row and
    /// whether it is new.
    pub async fn insert_media(&self, media: &NewMedia) -> Result<(MediaRow, bool)> {
        let inserted = insert_query(media).fetch_optional(self.pool()).await?;
        if let Some(row) = inserted {
            return Ok((row, true));
        }
        let existing = self
            .media_by_sha256(&media.tenant, &media.sha256)
            .await?
            .ok_or(sqlx::Error::RowNotFound)?;
        Ok((existing, false))
    }

    /// [`Store::insert_media`] for a tenant that may keep at most `max_stored` bytes of
    /// originals (0: no limit). Uploads of one tenant serialize on an advisory lock here, so
    /// two at once cannot both squeeze under the limit. `Err(stored)` when the media would not
    /// fit: the bytes the tenant stores now.
    pub async fn insert_media_within(
        &self,
        media: &NewMedia,
        max_stored: i64,
    ) -> Result<std::result::Result<(MediaRow, bool), i64>> {
        if max_stored <= 0 {
            return self.insert_media(media).await.map(Ok);
        }
        let mut tx = self.pool().begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('mediamesh.stored.' || $1))")
            .bind(&media.tenant)
            .execute(&mut *tx)
            .await?;
        if let Some(existing) =
            sqlx::query_as::<_, MediaRow>("SELECT * FROM ingest.media WHERE tenant = $1 AND sha256 = $2")
                .bind(&media.tenant)
                .bind(&media.sha256)
                .fetch_optional(&mut *tx)
                .await?
        {
            return Ok(Ok((existing, false)));
        }
        let stored: i64 =
            sqlx::query_scalar("SELECT coalesce(sum(bytes), 0)::bigint FROM ingest.media WHERE tenant = $1")
                .bind(&media.tenant)
                .fetch_one(&mut *tx)
                .await?;
        if stored.saturating_add(media.bytes) > max_stored {
            return Ok(Err(stored));
        }
        let Some(row) = insert_query(media).fetch_optional(&mut *tx).await? else {
            // Inserted meanwhile without the lock (a model's output): same bytes, same media.
            tx.rollback().await?;
            let existing = self
                .media_by_sha256(&media.tenant, &media.sha256)
                .await?
                .ok_or(sqlx::Error::RowNotFound)?;
            return Ok(Ok((existing, false)));
        };
        tx.commit().await?;
        Ok(Ok((row, true)))
    }

    /// Bytes of originals the tenant stores.
    pub async fn stored_bytes(&self, tenant: &str) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT coalesce(sum(bytes), 0)::bigint FROM ingest.media WHERE tenant = $1")
                .bind(tenant)
                .fetch_one(self.pool())
                .await?,
        )
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

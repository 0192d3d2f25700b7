//! The blob store: a local folder by default (`file:///path`), S3 in production (`s3://bucket`),
//! through the `object_store` crate. Keys are `media/{media_id}/...` and `uploads/{id}` while an
//! upload is in flight.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use url::Url;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid blob url {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("blob {0} not found")]
    NotFound(String),
    #[error("blob store: {0}")]
    Store(#[from] object_store::Error),
    #[error("blob io: {0}")]
    Io(#[from] std::io::Error),
}

impl From<Error> for mediamesh_core::Error {
    fn from(err: Error) -> Self {
        match err {
            Error::NotFound(key) => mediamesh_core::Error::not_found(format!("blob {key} not found")),
            other => {
                tracing::error!(error = %other, "blob store error");
                mediamesh_core::Error::unavailable("blob store unavailable")
            }
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A cheap-to-clone handle on the blob store.
#[derive(Clone, Debug)]
pub struct Blob {
    store: Arc<dyn ObjectStore>,
}

impl Blob {
    /// `file:///abs/dir` (created if missing) or `s3://bucket[/prefix]` (credentials and region
    /// from the usual `AWS_*` variables).
    pub fn from_url(url: &str) -> Result<Self> {
        let parsed = Url::parse(url).map_err(|e| Error::Url {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        let store: Arc<dyn ObjectStore> = match parsed.scheme() {
            "file" => {
                let dir = parsed.to_file_path().map_err(|()| Error::Url {
                    url: url.to_owned(),
                    reason: "not an absolute path".to_owned(),
                })?;
                std::fs::create_dir_all(&dir)?;
                Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir)?)
            }
            "s3" => Arc::new(object_store::aws::AmazonS3Builder::from_env().with_url(url).build()?),
            other => {
                return Err(Error::Url {
                    url: url.to_owned(),
                    reason: format!("unsupported scheme {other:?} (use file:// or s3://)"),
                });
            }
        };
        Ok(Self { store })
    }

    pub async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        self.store.put(&Path::from(key), PutPayload::from(data)).await?;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> Result<Bytes> {
        match self.store.get(&Path::from(key)).await {
            Ok(result) => Ok(result.bytes().await?),
            Err(object_store::Error::NotFound { .. }) => Err(Error::NotFound(key.to_owned())),
            Err(err) => Err(err.into()),
        }
    }

    /// Up to `len` bytes from the start of the blob.
    pub async fn get_prefix(&self, key: &str, len: u64) -> Result<Bytes> {
        let size = self.size(key).await?.ok_or_else(|| Error::NotFound(key.to_owned()))?;
        let end = len.min(size);
        Ok(self.store.get_range(&Path::from(key), 0..end).await?)
    }

    /// Up to `len` bytes from the end of the blob.
    pub async fn get_suffix(&self, key: &str, len: u64) -> Result<Bytes> {
        let size = self.size(key).await?.ok_or_else(|| Error::NotFound(key.to_owned()))?;
        let start = size.saturating_sub(len);
        Ok(self.store.get_range(&Path::from(key), start..size).await?)
    }

    /// The blob's size, or `None` when it does not exist.
    pub async fn size(&self, key: &str) -> Result<Option<u64>> {
        match self.store.head(&Path::from(key)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// Streams the blob's bytes.
    pub async fn stream(&self, key: &str) -> Result<BoxStream<'static, Result<Bytes>>> {
        match self.store.get(&Path::from(key)).await {
            Ok(result) => Ok(result.into_stream().map(|chunk| chunk.map_err(Error::from)).boxed()),
            Err(object_store::Error::NotFound { .. }) => Err(Error::NotFound(key.to_owned())),
            Err(err) => Err(err.into()),
        }
    }

    /// A writer that uploads in parts as it fills; `shutdown` completes it, `abort` discards it.
    pub fn writer(&self, key: &str) -> BufWriter {
        BufWriter::new(Arc::clone(&self.store), Path::from(key))
    }

    /// Copies a blob inside the store (server-side where the store can).
    pub async fn copy(&self, from: &str, to: &str) -> Result<()> {
        match self.store.copy(&Path::from(from), &Path::from(to)).await {
            Ok(()) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => Err(Error::NotFound(from.to_owned())),
            Err(err) => Err(err.into()),
        }
    }

    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.store.rename(&Path::from(from), &Path::from(to)).await?;
        Ok(())
    }

    /// Deletes the blob; a missing blob is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// Every key under `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let prefix = Path::from(prefix);
        let mut keys = Vec::new();
        let mut listing = self.store.list(Some(&prefix));
        while let Some(meta) = listing.next().await {
            keys.push(meta?.location.to_string());
        }
        keys.sort();
        Ok(keys)
    }
}

/// Where an upload's original bytes live.
pub fn original_key(media_id: &impl std::fmt::Display) -> String {
    format!("media/{media_id}/original")
}

/// Where the record of a finished piece of work on some bytes lives: the sha256 of the bytes
/// and a fingerprint of the kind and its settings, so the same bytes are not processed twice.
pub fn reuse_key(sha256: &str, fingerprint: &str) -> String {
    format!("reuse/{sha256}/{fingerprint}.json")
}

/// Where a derivative of a media lives; the same for every attempt, so a re-run overwrites it.
pub fn derivative_key(media_id: &impl std::fmt::Display, name: &str, ext: &str) -> String {
    format!("media/{media_id}/{name}.{ext}")
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn write_rename_read_delete_on_a_local_folder() {
        let dir = tempfile::tempdir().unwrap();
        let blob = Blob::from_url(&format!("file://{}", dir.path().display())).unwrap();
        let mut writer = blob.writer("uploads/a");
        writer.write_all(b"hello ").await.unwrap();
        writer.write_all(b"world").await.unwrap();
        writer.shutdown().await.unwrap();
        blob.rename("uploads/a", "media/x/original").await.unwrap();
        assert_eq!(
            blob.get("media/x/original").await.unwrap(),
            Bytes::from_static(b"hello world")
        );
        assert_eq!(
            blob.get_prefix("media/x/original", 5).await.unwrap(),
            Bytes::from_static(b"hello")
        );
        assert_eq!(
            blob.get_suffix("media/x/original", 5).await.unwrap(),
            Bytes::from_static(b"world")
        );
        assert_eq!(blob.size("uploads/a").await.unwrap(), None);
        assert_eq!(blob.list("media").await.unwrap(), vec!["media/x/original".to_owned()]);
        blob.delete("media/x/original").await.unwrap();
        assert!(matches!(blob.get("media/x/original").await, Err(Error::NotFound(_))));
        assert!(Blob::from_url("ftp://x").is_err());
    }
}

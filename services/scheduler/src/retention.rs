//! Deletes finished jobs beyond the configured count per tenant and state, or older than the
//! configured age, with the output blobs no remaining job refers to; and the submit counts
//! no quota window reaches any more.

use std::time::Duration;

use mediamesh_blob::Blob;
use mediamesh_store::{RetentionPolicy, Store};
use tokio_util::sync::CancellationToken;

use crate::SchedulerConfig;

pub async fn run(store: Store, blob: Option<Blob>, config: SchedulerConfig, shutdown: CancellationToken) {
    let policy = RetentionPolicy {
        succeeded: i64::from(config.retain_succeeded),
        failed: i64::from(config.retain_failed),
        cancelled: i64::from(config.retain_cancelled),
        max_age_secs: config.retain_max_age_secs as f64,
        batch: 1000,
    };
    let interval = Duration::from_millis(config.retention_interval_ms.max(10));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        if let Err(err) = store.prune_submit_counts().await {
            tracing::warn!(error = %err, "pruning old submit counts failed");
        }
        // A full batch means there may be more: go on at once.
        loop {
            match prune_once(&store, blob.as_ref(), &policy).await {
                Ok(n) if n as i64 == policy.batch && !shutdown.is_cancelled() => continue,
                Ok(_) => break,
                Err(err) => {
                    tracing::warn!(error = %err, "retention pass failed");
                    break;
                }
            }
        }
    }
}

async fn prune_once(store: &Store, blob: Option<&Blob>, policy: &RetentionPolicy) -> mediamesh_store::Result<usize> {
    let pruned = store.prune_finished(policy).await?;
    if pruned.jobs.is_empty() {
        return Ok(0);
    }
    let mut blobs_deleted = 0usize;
    if let Some(blob) = blob {
        for key in &pruned.orphaned_blobs {
            match blob.delete(key).await {
                Ok(()) => blobs_deleted += 1,
                Err(err) => tracing::warn!(error = %err, key = %key, "cannot delete the output of a pruned job"),
            }
        }
    }
    tracing::info!(jobs = pruned.jobs.len(), blobs = blobs_deleted, "pruned finished jobs");
    Ok(pruned.jobs.len())
}

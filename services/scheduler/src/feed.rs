//! Live views of running work: the latest progress of each running attempt (for `GetJob`),
//! and the tenant-wide job feed behind `WatchJobs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use mediamesh_bus::{Bus, Update};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Progress reports kept, at most (the oldest go first).
const MAX_TRACKED: usize = 50_000;
/// A report older than this is forgotten.
const KEEP: Duration = Duration::from_secs(3600);

/// A progress report: the job, its attempt, 0..1, the stage message.
#[derive(Clone, Debug)]
pub struct Progress {
    pub job_id: Uuid,
    pub attempt: u32,
    pub progress: f32,
    pub message: String,
}

/// The latest progress per job, fed from `mm.updates.*`, and a fan-out of every update to
/// the feeds of this scheduler (a transition wakes them; a progress report is passed on).
#[derive(Clone)]
pub struct ProgressBook {
    latest: Arc<Mutex<HashMap<Uuid, (Progress, Instant)>>>,
    updates: broadcast::Sender<FeedSignal>,
}

/// What a feed hears between reads of the database.
#[derive(Clone, Debug)]
pub enum FeedSignal {
    /// Some job changed state: read the feed.
    Changed,
    Progress(Progress),
}

impl Default for ProgressBook {
    fn default() -> Self {
        Self::new()
    }
}

impl ProgressBook {
    pub fn new() -> Self {
        let (updates, _) = broadcast::channel(1024);
        Self {
            latest: Arc::new(Mutex::new(HashMap::new())),
            updates,
        }
    }

    /// The latest report of this attempt of the job, if any.
    pub fn latest(&self, job_id: Uuid, attempt: u32) -> Option<(f32, String)> {
        let latest = self.latest.lock().ok()?;
        let (p, _) = latest.get(&job_id)?;
        (p.attempt == attempt).then(|| (p.progress, p.message.clone()))
    }

    pub fn subscribe(&self) -> broadcast::Receiver<FeedSignal> {
        self.updates.subscribe()
    }

    fn record(&self, progress: Progress) {
        if let Ok(mut latest) = self.latest.lock() {
            if latest.len() >= MAX_TRACKED {
                latest.retain(|_, (_, at)| at.elapsed() < KEEP);
                if latest.len() >= MAX_TRACKED {
                    latest.clear();
                }
            }
            latest.insert(progress.job_id, (progress.clone(), Instant::now()));
        }
        let _ = self.updates.send(FeedSignal::Progress(progress));
    }

    fn ended(&self, job_id: Uuid) {
        if let Ok(mut latest) = self.latest.lock() {
            latest.remove(&job_id);
        }
        let _ = self.updates.send(FeedSignal::Changed);
    }

    /// Listens to every job's updates until `shutdown`.
    pub async fn run(self, bus: Bus, shutdown: CancellationToken) {
        let mut updates = match bus.subscribe_all_updates().await {
            Ok(updates) => updates,
            Err(err) => {
                tracing::error!(error = %err, "cannot follow job updates; progress will be missing from GetJob");
                return;
            }
        };
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => return,
                message = updates.next() => message,
            };
            let Some(message) = message else { return };
            let Some(job_id) = message
                .subject
                .as_str()
                .strip_prefix("mm.updates.")
                .and_then(|id| Uuid::parse_str(id).ok())
            else {
                continue;
            };
            match serde_json::from_slice::<Update>(&message.payload) {
                Ok(Update::Progress {
                    attempt,
                    progress,
                    message,
                }) => self.record(Progress {
                    job_id,
                    attempt,
                    progress,
                    message,
                }),
                Ok(Update::Transition { state, .. }) => {
                    if state != "RUNNING" {
                        self.ended(job_id);
                    } else {
                        let _ = self.updates.send(FeedSignal::Changed);
                    }
                }
                Err(_) => {}
            }
        }
    }
}

/// A WatchJobs cursor: the position after a change in the tenant feed, `<xid>.<seq>`.
pub fn cursor(xid: i64, seq: i64) -> String {
    format!("{xid}.{seq}")
}

pub fn parse_cursor(cursor: &str) -> Option<(i64, i64)> {
    let (xid, seq) = cursor.split_once('.')?;
    Some((xid.parse().ok()?, seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        assert_eq!(parse_cursor(&cursor(123, 45)), Some((123, 45)));
        assert_eq!(parse_cursor("x.1"), None);
        assert_eq!(parse_cursor("12"), None);
    }

    #[test]
    fn only_the_current_attempt_reports() {
        let book = ProgressBook::new();
        let id = Uuid::now_v7();
        book.record(Progress {
            job_id: id,
            attempt: 2,
            progress: 0.3,
            message: "resizing".into(),
        });
        assert_eq!(book.latest(id, 2), Some((0.3, "resizing".to_owned())));
        assert_eq!(book.latest(id, 3), None);
        book.ended(id);
        assert_eq!(book.latest(id, 2), None);
    }
}
